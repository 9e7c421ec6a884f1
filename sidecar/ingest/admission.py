"""How many events ingest may read before the disk says stop (the policy itself is space.py's).

    admission = Admission(journal, batch_max=4096)
    limit = min(batch_max, admission.allowance(time.monotonic()))   # 0: "disk full", read nothing
    admission.take(len(messages))       # what was read comes off the allowance
    admission.learn(rows)               # the usual frame size, for the next estimate
    admission.committed()               # low on room: look at the disk again after each commit
    admission.refused(state)            # the journal refused the batch: a full disk starves ingest

One statvfs per SPACE_SECONDS at most while events flow: the allowance is
the number of events of the usual size that fit in what the policy leaves
(`Space.events_fit`). Under a batch's worth the WAL is folded into the file
first, so the count is exact, and every commit looks again. With none left
the journal's health says "disk full" (once), and ingest waits until there is
twice the headroom before it resumes, so it does not flap at the edge.
`measure` replaces the disk in tests: it returns (free bytes, WAL bytes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from operator import itemgetter

from sidecar.journal.health import FULL, JournalUnavailable
from sidecar.journal.space import ROW_OVERHEAD
from sidecar.journal.store import FRAME, EventValues, Journal

RETRY_SECONDS = 1.0  # a batch the journal refused (disk full...) is tried again this often
SPACE_SECONDS = 0.25  # an allowance of events read from the disk's free space lasts at most this long


class Admission:
    def __init__(self, journal: Journal, *, batch_max: int,
                 measure: Callable[[], tuple[int, int]] | None = None) -> None:
        self.journal = journal
        self.space = journal.space
        self.batch_max = batch_max
        self._measure = measure or (lambda: (self.space.free(), journal.wal_bytes()))
        self.frame_bytes = 512  # the usual frame, learnt from each batch
        self._allowed = 0  # events still to read
        self._due = 0.0  # when to look at the disk again
        self.starved = False  # stopped for room: resumes at twice the headroom
        self.low = False  # under a batch's worth of room: every commit is checkpointed at once
        self._page_size = journal.page_size
        # A journal with incremental auto-vacuum gives its free pages back to the
        # filesystem (housekeeping), so they are not counted twice; an older one keeps them for reuse.
        self._reuses_free_pages = not journal.gives_back_free_pages()

    def allowance(self, now: float) -> int:
        """Events ingest may still read before it looks at the disk again; 0 while
        it leaves the rest of the disk to delivery (and says "disk full")."""
        if now < self._due and (self._allowed > 0 or self.starved):
            return self._allowed
        allowed, note = self._fit()
        journal = self.journal
        if allowed <= 0:
            self.starved = True
            self._due = now + RETRY_SECONDS
            journal.health.failed(journal.role, JournalUnavailable(FULL, note))
        else:
            self._due = now + SPACE_SECONDS
            if self.starved:
                self.starved = False
                journal.health.ok(journal.role)
        self._allowed = max(0, allowed)
        return self._allowed

    def take(self, n: int) -> None:
        self._allowed -= n

    def learn(self, rows: Sequence[EventValues]) -> None:
        """Follow the usual frame size: quickly up, slowly down."""
        if rows:
            avg = sum(map(len, map(itemgetter(FRAME), rows))) // len(rows)  # in C: ingest calls it per batch
            self.frame_bytes = max(avg, (self.frame_bytes * 7 + avg) // 8)

    def committed(self) -> None:
        if self.low:
            self._allowed = 0  # look at the disk again, folding this batch into the file while there is room

    def refused(self, state: str) -> None:
        """The journal refused a batch; on a full disk the retry waits for room."""
        self.starved = self.starved or state == FULL

    def _fit(self) -> tuple[int, str]:
        """How many events of the usual size fit, and a note for `check` if none does."""
        cost = self.frame_bytes + ROW_OVERHEAD
        free, wal = self._measure()
        fit = self.space.events_fit(free, wal, cost, starved=self.starved)
        self.low = fit < self.batch_max
        if self.low:
            journal = self.journal
            try:
                journal.fold_wal()
                freed = journal.free_pages() * self._page_size if self._reuses_free_pages else 0
            except sqlite3.Error as exc:
                journal.health.failed(journal.role, exc)  # a full disk releases the reserve
                freed = 0
            free, wal = self._measure()
            fit = self.space.events_fit_low(free, wal, freed, cost, starved=self.starved)
        keep = self.space.keep(starved=self.starved)
        return fit, f"{free / 1e6:.1f} MB free, {keep / 1e6:.1f} MB kept for delivery"
