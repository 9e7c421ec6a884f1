"""Housekeeping queries on the journal: forget old rows, give freed pages back, convert an old file.

    journal.expire(refs_before=..., rejects_before=...)   # every housekeeping tick
    journal.release_free_pages(journal.space.pages_to_release(journal.page_size))
    journal.give_back_free_pages()                        # once, at start

`Journal`'s methods of these names call the functions here, so the journal
stays the one interface its users hold; what the disk allows (how many pages,
whether a rewrite fits) is the policy's (space.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.journal.store import Journal

log = logging.getLogger("sidecar.journal")

CONVERT_MAX_BYTES = 256 << 20  # `give_back_free_pages` rewrites a journal up to this size at start
EXPIRE_CHUNK = 2000  # rows `expire` looks at per table and call: a few hundred KB of WAL


def release_free_pages(journal: Journal, pages: int = 256) -> int:
    """Give up to `pages` of the pages deletes have freed back to the filesystem
    (the file shrinks at the next checkpoint); returns how many were free.

    Without this a drained backlog leaves the file at its largest, so a
    disk it filled would stay full. Journals created before auto_vacuum
    was set keep their free pages, which ingest reuses instead."""
    free = journal.free_pages()
    if free and pages > 0 and journal.gives_back_free_pages():
        journal.conn.executescript(f"PRAGMA incremental_vacuum({int(pages)})")  # runs every step, unlike execute
    return free


def give_back_free_pages(journal: Journal, max_bytes: int = CONVERT_MAX_BYTES) -> bool:
    """Convert a journal made before auto_vacuum (which keeps its freed pages
    for ever) so that `release_free_pages` works; True if it did.

        journal = Journal.open(directory); journal.give_back_free_pages()   # at start, alone

    SQLite changes auto_vacuum only by rewriting the file (VACUUM): that
    takes time (the start waits) and twice the file's size free, so a
    journal larger than `max_bytes`, or on a disk without the room, is left
    as it is (the README gives the command to run by hand).
    """
    if journal.gives_back_free_pages():
        return False
    size = os.path.getsize(journal.path)
    if size > max_bytes or not journal.space.can_rewrite(size):
        log.warning("journal %s (%.0f MB) keeps the pages deletes free instead of shrinking; with the "
                    "sidecar stopped, `sqlite3 journal.db 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM'` "
                    "converts it", journal.path, size / 1e6)
        return False
    try:
        journal.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        journal.conn.execute("VACUUM")  # its temporary copy goes to SQLite's temp directory
        journal.fold_wal()
    except sqlite3.Error as exc:  # locked by a CLI command, no room for the copy: not worth not starting
        log.warning("journal %s: could not convert it to give freed pages back (%s); it keeps "
                    "them for reuse instead", journal.path, exc)
        return False
    log.info("journal %s converted to give freed pages back to the filesystem (%.1f MB)",
             journal.path, os.path.getsize(journal.path) / 1e6)
    return True


def expire(journal: Journal, *, refs_before: float, rejects_before: float, limit: int = EXPIRE_CHUNK) -> tuple[int, int]:
    """Forget refs and reject samples written before the given times: (refs, rejects) removed.

        journal.expire(refs_before=time.time() - 1.5 * journal.refs_keep, rejects_before=...)

    Both tables are appended in time order (INSERT OR REPLACE gives a
    replaced ref a new, larger rowid), so the old rows are a prefix in
    rowid order: each call reads at most `limit` rows from the start and
    deletes the old ones among them, without an index on the times and
    without a transaction bigger than `limit` rows. Housekeeping calls it
    every tick, so a backlog of old rows goes in steps; with nothing old it
    reads one row a table and takes no write lock.
    """
    removed = [0, 0]
    for i, (table, column, before) in enumerate((("refs", "created_at", refs_before),
                                                 ("rejects", "received_at", rejects_before))):
        oldest = journal.conn.execute(f"SELECT {column} FROM {table} ORDER BY rowid LIMIT 1").fetchone()
        if oldest is None or oldest[0] >= before:
            continue
        with journal.transaction() as c:
            last = None
            # The cursor steps row by row, stopping at the first young one.
            for rowid, at in c.execute(f"SELECT rowid, {column} FROM {table} ORDER BY rowid LIMIT ?", (limit,)):
                if at >= before:
                    break  # rows after a young one wait (a clock stepped back): a later call takes them
                last = rowid
            if last is not None:
                removed[i] = c.execute(f"DELETE FROM {table} WHERE rowid <= ?", (last,)).rowcount
    return removed[0], removed[1]
