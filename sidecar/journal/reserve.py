"""Disk space set aside for the journal's delivery side: spent only when the disk is full.

    reserve = Reserve(journal_dir / "journal.reserve", size)   # sized by the policy (space.py)
    reserve.restore(headroom)   # housekeeping: (re)create the file when there is room for it
    reserve.release()           # a write failed with "disk full": give its space to delivery
    reserve.missing             # bytes ingest leaves free while the file is spent

In WAL mode even a DELETE needs disk space (its WAL frames, then a checkpoint
that may grow the database file): on a disk filled to the last byte, delivery
could free nothing and the journal would stay full for ever. Ingest stops
early for that (space.py), but something else may fill the filesystem, or a
batch may cost more than ingest guessed. Then the file `journal.reserve`,
allocated at start, is deleted: its bytes let the lanes' transactions and the
checkpoint go on, and ingest leaves them free (`missing`) until housekeeping
allocates the file again, once the filesystem has its size free beyond what
ingest needs to resume.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("sidecar.journal")


class Reserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._warned = False  # a failure to allocate is logged once, not every housekeeping tick

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    @property
    def held(self) -> bool:
        return self.path.exists()

    @property
    def missing(self) -> int:
        """Bytes ingest leaves free because the file was spent (0 while it is there)."""
        return 0 if self.held else self.size

    def restore(self, headroom: int) -> bool:
        """Allocate the file if it is missing and the filesystem has its size and
        `headroom` more free; True if it is there afterwards."""
        if self.held:
            return True
        try:
            if shutil.disk_usage(self.path.parent).free < self.size + headroom:
                return False
            tmp = self._tmp
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, self.size)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._warned = False
        except OSError as exc:
            _unlink(self._tmp)
            if self._warned:
                return False
            self._warned = True
            log.warning("cannot set aside the journal's %.1f MB reserve (%s); will try again",
                        self.size / 1e6, exc.strerror)
            return False
        return True

    def release(self) -> bool:
        """Delete the file (any thread); True if this call freed it."""
        if not _unlink(self.path):
            return False
        log.warning("journal: released its %.1f MB disk reserve so that delivery and checkpoints go on",
                    self.size / 1e6)
        return True


def _allocate(fd: int, size: int) -> None:
    """Really allocate `size` bytes (a sparse file would hold no space)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: a filesystem without fallocate
            raise
        block = b"\0" * (1 << 20)
        for start in range(0, size, len(block)):
            os.write(fd, block[: min(len(block), size - start)])
    os.fsync(fd)


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
