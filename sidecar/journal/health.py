"""Whether the journal takes writes: one state for status, check, /health and metrics.

    health = JournalHealth(journal_dir, metrics, space=Space(journal_dir, reserve=True))
    journal = Journal.open(journal_dir, health=health, role="ingest")   # every transaction reports here
    health.state          # "ok", "disk full", "read-only", "I/O error" or "locked"
    health.problem()      # one line for `sidecar check`, or None

Each writer (ingest, delivery, checkpoint) reports its last transaction: a
failure SQLite names as SQLITE_FULL, SQLITE_READONLY, SQLITE_IOERR or
SQLITE_BUSY/LOCKED sets that writer's state, its next commit clears it. The
journal's state is the first writer's that is not ok. Each change of it is
logged once (not each failed write), so a full disk costs two log lines:
one when it fills, one when space returns; a journal that fills again and
again (a small disk, a backlog flowing through it) at most one per LOG_EVERY.

What the others do meanwhile: ingest keeps the batch it could not commit
(ring read positions are not advanced, the ZeroMQ socket is not read), and
retries it every second; lanes keep delivering, and their deletes free pages
that the next commit reuses (see `Ingest` and the README's "When things go
wrong").
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from sidecar.errors import JournalUnavailable
from sidecar.journal.space import Space
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.journal")

LOG_EVERY = 10.0  # seconds: changes of state closer together than this share one log line

OK = "ok"
FULL, READ_ONLY, IO_ERROR, LOCKED = "disk full", "read-only", "I/O error", "locked"
_BY_CODE = {"SQLITE_FULL": FULL, "SQLITE_READONLY": READ_ONLY, "SQLITE_IOERR": IO_ERROR,
            "SQLITE_BUSY": LOCKED, "SQLITE_LOCKED": LOCKED, "SQLITE_CANTOPEN": IO_ERROR}
# What each state means for events, said once in the log line and in `check`.
_CONSEQUENCE = {
    FULL: "new events wait in the producers' rings (ZeroMQ senders are not read); lanes keep delivering; "
          "free space and it resumes by itself",
    READ_ONLY: "new events wait in the producers' rings (ZeroMQ senders are not read); after a filesystem "
               "error (ext4 errors=remount-ro) stop the sidecar, unmount, fsck, mount, start it; a ro mount "
               "or a wrong file owner: fix it and it resumes by itself",
    IO_ERROR: "new events wait in the producers' rings; check the disk (dmesg); it retries every second",
    LOCKED: "another process holds the journal's write lock; it retries every second",
}




def classify(exc: BaseException, directory: str | os.PathLike[str] | None = None) -> str | None:
    """The journal state an exception means, or None if it is not such a fault.

    SQLite reports a write refused by a read-only filesystem as SQLITE_IOERR
    (EROFS) or SQLITE_READONLY; the filesystem tells them apart (`_read_only_fs`)."""
    if isinstance(exc, JournalUnavailable):
        return exc.state
    if isinstance(exc, OSError) and exc.errno is not None:
        state = {28: FULL, 30: READ_ONLY, 5: IO_ERROR, 122: FULL}.get(exc.errno)  # ENOSPC EROFS EIO EDQUOT
    elif isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""  # e.g. SQLITE_IOERR_WRITE: its primary code
        state = _BY_CODE.get("_".join(name.split("_")[:2]))
    else:
        state = None
    if state in (IO_ERROR, READ_ONLY) and directory is not None and _read_only_fs(directory):
        return READ_ONLY
    return state


def _read_only_fs(directory: str | os.PathLike[str]) -> bool:
    """The mount's flag, or else a file that cannot be made for EROFS: ext4 after an
    error (errors=remount-ro) refuses writes as "emergency_ro" with its mount still rw."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
        with tempfile.TemporaryFile(dir=directory):
            return False
    except OSError as exc:
        return exc.errno == errno.EROFS


class NoHealth:
    """For a journal nobody watches (tools, tests, benchmarks): reports go nowhere.

    It still carries the directory's space policy (without a reserve), which `Journal.open` follows."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.space = Space(directory)

    def ok(self, writer: str) -> None:
        pass

    def failed(self, writer: str, exc: BaseException) -> str | None:
        return None


class JournalHealth:
    """The journal's state, reported by every writer, thread-safe; with the directory's space policy."""

    def __init__(self, directory: str | os.PathLike[str], metrics: Metrics, *, space: Space | None = None) -> None:
        self.directory = Path(directory)
        self.space = space or Space(directory)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[str, str]] = {}  # writer -> (state, SQLite's message)
        self.state = OK
        self.detail = ""
        self._logged, self._logged_at, self._unlogged = OK, float("-inf"), 0  # the log's view (`settle`)
        metrics.journal_state.state(OK)

    def ok(self, writer: str) -> None:
        if not self._failing:  # the common case, one dict test a transaction
            return
        with self._lock:
            if self._failing.pop(writer, None) is not None:
                self._update()

    def failed(self, writer: str, exc: BaseException) -> str | None:
        """Record a failed write; returns its state, or None if it is not a journal fault."""
        state = classify(exc, self.directory)
        if state == FULL and not isinstance(exc, JournalUnavailable):
            self.space.spend_reserve()  # a real ENOSPC, not ingest stopping early
        if state is not None:
            with self._lock:
                self._failing[writer] = (state, str(exc))
                self._update()
        return state

    def settle(self) -> None:
        """Log the state if it changed since the last line and LOG_EVERY has passed
        (housekeeping calls this every tick, so the log always ends on the truth)."""
        with self._lock:
            self._log(time.monotonic())

    def problem(self) -> str | None:
        """One line for `check` and /health, or None while writes commit."""
        if self.state == OK:
            return None
        return f"journal {self.state} ({self.detail}; {self._free()}): {_CONSEQUENCE[self.state]}"

    def _update(self) -> None:
        state, detail = next(iter(self._failing.values()), (OK, ""))
        if state == self.state:
            self.detail = detail or self.detail
            return
        self.state, self.detail = state, detail
        self.metrics.journal_state.state(state)
        self._unlogged += 1
        self._log(time.monotonic())

    def _log(self, now: float) -> None:
        """One line per change of state; a disk flapping at the edge costs one per LOG_EVERY."""
        if self.state == self._logged or now < self._logged_at + LOG_EVERY:
            return
        also = f" ({self._unlogged - 1} more change(s) since the last such line)" if self._unlogged > 1 else ""
        self._logged, self._logged_at, self._unlogged = self.state, now, 0
        if self.state == OK:
            log.warning("journal writable again (%s): ingest and delivery go on%s", self._free(), also)
        else:
            log.error("%s%s", self.problem(), also)

    def _free(self) -> str:
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return "free space unknown"
        return f"{free / 1e6:.1f} MB free in {self.directory}"


# What a journal reports its transactions to.
AnyHealth = JournalHealth | NoHealth
