"""The ring directory's own entries, kept in order: the lock, ``acks/``, ``quarantine/``, the doorbell.

    place = RingDirectory("/run/trading-sidecar/ingest.rings", metrics, inbox=inbox)
    doorbell = place.open()              # make and check it, lock it, bind the doorbell (None: none)
    place.quarantine_path(path, "why", pid=None, reason="not_a_file")   # moved aside, counted, logged
    place.clean(held=rings.keys())       # quarantine/ bounded; leftovers of the dead removed
    place.close()                        # the lock released

Nothing in the directory can stop a start, but the directory itself
must be the sidecar's (`IngestError` if another uid owns it): whatever stands where the
sidecar's own entries belong (``acks``, ``quarantine``, ``doorbell``) is
renamed aside, never followed, and `open()` goes on; ``quarantine/`` keeps
at most `quarantine_files` entries and `quarantine_bytes`, oldest out first.
Another sidecar using the same directory (``ipc://X`` and ``ipc://X.sock``
share one) is refused by a lock (`sidecar.ops.lock`), which `open()` takes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Collection

from client import ring as layout
from sidecar.errors import IngestError
from sidecar.ingest.inbox import Inbox
from sidecar.ingest.ring_files import delete, held_by_other, kind, unlink
from sidecar.ops import lock
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.rings")

CLEAN_SECONDS = 60.0           # how often quarantine/, acks/ and half-made rings are tidied
QUARANTINE_FILES = 64          # quarantine/ keeps at most this many entries...
QUARANTINE_BYTES = 1 << 30     # ...and bytes (tmpfs: memory), oldest out first
TOMBSTONE_SECONDS = 3600.0     # a quarantined ring's ack file stays this long for its producer to see
HALF_MADE_SECONDS = 60.0       # a hidden .tmp ring nobody holds, older than this, is a dead producer's
                               # (".tmp-<32 hex>.ring.tmp", or the previous clients' ".<id>.ring.tmp")
QUARANTINE = "quarantine"
LOCK = ".lock"                 # in acks/, which only the sidecar writes
OWN = (layout.ACKS, QUARANTINE, layout.DOORBELL)


class RingDirectory:
    """The directory rings live in, as far as it is the sidecar's: see the module docstring."""

    def __init__(self, directory: str, metrics: Metrics, *, inbox: Inbox | None = None,
                 quarantine_files: int = QUARANTINE_FILES, quarantine_bytes: int = QUARANTINE_BYTES) -> None:
        self.directory = directory
        self.metrics = metrics
        self.inbox = inbox
        self.quarantine_files = quarantine_files
        self.quarantine_bytes = quarantine_bytes
        self.ignored: set[str] = set()   # files that could not even be moved aside: left alone
        self._lock: lock.Held | None = None
        self._in_quarantine = 0          # entries in quarantine/ (counted at the last tidy, plus those added since)

    def open(self) -> socket.socket | None:
        """Lock the directory (raises `lock.Locked` naming the other sidecar's
        pid), make its own entries and bind the doorbell (None if it cannot
        be: producers then wait for ingest's bounded sleep). Whatever stands
        in the way inside the directory is moved aside."""
        self._make_dir()
        acks = self._own_dir(layout.ACKS, layout.ACKS_DIR_MODE)
        self._lock = lock.acquire(os.path.join(acks, LOCK), f"ring directory {self.directory}")
        try:
            self._own_dir(QUARANTINE, 0o700)
        except OSError as exc:  # rings that break the layout are then left where they are, and ignored
            log.error("no quarantine/ in %s (%s): broken rings will be ignored, not moved", self.directory, exc)
        return self._bind_doorbell()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _make_dir(self) -> None:
        try:
            os.mkdir(self.directory, layout.RING_DIR_MODE)
        except FileExistsError:
            pass
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory (nor followed if a symlink)", self.directory)
        if st.st_uid != os.geteuid():
            # Whoever owns it can read and delete every ring in it (a local user
            # who made it first in /tmp, say): never used, whatever its mode.
            raise IngestError(
                f"the ring directory {self.directory} belongs to uid {st.st_uid}, not to this sidecar "
                f"(uid {os.geteuid()}): whoever owns it could read and remove every ring in it. Remove it "
                f"(or chown it to uid {os.geteuid()}) and start again, or run under systemd, whose "
                f"RuntimeDirectory= makes it")
        os.chmod(self.directory, layout.RING_DIR_MODE)  # whatever the umask was

    def _own_dir(self, name: str, mode: int) -> str:
        """`directory/name` as a directory of ours with `mode`; anything else there is moved aside."""
        path = os.path.join(self.directory, name)
        for _ in range(3):  # a member of the group may keep putting something there: not forever
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    self._aside(name, st)
                    continue
            except FileNotFoundError:
                try:
                    os.mkdir(path, mode)
                except FileExistsError:
                    continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_uid != os.geteuid():
                    continue
                os.fchmod(fd, mode)  # explicit: mkdir's mode is filtered by the umask
            finally:
                os.close(fd)
            return path
        raise OSError(errno.EEXIST, f"cannot make {name}/ in {self.directory}: something keeps taking its place")

    def _aside(self, name: str, st: os.stat_result) -> None:
        """Rename whatever stands at `name` out of the way (the next clean removes it), never following it."""
        dest = os.path.join(self.directory, f".aside.{name}.{time.time_ns()}")
        os.rename(os.path.join(self.directory, name), dest)
        self.count("in_the_way")
        log.warning("moved aside a %s (uid %d) that stood where the sidecar's %r belongs", kind(st.st_mode),
                    st.st_uid, name)

    def _bind_doorbell(self) -> socket.socket | None:
        path = os.path.join(self.directory, layout.DOORBELL)
        try:
            try:
                st = os.lstat(path)
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid():
                    os.unlink(path)  # a dead sidecar's: a live one would hold the lock
                else:
                    self._aside(layout.DOORBELL, st)
            except FileNotFoundError:
                pass
            bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                bell.bind(path)
            except OSError:
                bell.close()
                raise
        except OSError as exc:  # producers then wait for the ingest's bounded sleep instead
            log.error("no doorbell in %s (%s): idle rings are looked at every 50 ms instead", self.directory, exc)
            return None
        bell.setblocking(False)
        os.chmod(path, 0o660)  # the trading group may ring it (nobody can swap it: the directory is sticky)
        return bell

    def quarantine_path(self, path: str, why: str, *, pid: int | None, client: str = "?",
                         reason: str = "corrupt") -> None:
        """Move a file aside (never following it), count and log it. Logged once:
        a file that cannot even be moved is remembered and left alone."""
        if path in self.ignored:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = os.path.join(self.directory, QUARANTINE, f"{os.path.basename(path)}.{stamp}.{time.time_ns() % 10**9}")
        try:
            os.rename(path, dest)
            self._in_quarantine += 1
        except OSError as exc:
            dest = f"(could not move it: {exc.strerror}; ignoring it from now on)"
            self.ignored.add(path)
        self.count(reason)
        log.error("quarantined ring %r of client %s (pid %s): %s; moved to %s", os.path.basename(path), client,
                  pid if pid is not None else "unknown", why, dest)
        if self._in_quarantine > self.quarantine_files:  # a flood of them: keep quarantine/ bounded now
            self._clean_quarantine()

    def count(self, reason: str) -> None:
        self.metrics.rings_quarantined.labels(reason=reason).inc()

    # -- tidying ------------------------------------------------------------------

    def clean(self, held: Collection[str]) -> None:
        """Keep quarantine/ bounded (oldest out first), and remove what was moved
        aside, half-made rings of dead producers and ack files of rings gone
        (`held`: the paths of the rings being read)."""
        try:
            self._clean_quarantine()
            self._clean_top()
            self._clean_acks(held)
            if self.inbox is not None and self.inbox.ok:
                self.inbox.clean(self._ring_clients())
        except OSError as exc:
            log.warning("tidying the ring directory %s: %s", self.directory, exc)

    def _ring_clients(self) -> set[str]:
        """Client ids that have a ring in the directory (their inbox files are kept)."""
        ids = set()
        for name in os.listdir(self.directory):
            if name.endswith(layout.RING_SUFFIX):
                stem = name[: -len(layout.RING_SUFFIX)]
                ids.add(stem)
                head, _, tail = stem.rpartition(".")
                if tail.isdigit():
                    ids.add(head)
        return ids

    def _clean_quarantine(self) -> None:
        """Oldest out first (by the time they were moved in) until within both bounds."""
        try:
            entries = list(os.scandir(os.path.join(self.directory, QUARANTINE)))
        except FileNotFoundError:
            return
        held = []
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            held.append((st.st_ctime_ns, e.path, st.st_blocks * 512, stat.S_ISDIR(st.st_mode)))
        held.sort()
        total = sum(h[2] for h in held)
        while held and (len(held) > self.quarantine_files or total > self.quarantine_bytes):
            _, path, size, is_dir = held.pop(0)
            delete(path, is_dir)
            total -= size
        self._in_quarantine = len(held)

    def _clean_top(self) -> None:
        for e in os.scandir(self.directory):
            if e.name.startswith(".aside."):
                delete(e.path, e.is_dir(follow_symlinks=False))
            elif e.name.startswith(".") and e.name.endswith(layout.RING_SUFFIX + ".tmp"):
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > HALF_MADE_SECONDS \
                        and not held_by_other(e.path):
                    unlink(e.path)  # a producer died making it; nobody else removes it

    def _clean_acks(self, held: Collection[str]) -> None:
        acks = os.path.join(self.directory, layout.ACKS)
        for e in os.scandir(acks):
            if not e.name.endswith(layout.RING_SUFFIX) or os.path.join(self.directory, e.name) in held:
                continue
            if os.path.lexists(os.path.join(self.directory, e.name)):
                continue  # a ring not adopted yet: its read position is in there
            st = e.stat(follow_symlinks=False)
            fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                raw = os.pread(fd, layout.ACK_BYTES, 0)
            finally:
                os.close(fd)
            tombstone = len(raw) > layout.ACK_QUARANTINED and raw[layout.ACK_QUARANTINED]
            if not tombstone or time.time() - st.st_mtime > TOMBSTONE_SECONDS:
                unlink(e.path)

