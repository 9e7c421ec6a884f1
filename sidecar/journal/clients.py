"""The producers' sequence state in the journal's `clients` table.

    state = journal.clients.state("4242-0a1b2c3d4e5f")   # ClientState(last_seq, gaps, ring) or None
    states = journal.clients.states(limit=50_000)          # the most recently updated, oldest first
    gone = journal.clients.prune(keep_seconds=7 * 86400)   # clients idle past the window, forgotten
    journal.clients.bind_owner("4242-0a1b2c3d4e5f", 1001)  # the id is uid 1001's, across restarts
    journal.clients.owner("4242-0a1b2c3d4e5f")              # 1001 (None: not bound yet)

Ingest's `Sequences` (sidecar/ingest/sequences.py) keeps a bounded number of
these in memory and asks here for the rest; `write_batch` writes them with
each batch.

`client_owners` keeps which uid a ring's client id belongs to (the owner
of its first ring adopted, ring_adopt.py), so that after a restart a ring of
that id made by another uid is still refused; it is pruned with the clients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.journal.store import Journal


@dataclass(frozen=True)
class ClientState:
    last_seq: int
    gaps: int
    ring: bool | None = None  # whose id: a ring's (True), the socket's (False), unknown (None)


class Clients:
    """Reads and prunes the `clients` table through the journal's connection."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def states(self, limit: int = 1_000_000) -> dict[str, ClientState]:
        """The `limit` most recently updated clients, oldest first (ingest loads a bounded number)."""
        rows = self.journal.conn.execute("SELECT client_id, last_seq, gaps, ring FROM clients"
                                         " ORDER BY updated_at DESC LIMIT ?", (limit,)).fetchall()
        return {cid: ClientState(seq, gaps, None if ring is None else bool(ring))
                for cid, seq, gaps, ring in reversed(rows)}

    def state(self, client_id: str) -> ClientState | None:
        row = self.journal.conn.execute("SELECT last_seq, gaps, ring FROM clients WHERE client_id=?",
                                        (client_id,)).fetchone()
        return None if row is None else ClientState(row[0], row[1], None if row[2] is None else bool(row[2]))

    def prune(self, keep_seconds: float, limit: int = 10_000) -> list[str]:
        """Delete up to `limit` clients not updated for `keep_seconds` before the latest
        update of any (the journal's own clock: a sidecar long stopped forgets nothing
        at its start); returns their ids."""
        with self.journal.transaction() as c:
            gone = [cid for (cid,) in c.execute(
                "SELECT client_id FROM clients WHERE updated_at < (SELECT max(updated_at) FROM clients) - ?"
                " ORDER BY updated_at LIMIT ?", (keep_seconds, limit))]
            c.executemany("DELETE FROM clients WHERE client_id=?", [(cid,) for cid in gone])
            c.executemany("DELETE FROM client_owners WHERE client_id=?", [(cid,) for cid in gone])
            # ...and ids bound by a ring that never wrote an event, as long ago
            c.execute("DELETE FROM client_owners WHERE rowid IN (SELECT rowid FROM client_owners"
                      " WHERE bound_at < coalesce((SELECT max(updated_at) FROM clients), ?) - ?"
                      " AND client_id NOT IN (SELECT client_id FROM clients) LIMIT ?)",
                      (time.time(), keep_seconds, limit))
        return gone

    def owners(self, limit: int) -> dict[str, int]:
        """The `limit` most recently bound client ids and their owner uids."""
        rows = self.journal.conn.execute("SELECT client_id, uid FROM client_owners ORDER BY bound_at DESC"
                                         " LIMIT ?", (limit,)).fetchall()
        return dict(rows)

    def owner(self, client_id: str) -> int | None:
        """The uid `client_id` is bound to, or None."""
        row = self.journal.conn.execute("SELECT uid FROM client_owners WHERE client_id=?", (client_id,)).fetchone()
        return None if row is None else int(row[0])

    def bind_owner(self, client_id: str, uid: int) -> None:
        """Bind `client_id` to `uid` unless it is bound already (the first binding stays)."""
        with self.journal.transaction() as c:
            c.execute("INSERT OR IGNORE INTO client_owners (client_id, uid, bound_at) VALUES (?, ?, ?)",
                      (client_id, uid, time.time()))
