"""The blob inbox: where producers leave blobs too large for their ring (`client.blobs`).

    inbox = Inbox("/var/lib/trading-sidecar.inbox")
    inbox.open(ring_dir)                    # make it 3770, publish its path in <ring_dir>/acks/inbox
    ref = inbox.resolve(b"c1.7.0.0123456789abcdef.blob", "c1", owner_uid, alive=ring.producer_alive)
    # None: not there yet, wait (the ring stops at that record); else a BlobRef (maybe `error`),
    # holding the checked file open: spool.adopt(ref.fd, ref.size) copies from it; ref.close() after
    inbox.consumed([ref.name])              # after the journal commit: the journal has its own copy
    inbox.clean(ring_names, now)            # orphans of gone clients, half-written .tmp files

Trust. Any process of the trading group may write files here, so a name in
a ring record is checked (``<the ring's client id>.<seq>.<i>.<16 random
hex>.blob``, no path: the random part means nobody can plant a file under
a name before its producer writes it), the file is opened once without
following links or blocking (a FIFO), and that fd must be a regular file of
the ring's owner (the only user who can have written that ring) and at most
`max_bytes` long. The journal copies from that very fd, never from the path
(a file swapped for a symlink after the check is never followed). The sidecar owns the directory (sticky: nobody else
removes another's file) and removes files once their events are journaled.
A producer that lives is waited for up to WAIT_SECONDS (its helper thread
may still be writing); one that is gone with the file missing gets its event
rejected as ``blob_missing``; a ``<name>.failed`` marker (its write failed)
as ``blob_write_failed``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable

from client import blobs as producer

log = logging.getLogger("sidecar.inbox")

WAIT_SECONDS = 300.0           # a live producer's blob may take this long to appear, then blob_missing
ORPHAN_SECONDS = 600.0         # a file of a client with no ring left, or a .tmp, older than this is removed
HEAD_BYTES = 16                # what routing may look at without reading the file (image magic numbers)
# <client id>.<seq>.<i>.<16 random hex>.blob: the random part keeps another group
# member from planting a file under a name the victim is about to use.
_NAME = re.compile(rb"([A-Za-z0-9._-]{1,64})\.(\d{1,20})\.(\d{1,2})\.[0-9a-f]{%d}\.blob\Z" % producer.TOKEN_HEX)


class BlobRef:
    """A blob that is a file in the inbox, in place of its bytes in an event's frames.

    `len()` is its size and `startswith` looks at its first bytes, which is all
    routing needs; `error` is a reject reason when the file is unusable. `fd`
    is the file as it was checked (-1 if none): the journal copies from it and
    never opens `path` again, so a file swapped after the check is never read.
    `close()` (or the ref's end) closes it."""

    __slots__ = ("error", "fd", "head", "name", "nlink", "path", "size")

    def __init__(self, path: str, name: str, size: int = 0, head: bytes = b"", nlink: int = 1,
                 error: str | None = None, fd: int = -1) -> None:
        self.path, self.name, self.size, self.head, self.nlink, self.error = path, name, size, head, nlink, error
        self.fd = fd

    def close(self) -> None:
        """Close the checked fd; twice is harmless (the number may be another file's by then)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def startswith(self, prefix: bytes) -> bool:
        return self.head.startswith(prefix)

    def __repr__(self) -> str:
        return f"<BlobRef {self.name} {self.size} bytes{' ' + self.error if self.error else ''}>"


class Inbox:
    """One inbox directory; see the module docstring."""

    def __init__(self, path: str, *, max_bytes: int = 1 << 62, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.clock = clock
        self.ok = False

    def open(self, ring_dir: str) -> None:
        """Make the directory (3770, the ring directory's group) and tell producers
        where it is. Raises OSError if it cannot be made: blobs then stay in rings."""
        try:
            os.mkdir(self.path, producer.INBOX_MODE)
        except FileExistsError:
            pass
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EEXIST, "not a directory of this sidecar's (nor followed if a symlink)", self.path)
        gid = os.stat(ring_dir).st_gid
        if st.st_gid != gid:
            os.chown(self.path, -1, gid)
        os.chmod(self.path, producer.INBOX_MODE)
        acks = os.path.join(ring_dir, "acks")
        tmp = os.path.join(acks, f".{producer.INBOX_POINTER}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.fchmod(fd, 0o640)
            os.write(fd, os.path.abspath(self.path).encode() + b"\n")
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(acks, producer.INBOX_POINTER))
        self.ok = True

    def resolve(self, raw: bytes, client_id: str, owner_uid: int, *, alive: Callable[[], bool]) -> BlobRef | None:
        """The blob a ring record names, checked; None while a live producer may still write it."""
        m = _NAME.match(raw)
        if m is None or m.group(1).decode() != client_id:
            return BlobRef("", raw[:80].decode("ascii", "replace"), error="blob_bad_name")
        name = raw.decode()
        path = os.path.join(self.path, name)
        ref = self._open(path, name, owner_uid)
        if ref is not None:
            return ref
        if os.path.lexists(path + producer.FAILED_SUFFIX):
            return BlobRef(path, name, error="blob_write_failed")
        if alive():
            return None
        # Gone: it may have finished the file just before it exited.
        return self._open(path, name, owner_uid) or BlobRef(path, name, error="blob_missing")

    def _open(self, path: str, name: str, owner_uid: int) -> BlobRef | None:
        # Opened once, never followed, never blocking (a FIFO); the fd checked here is
        # the one the journal copies from (Spool.adopt), so nothing can be swapped in between.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return BlobRef(path, name, error="blob_unreadable" if exc.errno != errno.ELOOP else "blob_not_a_file")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return BlobRef(path, name, error="blob_not_a_file")
            if owner_uid >= 0 and st.st_uid != owner_uid:
                return BlobRef(path, name, error="blob_wrong_owner")
            if st.st_size > self.max_bytes:
                return BlobRef(path, name, size=st.st_size, error="too_large")
            ref = BlobRef(path, name, st.st_size, os.pread(fd, HEAD_BYTES, 0), st.st_nlink, fd=fd)
            fd = -1  # the ref's now
            return ref
        except OSError:
            return BlobRef(path, name, error="blob_unreadable")
        finally:
            if fd >= 0:
                os.close(fd)

    def consumed(self, names: Iterable[str]) -> None:
        """Remove files whose events the journal holds (it keeps its own link or copy)."""
        for name in names:
            for path in (os.path.join(self.path, name), os.path.join(self.path, name + producer.FAILED_SUFFIX)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def clean(self, live_clients: set[str], now: float | None = None) -> int:
        """Remove, once older than ORPHAN_SECONDS, files of clients that have no
        ring left (`live_clients`: ids of the rings in the ring directory) and
        half-written .tmp files; returns how many went."""
        now = self.clock() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return 0
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - st.st_ctime < ORPHAN_SECONDS:  # ctime: a hard link of an old file is new
                continue
            m = _NAME.match(e.name.removesuffix(producer.FAILED_SUFFIX).encode())
            if e.name.endswith(".tmp") or m is None or m.group(1).decode() not in live_clients:
                try:
                    if stat.S_ISDIR(st.st_mode):
                        continue  # nothing a producer should make; left to the operator
                    os.unlink(e.path)
                    removed += 1
                except OSError:
                    pass
        if removed:
            log.info("removed %d orphaned blob file(s) from %s", removed, self.path)
        return removed
