"""A corrupt journal at start: set it aside, start afresh, recover what can be read.

    journal = open_checked(directory, synchronous="FULL", recover=True, metrics=m)
    unacknowledged(journal)              # ["journal was corrupt: ..."] until an operator runs
    acknowledge(directory)               # `sidecar ack-corrupt-journal`

`Journal.open(check=True)` runs SQLite's `PRAGMA quick_check`. When it fails
(or the file is not a database at all), the file set, `journal.db` with its
`-wal` and `-shm`, is renamed `journal.db.corrupt-<UTC time>` (`-wal`, `-shm`
kept as suffixes so SQLite still pairs them), a fresh journal is created, and
what the old file still holds is copied in:

- with the `sqlite3` command-line tool, its `.recover` rebuilds every page it
  can parse into a scratch database, which is then read;
- without it, the old file is read directly, table by table, each from the
  front and then from the back, so one broken page costs only the rows on it.

Events keep their ids (ingest order) and client sequence numbers; each
client's `last_seq` is the larger of its recovered row and its recovered
events, so a ring or client that sends an event again is dropped as a replay,
not journaled twice. Refs and dead letters come back too (a ref is what keeps
a Notion create from being made twice). Events the old file lost are lost;
the count that came back is logged, counted in metrics and kept in the
`journal_incidents` table, whose unacknowledged rows keep `sidecar check`
degraded until `acknowledge` (the CLI) marks them seen.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

from sidecar.errors import JournalCorrupt, JournalCorruptRefused
from sidecar.journal.access import Transaction, connect_tool
from sidecar.journal.health import AnyHealth
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.journal")

INCIDENTS = """
CREATE TABLE IF NOT EXISTS journal_incidents (
    id              INTEGER PRIMARY KEY,
    set_aside       TEXT NOT NULL,     -- where the corrupt file set went
    detail          TEXT NOT NULL,     -- what SQLite said
    recovered       INTEGER,           -- events copied into this journal (NULL: recovery not finished)
    detected_at     REAL NOT NULL,
    acknowledged_at REAL
);
"""
# Copied from the old file in this order, each with the columns both schemas have.
TABLES = ("events", "dead_letters", "refs", "clients", "reject_counts")
RECOVER_TIMEOUT = 600.0


def open_checked(directory: str | os.PathLike[str], *, synchronous: str, recover: bool,
                 metrics: Metrics, health: AnyHealth | None = None, role: str = "journal") -> Journal:
    """Open the journal after SQLite's check; on failure set it aside and recover
    (or, with `recover=False`, raise JournalCorruptRefused and touch nothing).
    `health` and `role` as for `Journal.open`."""
    try:
        journal = Journal.open(directory, synchronous=synchronous, check=True, health=health, role=role)
    except JournalCorrupt as exc:
        if not recover:
            raise JournalCorruptRefused(
                f"{exc}; not starting (--no-recover): inspect it, then move it aside or start without "
                "--no-recover to set it aside and recover what it holds") from None
        aside = set_aside(exc.path)
        log.error("%s; moved aside to %s, starting a fresh journal and recovering what it holds", exc, aside.name)
        metrics.journal_corrupt.inc()
        journal = Journal.open(directory, synchronous=synchronous, health=health, role=role)
        journal.conn.executescript(INCIDENTS)
        incident = journal.conn.execute(
            "INSERT INTO journal_incidents (set_aside, detail, detected_at) VALUES (?,?,?)",
            (str(aside), exc.detail, time.time())).lastrowid
        events, how = recover_into(aside, journal)
        journal.conn.execute("UPDATE journal_incidents SET recovered=? WHERE id=?", (events, incident))
        metrics.journal_recovered.inc(events)
        log.warning("recovered %d event(s) from %s (%s); `sidecar check` stays degraded until "
                    "`sidecar ack-corrupt-journal`", events, aside.name, how)
        return journal
    journal.conn.executescript(INCIDENTS)
    return journal


def set_aside(path: Path) -> Path:
    """Rename journal.db and its -wal and -shm to journal.db.corrupt-<UTC time>[-wal|-shm]."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", ""):  # the database last: a crash in between leaves no lone WAL to replay
        try:
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        except FileNotFoundError:
            pass
    return aside


def recover_into(aside: Path, journal: Journal) -> tuple[int, str]:
    """Copy what `aside` still holds into `journal`; returns (events recovered, how)."""
    scratch = aside.with_name(aside.name + ".recovered")
    how = "read row by row"
    source = aside
    if _sqlite3_recover(aside, scratch):
        source, how = scratch, "sqlite3 .recover"
    # Without a -wal beside it, `immutable` reads the file as it is and creates no -wal or -shm.
    flags = "mode=ro" if Path(f"{source}-wal").exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{source}?{flags}", uri=True)
    except sqlite3.Error:
        return 0, how
    try:
        for table in TABLES:
            _copy(conn, journal.conn, table)
    finally:
        conn.close()
        _unlink_set(scratch)
    with journal.transaction():
        # A client's sequence must cover every event of it that came back, so none is journaled twice.
        for table in ("events", "dead_letters"):
            journal.conn.execute(
                "INSERT INTO clients (client_id, last_seq, gaps, updated_at)"
                f" SELECT client_id, MAX(seq), 0, ? FROM {table} WHERE true GROUP BY client_id"
                " ON CONFLICT(client_id) DO UPDATE SET last_seq=MAX(last_seq, excluded.last_seq)", (time.time(),))
    return journal.count("events"), how


def _sqlite3_recover(aside: Path, scratch: Path) -> bool:
    """`sqlite3 aside .recover | sqlite3 scratch`, if the tool is installed and it yields a database."""
    tool = shutil.which("sqlite3")
    if tool is None or not aside.exists():
        return False
    try:
        dump = subprocess.Popen([tool, str(aside), ".recover --ignore-freelist"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert dump.stdout is not None
        load = subprocess.run([tool, str(scratch)], stdin=dump.stdout, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=RECOVER_TIMEOUT)
        dump.stdout.close()
        dumped = dump.wait(RECOVER_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("sqlite3 .recover failed (%s); reading the old file row by row", exc)
        return False
    if dumped == 0 and load.returncode == 0:
        return True
    # Some builds lack what .recover needs (the sqlite_dbpage table): fall back.
    log.warning("sqlite3 .recover failed (exit %d); reading the old file row by row", dumped or load.returncode)
    _unlink_set(scratch)
    return False


def _unlink_set(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> int:
    """Insert every readable row of `table` (the columns both sides have); existing ids win."""
    try:
        have = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
    except sqlite3.Error:
        return 0
    columns = [row[1] for row in dst.execute(f"PRAGMA table_info({table})") if row[1] in have]
    if not columns:
        return 0
    insert = f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"
    rows: Iterable[tuple[object, ...]] = _readable_rows(src, table, columns)
    if table == "refs" and "created_at" in columns:
        # Expiry takes refs oldest first in rowid order; the tail behind a broken page comes back newest first.
        at = columns.index("created_at")
        rows = sorted(rows, key=lambda row: _number(row[at]))
    n = 0
    with Transaction(dst):
        for row in rows:
            try:
                n += dst.execute(insert, row).rowcount
            except sqlite3.Error:  # a recovered row that breaks a constraint: skip it, keep the rest
                continue
    return n


def _readable_rows(src: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple[object, ...]]:
    """Rows in rowid order until one cannot be read, then from the end backwards
    to that point: a broken page in the middle costs only its own rows."""
    select = f"SELECT rowid, {', '.join(columns)} FROM {table}"
    last = None
    try:
        for rowid, *row in src.execute(select + " ORDER BY rowid"):
            last = rowid
            yield tuple(row)
        return
    except sqlite3.Error:
        pass
    try:
        for _rowid, *row in src.execute(select + " WHERE rowid > ? ORDER BY rowid DESC", (last or 0,)):
            yield tuple(row)
    except sqlite3.Error:
        pass


def unacknowledged(journal: Journal) -> list[str]:
    """One problem line per corrupt journal nobody has acknowledged yet."""
    rows = journal.conn.execute(
        "SELECT set_aside, detected_at, recovered FROM journal_incidents WHERE acknowledged_at IS NULL").fetchall()
    return [f"journal was corrupt at {_utc(at)} and was set aside as {Path(aside).name}; "
            f"{recovered if recovered is not None else 'an unknown number of'} event(s) recovered; "
            "run `sidecar ack-corrupt-journal` once looked at" for aside, at, recovered in rows]


def acknowledge(directory: str | os.PathLike[str]) -> list[str]:
    """Mark every corrupt-journal incident seen; returns the set-aside files it named."""
    with closing(connect_tool(directory)) as conn:
        conn.executescript(INCIDENTS)
        with Transaction(conn):
            rows = conn.execute("SELECT id, set_aside FROM journal_incidents WHERE acknowledged_at IS NULL").fetchall()
            conn.executemany("UPDATE journal_incidents SET acknowledged_at=? WHERE id=?",
                             [(time.time(), i) for i, _ in rows])
    return [aside for _, aside in rows]


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
