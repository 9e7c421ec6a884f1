"""Blobs that travel outside the ring: files in the sidecar's blob inbox.

    inbox = find_inbox(ring_dir)              # the directory the sidecar published, or None
    offload = Offload(inbox)                  # one helper thread, started on first use
    if offload.room(len(data)):
        ring.send_refs(frame, [name])         # the record first: emit order is the ring's order
        offload.put(name, data)               # the helper writes .<name>.tmp, then renames it <name>
    offload.link(name, path)                  # a Path: a hard link (µs), or a copy by the helper
    offload.close()                           # waits for the queued writes: nothing is left half done

Why. A ring holds what the sidecar has not read yet in shared memory
(memory the host cannot swap). Large blobs in it fill it in a burst (a
128 MiB ring held 70 of 130 puts of up to 4 MB) and make every ring that
size. So a blob of `THRESHOLD` bytes or more (64 KiB) goes to a file in the
inbox, a directory on disk beside the journal that the sidecar makes (3770,
like the ring directory: the group may add files; nobody but their owner
and the sidecar may rename or delete them; each file is 0640, written by
its producer only), and the ring gets a small record that names the file
(flag `ring.REC_PART_REFS`). The disk, not the ring, then bounds a burst.

Who writes, and how order is kept. Writing 4 MB to disk costs 12.8 ms p50
here (27 ms max): too much for a trading loop. So emit only keeps the bytes
(a `bytes` object is immutable: a reference, no copy; a bytearray or
memoryview is copied once into memory the Client owns, a memcpy) and a
helper thread writes them, bounded by `max_pending` bytes (more waiting is
refused as ``blob_backlog``, counted, before anything reaches the ring).
The ring record is written at once, in emit order, naming a file that may
not exist yet: the sidecar, reading it, waits for the file (it stops at
that record and reads the ring on when the file appears) while the
producer lives, up to `sidecar.ingest.inbox.WAIT_SECONDS`. The other way,
holding the record back until the file is complete, would make every later
event of the loop wait behind the blob (or go through the helper too), which
is the path that must stay a single memcpy; one file look-up in the sidecar
costs nothing in the loop.

Names. ``<client id>.<seq>.<i>.<16 random hex>.blob`` (`blob_name`): the
random part keeps another member of the group from planting a file (or its
``.tmp``, or a ``.failed`` marker) under a name this producer is about to
use. The helper thread survives any error: it leaves the ``.failed`` marker
when it can, counts it in `Offload.failed` and logs the first.

Crash safety. The helper writes ``.<name>.tmp`` and renames it to `<name>`
when complete: a producer killed mid-blob leaves a hidden .tmp, which the
sidecar never takes for a blob (the record's event is rejected as
``blob_missing`` once the producer is gone) and removes after a grace
period. A write that fails (a full disk) leaves ``<name>.failed``, an empty
file, so the sidecar rejects the event at once as ``blob_write_failed``
rather than wait. `close()` waits for the queued writes, so a Client that
closes (or exits through atexit) leaves complete files for a sidecar that
starts later. The sidecar removes a file once its event is journaled (the
journal keeps its own copy or link), and files of clients that no longer
have a ring after a grace period: nothing waits there forever.

`blob=pathlib.Path(...)`: the file is handed over by reference. If it is
on the inbox's filesystem and the sidecar may read it, it is hard-linked
into the inbox in emit (about 10 µs, whatever its size); else the helper
copies it (emit returns at once; the copy reads the file as it is then).
A hard link is the same file: changes made before the sidecar journals the
event are delivered (the sidecar copies every inbox file into its journal when
it journals it, so later changes are not; a file whose size changed since
the sidecar checked it is rejected as ``blob_changed``), and deleting or renaming the
original is harmless. A file that is missing at emit is refused as
``bad_blob``.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import threading
from pathlib import Path

log = logging.getLogger("client")

THRESHOLD = 64 * 1024              # blobs this large or larger leave the ring (if there is an inbox)
MAX_PENDING_BYTES = 512 << 20      # bytes kept for the helper thread at most; then `blob_backlog`
MAX_PENDING_JOBS = 4096            # and jobs (copies of Paths hold no bytes, but a name each)
INBOX_POINTER = "inbox"            # acks/inbox in the ring directory: the inbox's path, written by the sidecar
INBOX_MODE = 0o3770
BLOB_FILE_MODE = 0o640
FAILED_SUFFIX = ".failed"
CHUNK = 1 << 20                    # a copy reads and writes this much at a time
TOKEN_HEX = 16                     # random hex digits in a blob's name: not guessable by other producers


def find_inbox(ring_dir: str) -> str | None:
    """The inbox the sidecar of `ring_dir` published in ``acks/inbox``, checked:
    a directory of the sidecar's (the ring directory's owner), sticky. None if
    there is none (an older sidecar, or none started yet): blobs then stay in the ring."""
    try:
        sidecar_uid = os.stat(ring_dir).st_uid
        fd = os.open(os.path.join(ring_dir, "acks", INBOX_POINTER), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != sidecar_uid:
                return None
            path = os.read(fd, 4096).decode("utf-8", "strict").strip()
        finally:
            os.close(fd)
        st = os.stat(path)
    except (OSError, UnicodeDecodeError):
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != sidecar_uid or not st.st_mode & stat.S_ISVTX:
        return None
    return path


def blob_name(client_id: str, seq: int, index: int, token: str | None = None) -> str:
    """The file name of an event's `index`-th blob: unique per client and sequence,
    with `TOKEN_HEX` random hex digits (from os.urandom, new each call unless given)
    so another member of the group cannot plant a file under it beforehand.

    >>> blob_name("c1", 7, 0, "0123456789abcdef")
    'c1.7.0.0123456789abcdef.blob'
    """
    return f"{client_id}.{seq}.{index}.{token or os.urandom(TOKEN_HEX // 2).hex()}.blob"


class Offload:
    """The helper thread that writes blobs into the inbox, and the links of Paths."""

    def __init__(self, inbox: str, *, max_pending: int = MAX_PENDING_BYTES) -> None:
        self.inbox = inbox
        self.max_pending = max_pending
        self.pending = 0               # bytes queued, not yet written
        self.written = 0
        self.failed = 0
        self._logged = False           # the first failure is logged; later ones only counted
        st = os.stat(inbox)
        self._dev, self._gid, self._sidecar_uid = st.st_dev, st.st_gid, st.st_uid
        self._jobs: collections.deque[tuple[str, bytes | memoryview | str]] = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None

    # -- the loop's side --------------------------------------------------------

    def room(self, size: int) -> bool:
        """Whether `size` more bytes may wait for the helper now."""
        return self.pending + size <= self.max_pending and len(self._jobs) < MAX_PENDING_JOBS

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Queue `data` to be written as `name` (after `room` said yes). `data`
        must not change: a bytes object, or a copy the caller made."""
        self._queue(name, data, len(data))

    def link(self, name: str, path: Path) -> bool:
        """Hand `path` over as `name`: a hard link now if it is on the inbox's
        filesystem and readable by the sidecar, else a copy queued for the
        helper. False if the file is missing or not a regular file."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        readable = (self._sidecar_uid in (0, st.st_uid) or (st.st_gid == self._gid and st.st_mode & 0o040)
                    or st.st_mode & 0o004)
        if st.st_dev == self._dev and readable:
            try:
                os.link(path, os.path.join(self.inbox, name), follow_symlinks=True)
                return True
            except OSError:
                pass  # protected_hardlinks, a filesystem without links: copied instead
        self._queue(name, os.fspath(path), 0)
        return True

    def _queue(self, name: str, job: bytes | memoryview | str, size: int) -> None:
        with self._cv:
            self._jobs.append((name, job))
            self.pending += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="client-blobs", daemon=True)
                self._thread.start()
            self._cv.notify()

    def close(self, timeout: float | None = None) -> bool:
        """Wait until every queued blob is written (or `timeout`); True if all were."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def after_fork(self) -> None:
        """In a forked child: the parent's thread is not here; its queue is the parent's."""
        self._jobs.clear()
        self._thread = None
        self._cv = threading.Condition()
        self._busy = False
        self.pending = 0

    # -- the helper thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._jobs))
                name, job = self._jobs.popleft()
                self._busy = True
            try:
                self._write(name, job)
            except Exception as exc:  # noqa: BLE001 - this thread must never die: the ring would stall
                self._failed(name, exc)
                self.fail(name)
            finally:
                with self._cv:
                    self._busy = False
                    if not isinstance(job, str):
                        self.pending -= len(job)
                    self._cv.notify_all()

    def _write(self, name: str, job: bytes | memoryview | str) -> None:
        tmp = os.path.join(self.inbox, f".{name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, BLOB_FILE_MODE)
            try:
                os.fchmod(fd, BLOB_FILE_MODE)  # the umask must not make it unreadable to the sidecar
                if isinstance(job, str):
                    with open(job, "rb") as src:
                        while chunk := src.read(CHUNK):
                            _write_all(fd, chunk)
                else:
                    _write_all(fd, job)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(self.inbox, name))
            self.written += 1
        except OSError as exc:
            self._failed(name, exc)
            _unlink(tmp)
            self.fail(name)

    def _failed(self, name: str, exc: BaseException) -> None:
        """Count a blob not written; log the first (a full disk would log every one)."""
        self.failed += 1
        if not self._logged:
            self._logged = True
            log.error("could not write blob %s into %s (%s): the sidecar rejects its event as blob_write_failed "
                      "(later failures are counted in Offload.failed, not logged)", name, self.inbox, exc)

    def fail(self, name: str) -> None:
        """Leave ``<name>.failed``, an empty marker: the sidecar stops waiting for
        this blob and rejects its event as ``blob_write_failed``."""
        try:
            os.close(os.open(os.path.join(self.inbox, name + FAILED_SUFFIX),
                             os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, BLOB_FILE_MODE))
        except OSError:
            pass  # then the sidecar waits for it while this producer lives, and no longer


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[:CHUNK])
        view = view[n:]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # gone, or another user's file planted under our name (sticky: not ours to remove)
