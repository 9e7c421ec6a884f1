"""The journal's disk-space policy: every number and decision about a full disk, in one place.

    space = Space(journal_dir, reserve=True)   # the sidecar's: a reserve file beside the journal
    space.headroom                             # bytes ingest leaves free for delivery's own writes
    space.keep(starved=False)                  # ...plus the reserve's bytes while that file is spent
    space.events_fit(free, wal, cost, starved=False)
    space.pages_to_release(page_size)          # housekeeping: free pages to give back this tick
    space.restore_reserve()                    # housekeeping: set the reserve aside again once there is room

In WAL mode even a DELETE needs room (its WAL frames, and the checkpoint that
may grow the file): were ingest to fill the disk to the last byte, delivery
could free nothing. So the policy is, in one place:

- ingest stops at the `headroom` (a sixteenth of the filesystem, 512 KiB to
  64 MiB) and resumes only at twice it, so it does not flap at the edge
  (`Admission` in sidecar/ingest/admission.py asks `events_fit`);
- the journal's WAL is cut back to the headroom after each checkpoint, and
  the delivery side checkpoints before its WAL eats an eighth of it
  (`Journal.open`);
- a reserve file (an eighth of the filesystem, at most 64 MiB) is deleted at
  the first real ENOSPC, so delivery's transactions and the checkpoint go on,
  and ingest leaves its bytes free until housekeeping sets it aside again,
  once the filesystem has its size and twice the headroom free (reserve.py);
- housekeeping gives freed pages back a few at a time when the disk is nearly
  full, as moving pages writes WAL too;
- a journal is rewritten (VACUUM) at start only with twice its size free
  beyond the headroom.
"""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path

from sidecar.journal.reserve import Reserve

HEADROOM_MIN = 512 << 10
HEADROOM_MAX = 64 << 20
RESERVE_MAX = 64 << 20
RESERVE_NAME = "journal.reserve"
RELEASE_MAX_PAGES = 1024  # free pages housekeeping gives back per tick at most
# Journal bytes an event costs beyond its frame: index entries, page slack, the
# last_error a retry adds (measured 130 to 300 on a batch; 512 leaves a margin).
ROW_OVERHEAD = 512


def headroom(directory: str | os.PathLike[str]) -> int:
    """Free bytes ingest leaves on the journal's filesystem for delivery's own
    writes: a sixteenth of it, between 512 KiB and 64 MiB. (A lane's
    transaction on a 100-event group interleaved with others writes up to
    ~200 KB of WAL; the checkpoint after it needs room too.)"""
    return min(HEADROOM_MAX, max(HEADROOM_MIN, shutil.disk_usage(directory).total // 16))


class Space:
    """One journal directory's policy; its numbers are read from the filesystem when first needed
    (the directory may not exist yet when the sidecar builds it).

    `reserve`: True for the sidecar's reserve file beside the journal, a `Reserve` to choose its
    path and size (tests), False for none (tools, benchmarks)."""

    def __init__(self, directory: str | os.PathLike[str], *, headroom: int | None = None,
                 reserve: Reserve | bool = False) -> None:
        self.directory = Path(directory)
        if headroom is not None:
            self.headroom = headroom  # else the cached property reads the filesystem
        if isinstance(reserve, Reserve):
            self.reserve = reserve
        elif not reserve:
            self.reserve = None

    @cached_property
    def headroom(self) -> int:
        return headroom(self.directory)

    @cached_property
    def reserve(self) -> Reserve | None:
        """An eighth of the journal's filesystem, at most 64 MiB."""
        return Reserve(self.directory / RESERVE_NAME,
                       min(RESERVE_MAX, shutil.disk_usage(self.directory).total // 8))

    def free(self) -> int:
        """Free bytes on the journal's filesystem (0 if it cannot be read)."""
        try:
            return shutil.disk_usage(self.directory).free
        except OSError:
            return 0

    # -- the journal's own settings -------------------------------------------

    def wal_autocheckpoint(self, page_size: int) -> int:
        """Pages of WAL after which a checkpointing connection folds it in: an eighth of the headroom."""
        return max(16, min(1000, self.headroom // 8 // page_size))

    def can_rewrite(self, size: int) -> bool:
        """Whether a journal of `size` bytes may be rewritten (VACUUM): twice it free beyond the headroom."""
        return self.free() >= 2 * size + self.headroom

    # -- ingest ---------------------------------------------------------------

    def keep(self, *, starved: bool) -> int:
        """Bytes ingest leaves free: the headroom (twice it before resuming), and the
        reserve's bytes while the file is spent (delivery's until housekeeping sets it aside again)."""
        keep = self.headroom * (2 if starved else 1)
        if self.reserve is not None:
            keep += self.reserve.missing
        return keep

    def events_fit(self, free: int, wal: int, cost: int, *, starved: bool) -> int:
        """Events of `cost` bytes that fit: each costs its bytes twice, its WAL frames
        and then the pages the checkpoint adds to the file; the WAL already
        written counts as growth still to come."""
        return (free - wal - self.keep(starved=starved)) // (2 * cost)

    def events_fit_low(self, free: int, wal: int, freed: int, cost: int, *, starved: bool) -> int:
        """`events_fit` when under a batch's worth of room, the WAL folded in: free pages
        (`freed` bytes) absorb the file's growth, and half of it goes to ingest because
        the lanes write their WAL into the same room meanwhile."""
        spare = free - wal - self.keep(starved=starved)
        return min(spare // cost, (spare + freed) // (2 * cost)) // 2

    # -- housekeeping and health ----------------------------------------------

    def pages_to_release(self, page_size: int) -> int:
        """Free pages to give back this tick: moving pages writes WAL too, so out of
        what the headroom leaves, and a few at a time when the disk is nearly full."""
        free = self.free()
        return min(RELEASE_MAX_PAGES, max(free - self.headroom, free // 4) // (2 * page_size))

    def restore_reserve(self) -> bool:
        """Set the reserve aside again, once space has come back past ingest's resume
        (twice the headroom); True if it is there (or there is none to keep)."""
        return self.reserve is None or self.reserve.restore(2 * self.headroom)

    def spend_reserve(self) -> None:
        """A writer hit a real ENOSPC (not ingest stopping early): delivery needs the reserve's room."""
        if self.reserve is not None:
            self.reserve.release()
