"""One way to reach the journal file: its name, the message when it is missing, transactions.

    path = journal_file("/var/lib/trading-sidecar")          # .../journal.db (a path to the file is kept)
    conn = connect_tool("/var/lib/trading-sidecar")           # FileNotFoundError naming [journal] dir if absent
    with Transaction(conn):                                   # BEGIN IMMEDIATE ... COMMIT, or ROLLBACK
        conn.execute("DELETE FROM dead_letters")
    with tool_transaction("/var/lib/trading-sidecar") as conn: ...   # both, and closed after

The sidecar's own writers (`Journal`) and the operator's tools (`dlq`,
`refs`, `ack-corrupt-journal`, the repair at start) all go through here, so
the file name, the message and the rollback rules exist once.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from sidecar.journal.health import AnyHealth, NoHealth

FILE_NAME = "journal.db"
TOOL_TIMEOUT = 10.0  # seconds a tool waits for a running sidecar's write lock


def journal_file(where: str | os.PathLike[str]) -> Path:
    """The journal file in a directory, or `where` itself if it names the file."""
    path = Path(where)
    return path if path.name == FILE_NAME else path / FILE_NAME


def existing_journal(where: str | os.PathLike[str]) -> Path:
    """`journal_file(where)`, or FileNotFoundError with a message for the operator."""
    path = journal_file(where)
    if not path.is_file():
        raise FileNotFoundError(f"no journal at {path}: is [journal] dir right?")
    return path


def connect_tool(where: str | os.PathLike[str], *, read_only: bool = False) -> sqlite3.Connection:
    """A short-lived connection of a tool's own, beside a running sidecar (WAL lets both write).

    `read_only` opens it so (the HTTP API's threads); else it is an autocommit
    connection for `Transaction`, waiting up to TOOL_TIMEOUT for the write lock."""
    path = existing_journal(where)
    if read_only:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn = sqlite3.connect(path, isolation_level=None, timeout=TOOL_TIMEOUT)
    conn.execute(f"PRAGMA busy_timeout={int(TOOL_TIMEOUT * 1000)}")
    return conn


@contextmanager
def tool_transaction(where: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """One write transaction on a tool's own connection, closed afterwards."""
    with closing(connect_tool(where)) as conn, Transaction(conn):
        yield conn


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; the outcome goes to `health` as `role`.

        with Transaction(conn, health, "delivery") as c:
            c.execute(...)

    A full disk can fail the COMMIT itself, and SQLite may already have
    rolled back (SQLITE_FULL does): the ROLLBACK is then skipped, so the
    caller sees the disk's error, not "no transaction is active".
    A class rather than a generator: it runs for every group commit."""

    def __init__(self, conn: sqlite3.Connection, health: AnyHealth | None = None, role: str = "tool") -> None:
        self.conn = conn
        self.health = health if health is not None else _UNWATCHED
        self.role = role

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.health.failed(self.role, exc)
            raise
        return self.conn

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as failed:
                self._rollback()
                self.health.failed(self.role, failed)
                raise
            self.health.ok(self.role)
            return
        self._rollback()
        self.health.failed(self.role, exc)

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection rolls back on its next BEGIN or close


_UNWATCHED = NoHealth(".")  # a tool's transactions report to nobody (and never ask its space policy)
