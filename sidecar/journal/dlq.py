"""The dead-letter store, for operators: list, show, retry, purge.

    rows = list_dead(journal_dir, lane=None, limit=50)
    retry_dead(journal_dir, ids=[3, 4])       # back into the delivery queue, attempts reset
    purge_dead(journal_dir, all_=True)        # gone for good, spooled blobs too

These work on the journal file directly, whether or not the sidecar runs:
SQLite's WAL mode and busy timeout let both write, and a running sidecar
picks retried events up within a second.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from sidecar.journal.access import connect_tool, tool_transaction
from sidecar.journal.spool import Spool
from sidecar.journal.store import EventRow, split_blob_paths


def _where(ids: list[int] | None, lane: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        args += ids
    if lane:
        clauses.append("lane = ?")
        args.append(lane)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def list_dead(journal_dir: str, *, lane: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    where, args = _where(None, lane)
    with closing(connect_tool(journal_dir)) as conn:
        rows = conn.execute(
            f"SELECT id, lane, kind, key, ref, reason, status, attempts, dead_at FROM dead_letters{where}"
            " ORDER BY id DESC LIMIT ?", [*args, limit]).fetchall()
    names = ("id", "lane", "kind", "key", "ref", "reason", "status", "attempts", "dead_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


def show_dead(journal_dir: str, dead_id: int) -> dict[str, Any] | None:
    with closing(connect_tool(journal_dir)) as conn:
        cur = conn.execute("SELECT * FROM dead_letters WHERE id = ?", (dead_id,))
        row = cur.fetchone()
        names = [d[0] for d in cur.description]
    if row is None:
        return None
    record = dict(zip(names, row, strict=True))
    record["frame"] = bytes(record["frame"]).decode(errors="replace")
    return record


def retry_dead(journal_dir: str, *, ids: list[int] | None = None, lane: str | None = None) -> int:
    """Move dead letters back to the queue with a fresh attempt count; returns how many."""
    where, args = _where(ids, lane)
    columns = ", ".join(EventRow._fields)  # a dead letter keeps the whole row it was journaled with
    with tool_transaction(journal_dir) as conn:
        moved = conn.execute(
            f"INSERT INTO events ({columns}) SELECT {columns} FROM dead_letters{where} ORDER BY event_id",
            args).rowcount
        conn.execute(f"DELETE FROM dead_letters{where}", args)
    return moved


def purge_dead(journal_dir: str, *, ids: list[int] | None = None, lane: str | None = None,
               all_: bool = False) -> int:
    """Delete dead letters (and their spooled blobs) for good; returns how many."""
    if not ids and not lane and not all_:
        raise ValueError("name ids, a lane, or all")
    where, args = _where(ids, lane)
    with tool_transaction(journal_dir) as conn:
        paths = [p for (joined,) in conn.execute(
            f"SELECT blob_path FROM dead_letters{where}{' AND' if where else ' WHERE'} blob_path IS NOT NULL", args)
            for p in split_blob_paths(joined)]
        gone = conn.execute(f"DELETE FROM dead_letters{where}", args).rowcount
    Spool(journal_dir).remove(paths)
    return gone
