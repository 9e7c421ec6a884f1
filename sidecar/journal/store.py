"""The durable journal: one SQLite file in WAL mode, written by group commit.

    journal = Journal.open("/var/lib/trading-sidecar")
    journal.write_batch(events=[...], rejects=[...], clients={...})   # one transaction
    for event in journal.group("notion", "update:abc"): ...
    journal.complete([e.id for e in events], lane="notion", refs={"trade-1": "page-id"})

An event stays in `events` until it is delivered (deleted) or dead-lettered
(moved to `dead_letters` with the reason and the API's error body). Frames
are stored exactly as received, so ingest never serialises twice; binary
blobs live in the journal's `Spool`, and `complete` removes a delivered
event's files. Rejected frames are kept as a sample, and every one is
counted in `reject_counts`. The sidecar opens two Journals: the ingest
thread writes its batches through one (opened with `checkpoints=False`;
`Ingest()` reads the clients' states from it first), and the event loop
(lanes, housekeeping, which checkpoints the WAL) uses the other. Both are
opened on the event loop's thread, hence `check_same_thread=False`. The
HTTP API's threads (`read_ref`) and other processes (the CLI's `dlq`,
`refs`) open short-lived connections of their own.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson

from client import wire
from sidecar.errors import JournalCorrupt, JournalError
from sidecar.journal import upkeep
from sidecar.journal.access import Transaction, connect_tool, journal_file
from sidecar.journal.clients import Clients
from sidecar.journal.health import AnyHealth, NoHealth
from sidecar.journal.space import Space
from sidecar.journal.spool import Spool
from sidecar.ops.credentials import redact

log = logging.getLogger("sidecar.journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,   -- ingest order, which is emit order per client
    lane        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,         -- the group that is coalesced and ordered together
    key         TEXT,
    ref         TEXT,
    client_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    emitted_ns  INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    frame       BLOB NOT NULL,         -- the envelope as received
    blob_path   TEXT,                  -- spooled binary bodies, if any, one path a line
    attempts    INTEGER NOT NULL DEFAULT 0,
    unsure      INTEGER NOT NULL DEFAULT 0,  -- the last attempt may have been applied
    not_before  REAL NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS events_by_lane ON events (lane, id);
CREATE INDEX IF NOT EXISTS events_by_target ON events (lane, target, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    event_id    INTEGER NOT NULL,
    lane        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    key         TEXT,
    ref         TEXT,
    client_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    emitted_ns  INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    frame       BLOB NOT NULL,
    blob_path   TEXT,
    attempts    INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    status      INTEGER,
    detail      TEXT,
    dead_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_by_key ON dead_letters (lane, kind, key);
CREATE TABLE IF NOT EXISTS rejects (
    id          INTEGER PRIMARY KEY,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    frame       BLOB,                  -- the first 64 KiB of what arrived; a sample, see reject_counts
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reject_counts (
    reason      TEXT PRIMARY KEY,
    total       INTEGER NOT NULL,      -- every frame ever rejected for this reason
    unsampled   INTEGER NOT NULL,      -- of which only counted: over the hourly sample kept in rejects
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    lane        TEXT NOT NULL,
    key         TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (lane, key)
);
CREATE TABLE IF NOT EXISTS clients (
    client_id   TEXT PRIMARY KEY,
    last_seq    INTEGER NOT NULL,
    gaps        INTEGER NOT NULL,
    closed      INTEGER NOT NULL DEFAULT 0,
    stats       BLOB,
    updated_at  REAL NOT NULL,
    ring        INTEGER          -- 1: a ring's id (socket frames may not claim it), 0: the socket's, NULL: unknown
);
CREATE TABLE IF NOT EXISTS client_owners (
    client_id   TEXT PRIMARY KEY,  -- a ring's client id...
    uid         INTEGER NOT NULL,  -- ...belongs to the owner of its first ring adopted (ring_adopt.py)
    bound_at    REAL NOT NULL
);
"""

REJECT_KEEP_BYTES = 64 * 1024
DEFAULT_REFS_KEEP_SECONDS = 168 * 3600.0  # [journal] refs_keep_hours
RETARGET_CHUNK = 100  # rows a retarget moves per transaction: ~150 KB of WAL on this schema
BLOB_PATH_SEPARATOR = "\n"


class EventRow(NamedTuple):
    """An event as ingest writes it: the one definition of the event columns.

        EventRow(lane, kind, target, key, ref, client_id, seq, emitted_ns, received_ns, frame, blob_path)

    Ingest builds one per event positionally (as cheap as a tuple); the
    journal's INSERT and SELECT lists and the dead-letter copies follow `_fields`.
    """

    lane: str
    kind: str
    target: str           # the group that is coalesced and ordered together
    key: str | None
    ref: str | None
    client_id: str
    seq: int
    emitted_ns: int
    received_ns: int
    frame: bytes          # the envelope as received
    blob_path: str | None  # spooled binary bodies, if any, one path a line


# An EventRow's fields as a plain tuple, which ingest makes per event (cheaper than the NamedTuple),
# and where the frame is in it.
EventValues = tuple[str, str, str, str | None, str | None, str, int, int, int, bytes, str | None]
FRAME: Final = 9  # EventRow._fields.index("frame"), as a literal for mypy (a test checks it)


def insert_events(conn: sqlite3.Connection, events: Sequence[EventValues]) -> None:
    """INSERT `events` in their order, INSERT_ROWS rows to a statement (the rest in smaller ones)."""
    most = max(1, min(INSERT_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(EventRow._fields)))
    done = 0
    for rows in (most, 16):
        end = done + (len(events) - done) // rows * rows
        if end > done:
            sql = _insert_rows(rows)
            chain = itertools.chain.from_iterable
            for at in range(done, end, rows):
                conn.execute(sql, list(chain(events[at:at + rows])))  # one flat list: `rows` rows' parameters
            done = end
    if done < len(events):
        # As plain tuples: the sqlite3 module binds a tuple subclass by the slow,
        # generic sequence path (4.0 vs 3.0 µs a row here, bench/floors.py).
        conn.executemany(INSERT_EVENT, map(tuple, events[done:]))


@functools.cache
def _insert_rows(rows: int) -> str:
    one = "(" + ",".join("?" * len(EventRow._fields)) + ")"
    return f"INSERT INTO events ({', '.join(EventRow._fields)}) VALUES " + ",".join([one] * rows)


def insert_sql(table: str, columns: Sequence[str]) -> str:
    """`INSERT INTO table (a, b) VALUES (?,?)`, the columns named once."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"


INSERT_EVENT = insert_sql("events", EventRow._fields)
# Group commit inserts rows this many to a statement (`insert_events`): one statement of
# INSERT_ROWS rows costs ingest about a quarter less a row than executemany's one a row
# (bench/floors.py). 256 x 11 parameters is under SQLite's limit since 3.32 (32,766);
# an older SQLite (999) gets fewer rows a statement.
INSERT_ROWS = 256
INSERT_DEAD = insert_sql("dead_letters", ("event_id", *EventRow._fields, "attempts", "reason", "status", "detail",
                                          "dead_at"))
# What delivery adds to a row; `Event` has exactly these fields, in this order (a unit test checks).
EVENT_FIELDS = ("id", *EventRow._fields, "attempts", "unsure", "not_before")
EVENT_COLUMNS = ", ".join(EVENT_FIELDS)


# A whole set of ids as one parameter, so that retiring a coalesced group of
# thousands is one statement, not a Python round per row: `... WHERE id IN {IDS}`.
IDS = "(SELECT value FROM json_each(?))"
ENVELOPE_ITEMS = 8  # wire.decode's array: version, client_id, seq, kind, key, ref, emitted_ns, payload


# `Journal.group`'s short way: a row's numbers and its frame; its strings come from the frame.
GROUP_SQL = ("SELECT id, seq, emitted_ns, received_ns, frame, blob_path, attempts, unsure, not_before"
             " FROM events WHERE lane=? AND target=? ORDER BY id LIMIT ?")


def _event_id(event: Event) -> int:
    return event.id


def id_list(ids: Iterable[int]) -> str:
    """The parameter for IDS: `id_list([3, 4])` is '[3,4]'."""
    return orjson.dumps(ids if isinstance(ids, list) else list(ids)).decode()  # 5x a join of str()s


def decode_payloads(events: Sequence[Event]) -> None:
    """Parse a group's payloads in one call, for a plan that reads them all (a coalesced
    group of thousands): one orjson parse of the frames as one array, not a `wire.decode`
    an event (the frames were checked by it at ingest). Anything unexpected is left to
    each event's own `payload`, which fails alone."""
    if len(events) < 2:
        return
    try:
        docs = orjson.loads(b"[" + b",".join(e.frame for e in events) + b"]")
    except orjson.JSONDecodeError:
        return
    if len(docs) != len(events):
        return
    for event, doc in zip(events, docs, strict=True):
        if type(doc) is list and len(doc) == ENVELOPE_ITEMS:
            event.payload = doc[-1]  # what the cached_property would hold (it has no setter)


def split_blob_paths(joined: str | None) -> list[str]:
    """The spool files of one row's `blob_path` column."""
    return joined.split(BLOB_PATH_SEPARATOR) if joined else []


@dataclass(slots=False)
class Event:
    """An event waiting for delivery: its row, plus what delivery has learnt.

    Build one by keyword in tests; the journal builds them from EVENT_COLUMNS.
    """

    id: int
    lane: str
    kind: str
    target: str
    key: str | None
    ref: str | None
    client_id: str
    seq: int
    emitted_ns: int
    received_ns: int
    frame: bytes
    blob_path: str | None
    attempts: int = 0
    unsure: int = 0  # 1: an earlier attempt may have been applied (timeout, reset, 5xx, crash mid-call)
    not_before: float = 0.0

    @property
    def row(self) -> EventRow:
        return EventRow(*(getattr(self, name) for name in EventRow._fields))

    @cached_property
    def payload(self) -> Any:
        return wire.decode(self.frame).payload

    @property
    def blob_paths(self) -> list[str]:
        return split_blob_paths(self.blob_path)

    def blobs(self) -> list[bytes]:
        """The event's binary frames, read back from the spool."""
        return [Spool.read(p) for p in self.blob_paths]

    def blob_sha256(self, index: int = 0) -> str:
        """Hex SHA-256 of a blob, as received (the spool names its files by it)."""
        return Spool.sha256(self.blob_paths[index])


def is_corruption(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (and their extended codes): the file, not the disk."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def read_ref(journal: str | os.PathLike[str], lane: str, key: str) -> str | None:
    """What a delivered event created (a page id, image URLs...), read from any
    thread or process with a short-lived read-only connection.

        read_ref("/var/lib/trading-sidecar", "naver", "sku-42")

    `journal` is the journal directory or its journal.db.
    """
    conn = connect_tool(journal, read_only=True)
    try:
        row = conn.execute("SELECT target_id FROM refs WHERE lane=? AND key=?", (lane, key)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


class Journal:
    def __init__(self, conn: sqlite3.Connection, path: Path, *, health: AnyHealth | None = None,
                 role: str = "journal") -> None:
        self.conn = conn
        self.clients = Clients(self)  # the producers' sequence state (clients.py)
        self.path = path
        self.spool = Spool(path.parent)  # blob files beside journal.db; rows name them
        # Told of every transaction's outcome (health.py), as this `role`; nobody if not given.
        self.health = health if health is not None else NoHealth(path.parent)
        self.role = role
        self.space = self.health.space  # the disk-full policy (space.py)
        # Seconds a ref is kept after its last write or use ([journal] refs_keep_hours; `expire`, `ref`).
        self.refs_keep = DEFAULT_REFS_KEEP_SECONDS

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, synchronous: str = "FULL",  # checked by config.py
             checkpoints: bool = True, check: bool = False, health: AnyHealth | None = None,
             role: str = "journal") -> Journal:
        """Open (creating if needed) `directory/journal.db`. Raises JournalError
        with an operator-readable message if the directory is unusable.

        `health` hears of every transaction, as `role` ("ingest", "delivery").

        `checkpoints=False` leaves WAL checkpoints to another connection's
        `checkpoint()`: ingest's commits then never pay for copying the WAL.
        `check=True` runs `PRAGMA quick_check` first (a read of every page,
        about a second per GB) and raises JournalCorrupt if it fails.
        """
        d = Path(directory)
        try:
            made = not d.exists()
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(d, made)
            Spool(d).create()
            probe = d / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise JournalError(
                f"journal directory {d} is not writable ({exc.strerror}); "
                "set [journal] dir to a writable directory or fix its owner"
            ) from None
        path = journal_file(d)
        health = health if health is not None else NoHealth(d)
        conn = _connect(path, health.space, synchronous=synchronous, checkpoints=checkpoints, check=check)
        return cls(conn, path, health=health, role=role)

    @cached_property
    def page_size(self) -> int:
        return self.conn.execute("PRAGMA page_size").fetchone()[0]

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database, without waiting for readers."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def fold_wal(self) -> None:
        """Copy the whole WAL into the database and truncate it (waits for readers)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def wal_bytes(self) -> int:
        """The WAL file's size: growth of the database still to come at the next checkpoint."""
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0

    def free_pages(self) -> int:
        """Pages deletes have freed and the file still holds."""
        return self.conn.execute("PRAGMA freelist_count").fetchone()[0]

    def gives_back_free_pages(self) -> bool:
        """Incremental auto-vacuum: freed pages go back to the filesystem (`release_free_pages`);
        a journal from before it keeps them for reuse instead."""
        return self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2

    # Housekeeping (upkeep.py), here so that the journal stays the one interface.

    def release_free_pages(self, pages: int = 256) -> int:
        """Give up to `pages` freed pages back to the filesystem; how many were free."""
        return upkeep.release_free_pages(self, pages)

    def give_back_free_pages(self, max_bytes: int = upkeep.CONVERT_MAX_BYTES) -> bool:
        """Convert a journal from before auto_vacuum, if small enough (at start, alone)."""
        return upkeep.give_back_free_pages(self, max_bytes)

    def expire(self, *, refs_before: float, rejects_before: float,
               limit: int = upkeep.EXPIRE_CHUNK) -> tuple[int, int]:
        """Forget refs and reject samples written before the given times: (refs, rejects) removed."""
        return upkeep.expire(self, refs_before=refs_before, rejects_before=rejects_before, limit=limit)

    def close(self) -> None:
        self.conn.close()

    # -- ingest ---------------------------------------------------------------

    def write_batch(
        self,
        events: Sequence[EventValues],
        rejects: Sequence[tuple[str, str, bytes | None]] = (),
        clients: Mapping[str, tuple[int, int, bool, bytes | None] | tuple[int, int, bool, bytes | None, bool | None]]
        | None = None,
        unsampled: dict[str, int] | None = None,
    ) -> None:
        """Group commit: all of it lands in one transaction, or none of it.

        `rejects` are the (reason, detail, frame) kept as a sample; `unsampled`
        counts, by reason, those only counted. Both add to `reject_counts`.
        `clients` maps an id to (last_seq, gaps, closed, stats[, ring]).
        """
        now = time.time()
        with self.transaction() as c:
            if events:
                insert_events(c, events)
            if rejects:
                c.executemany(
                    "INSERT INTO rejects (reason, detail, frame, received_at) VALUES (?,?,?,?)",
                    [(r, d, f[:REJECT_KEEP_BYTES] if f is not None else None, now) for r, d, f in rejects],
                )
            if rejects or unsampled:
                unsampled = unsampled or {}
                totals = Counter(reason for reason, _, _ in rejects) + Counter(unsampled)
                c.executemany(
                    "INSERT INTO reject_counts (reason, total, unsampled, updated_at) VALUES (?,?,?,?)"
                    " ON CONFLICT(reason) DO UPDATE SET total=total+excluded.total,"
                    " unsampled=unsampled+excluded.unsampled, updated_at=excluded.updated_at",
                    [(reason, total, unsampled.get(reason, 0), now) for reason, total in totals.items()],
                )
            if clients:
                c.executemany(
                    "INSERT INTO clients (client_id, last_seq, gaps, closed, stats, updated_at, ring)"
                    " VALUES (?,?,?,?,?,?,?)"
                    " ON CONFLICT(client_id) DO UPDATE SET last_seq=excluded.last_seq, gaps=excluded.gaps,"
                    " closed=excluded.closed, stats=COALESCE(excluded.stats, clients.stats),"
                    " updated_at=excluded.updated_at, ring=COALESCE(excluded.ring, clients.ring)",
                    [(cid, st[0], st[1], int(st[2]), st[3], now, None if len(st) < 5 or st[4] is None else int(st[4]))
                     for cid, st in clients.items()],
                )

    def reject_counts(self) -> dict[str, tuple[int, int]]:
        """Every frame ever rejected, by reason: (total, of which not kept in `rejects`)."""
        return {reason: (total, unsampled) for reason, total, unsampled in
                self.conn.execute("SELECT reason, total, unsampled FROM reject_counts")}

    # -- delivery -------------------------------------------------------------

    def ready_heads(self, lane: str, now: float, limit: int = 512, *,
                    per_target: bool = False) -> list[tuple[int, str]]:
        """Oldest ready events of a lane, as (id, target), in ingest order;
        with `per_target`, only the oldest of each group (a costlier query)."""
        if per_target:
            sql = ("SELECT MIN(id), target FROM events WHERE lane=? AND not_before<=? GROUP BY target"
                   " ORDER BY MIN(id) LIMIT ?")
        else:
            sql = "SELECT id, target FROM events WHERE lane=? AND not_before<=? ORDER BY id LIMIT ?"
        return self.conn.execute(sql, (lane, now, limit)).fetchall()

    def group(self, lane: str, target: str, limit: int = 10_000, *, also: Sequence[str] = ()) -> list[Event]:
        """A group's events in ingest order, at most `limit`, their payloads parsed; with
        `also`, those of these other targets too, merged in ingest order (groups.py's aliases).

        The read takes the row's numbers and its frame, and the rest from the frame, which
        is the envelope ingest decoded those columns from (batch.py): one orjson parse of
        the group's frames gives the payloads every plan reads and the strings (kind, key,
        ref, client id) that SQLite would otherwise copy out once a row, about half of
        a hot group's read (2.1 -> 1.05 us a row in process). A row whose frame does not
        say its own seq and emit time (or does not parse) sends the whole group the long
        way (every column; payloads parsed as one array where they can be, else each on
        its own).
        """
        events = self._group_from_frames(lane, target, limit)
        for other in also:
            # One index range each, merged here: `target IN (...)` made SQLite walk the
            # lane's whole backlog in id order instead (EXPLAIN QUERY PLAN: events_by_lane).
            if events is None:
                break
            if more := self._group_from_frames(lane, other, limit):
                events = list(heapq.merge(events, more, key=_event_id))[:limit]
        if events is not None:
            return events
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE lane=? AND target=? ORDER BY id LIMIT ?"
        rows = self.conn.execute(sql, (lane, target, limit)).fetchall()
        for other in also:
            if more := self.conn.execute(sql, (lane, other, limit)).fetchall():
                rows = list(heapq.merge(rows, more))[:limit]  # rows start with their unique id
        slow = [Event(*row) for row in rows]
        decode_payloads(slow)
        return slow

    def _group_from_frames(self, lane: str, target: str, limit: int) -> list[Event] | None:
        """One target's events read by `group`'s short way; None if a frame disagrees with its row."""
        rows = self.conn.execute(GROUP_SQL, (lane, target, limit)).fetchall()
        if not rows:
            return []
        try:
            docs = orjson.loads(b"[" + b",".join([row[4] for row in rows]) + b"]")
        except orjson.JSONDecodeError:
            return None
        if len(docs) != len(rows):
            return None
        events = []
        for (id_, seq, emitted_ns, received_ns, frame, blob_path, attempts, unsure, not_before), doc in zip(
                rows, docs, strict=True):
            if type(doc) is not list or len(doc) != ENVELOPE_ITEMS or doc[2] != seq or doc[6] != emitted_ns:
                return None
            event = Event(id_, lane, doc[3], target, doc[4], doc[5], doc[1], seq, emitted_ns, received_ns, frame,
                          blob_path, attempts, unsure, not_before)
            event.payload = doc[7]  # what the cached_property would hold (it has no setter)
            events.append(event)
        return events

    def start_attempt(self, ids: Iterable[int]) -> None:
        """Count the attempt before the call, and mark it unsure until its
        outcome is known: after a crash mid-call it is checked before resending."""
        with self.transaction() as c:
            c.execute(f"UPDATE events SET attempts=attempts+1, unsure=1 WHERE id IN {IDS}", (id_list(ids),))

    def defer(self, ids: Iterable[int], not_before: float, error: str | None, *, unsure: bool,
              count: bool = False) -> None:
        """Retry later; `unsure` says whether the failed attempt may have been applied;
        `count`: count the attempt now (one `start_attempt` did not count before the call)."""
        with self.transaction() as c:
            c.execute(f"UPDATE events SET not_before=?, last_error=?, unsure=?, attempts=attempts+? WHERE id IN {IDS}",
                      (not_before, redact(error) if error else error, int(unsure), int(count), id_list(ids)))

    def uncount_attempt(self, events: Sequence[Event], error: str) -> None:
        """The call was refused before anything applied (the credential): take its attempt back,
        leaving each event as sure or unsure as it was before (`Event.unsure`, read before the call)."""
        with self.transaction() as c:
            c.executemany("UPDATE events SET attempts=MAX(attempts-1, 0), unsure=?, last_error=? WHERE id=?",
                          [(e.unsure, redact(error), e.id) for e in events])

    def complete(self, ids: Iterable[int], *, lane: str, refs: dict[str, str] | None = None,
                 blob_paths: list[str] | None = None) -> None:
        """Delivered: forget the events and their spooled blobs, remember created ids.
        `blob_paths`: the events' spool files, if the caller has them (read with the
        events): not looked up again."""
        ids = list(ids)
        now = time.time()
        with self.transaction() as c:
            paths = self._blob_paths(c, ids) if blob_paths is None else blob_paths
            c.execute(f"DELETE FROM events WHERE id IN {IDS}", (id_list(ids),))
            if refs:
                c.executemany(
                    "INSERT OR REPLACE INTO refs (lane, key, target_id, created_at) VALUES (?,?,?,?)",
                    [(lane, k, v, now) for k, v in refs.items()],
                )
        # After the commit: a crash in between leaves a stray file, never a row without its blob.
        self.spool.remove(paths)

    def dead_letter(self, events: Sequence[Event], reason: str, *, status: int | None = None,
                    detail: str | None = None) -> None:
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                INSERT_DEAD,
                [(e.id, *e.row, e.attempts, reason, status, redact(detail) if detail else detail, now)
                 for e in events],
            )
            c.executemany("DELETE FROM events WHERE id=?", [(e.id,) for e in events])

    def retarget(self, lane: str, old: str, new: str) -> int:
        """Move waiting events to another group and make them ready now.

        Oldest first, RETARGET_CHUNK rows a transaction, all before returning:
        one UPDATE of a backlog's group rewrites most of the file into the WAL,
        which a full disk can never hold. What moved is always the older part
        of the group, so its order holds even if a chunk fails."""
        moved = 0
        while True:
            with self.transaction() as c:
                n = c.execute(
                    "UPDATE events SET target=?, not_before=0 WHERE id IN"
                    " (SELECT id FROM events WHERE lane=? AND target=? ORDER BY id LIMIT ?)",
                    (new, lane, old, RETARGET_CHUNK),
                ).rowcount
            moved += n
            if n < RETARGET_CHUNK:
                return moved

    def ref(self, lane: str, key: str) -> str | None:
        """What the delivered event with this key created, renewing it if in use.

        A ref that is still used (a position page updated every tick for
        months) must not expire: past half its keep it is written again, at
        the end in rowid order, which costs one write per ref per half-keep.
        Housekeeping forgets refs written 1.5 keeps ago, so every ref lives at
        least `refs_keep` after its last use. (Lookups from outside, `read_ref`,
        read only.)
        """
        row = self.conn.execute("SELECT target_id, created_at FROM refs WHERE lane=? AND key=?",
                                (lane, key)).fetchone()
        if row is None:
            return None
        now = time.time()
        if row[1] < now - self.refs_keep / 2:
            with self.transaction() as c:
                c.execute("INSERT OR REPLACE INTO refs (lane, key, target_id, created_at) VALUES (?,?,?,?)",
                          (lane, key, row[0], now))
        return row[0]

    def has_target(self, lane: str, target: str) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM events WHERE lane=? AND target=? LIMIT 1", (lane, target)
        ).fetchone() is not None

    def dead_key(self, lane: str, kind: str, key: str) -> str | None:
        """The reason a dead-lettered event with this kind and key died, if one did."""
        row = self.conn.execute(
            "SELECT reason, detail FROM dead_letters WHERE lane=? AND kind=? AND key=? ORDER BY id DESC LIMIT 1",
            (lane, kind, key),
        ).fetchone()
        return f"{row[0]}: {row[1]}" if row else None

    # -- inspection -----------------------------------------------------------

    def depth(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT lane, COUNT(*) FROM events GROUP BY lane").fetchall())

    def count(self, table: str) -> int:
        assert table in ("events", "dead_letters", "rejects", "reject_counts", "refs", "clients")
        return self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return total

    # -- internals ------------------------------------------------------------

    @staticmethod
    def _blob_paths(c: sqlite3.Connection, ids: list[int]) -> list[str]:
        if not ids:
            return []
        paths = []
        for (joined,) in c.execute(f"SELECT blob_path FROM events WHERE id IN {IDS} AND blob_path IS NOT NULL",
                                   (id_list(ids),)):
            paths += split_blob_paths(joined)
        return paths

    def transaction(self) -> Transaction:
        return Transaction(self.conn, self.health, self.role)


def _make_private(d: Path, made: bool) -> None:
    """The journal directory 0700 and its database files 0600, whatever the umask: events and
    error bodies are nobody else's to read. SQLite gives -wal and -shm the database file's mode.

    The directory is changed only if it is the journal's (new, empty or holding journal.db),
    so that `[journal] dir = /srv/shared` never takes a shared directory from its other users."""
    path = journal_file(d)
    st = d.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077 and (made or path.exists() or not any(d.iterdir())):
        os.chmod(d, 0o700)
    if not path.exists():
        # Made 0600 before SQLite makes it 0644. Only when new: closing any descriptor of a
        # database file drops every POSIX lock this process holds on it (SQLite's own
        # connections' too), and another process could then delete the WAL under them.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if name.stat().st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def _connect(path: Path, space: Space, *, synchronous: str, checkpoints: bool, check: bool) -> sqlite3.Connection:
    """The journal's connection, its PRAGMAs set and its schema made (`Journal.open`)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # A new journal gives the pages that deliveries free back to the
        # filesystem (`release_free_pages`); set before WAL, or it is ignored.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        if check:
            verdict = [line for (text,) in conn.execute("PRAGMA quick_check(10)") for line in text.splitlines()
                       if not line.startswith("***")]
            if verdict != ["ok"]:
                raise JournalCorrupt(path, "quick_check: " + "; ".join(verdict[:3]))
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        # 64 MiB of page cache: a backlog's index pages stay in memory, so
        # group commits do not re-read them.
        conn.execute("PRAGMA cache_size=-65536")
        # A WAL grown by a backlog is cut back to the headroom after each
        # checkpoint, and the delivery side checkpoints before its WAL eats
        # an eighth of the headroom: on a small disk a full WAL could never be
        # checkpointed (space.py).
        conn.execute(f"PRAGMA journal_size_limit={space.headroom}")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA wal_autocheckpoint={space.wal_autocheckpoint(page) if checkpoints else 0}")
        conn.executescript(SCHEMA)
        if "ring" not in {row[1] for row in conn.execute("PRAGMA table_info(clients)")}:  # a journal from before
            conn.execute("ALTER TABLE clients ADD COLUMN ring INTEGER")
        conn.execute("CREATE INDEX IF NOT EXISTS clients_by_update ON clients (updated_at)")
    except (sqlite3.DatabaseError, JournalCorrupt) as exc:
        conn.close()
        if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
            raise JournalCorrupt(path, str(exc)) from None
        raise
    return conn
