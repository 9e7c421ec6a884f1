"""The same-host hand-off: one single-producer ring of events per `Client`, in a
file of shared memory that outlives both the producer and the sidecar.

    ring = RingWriter.create(ring_dir("ipc:///run/trading-sidecar/ingest.sock"), client_id)
    ring.send(frame)               # copy into mapped memory: no syscall; QueueFull when full
    ring.close()                   # returns at once; the sidecar drains the tail when it can

Where: `ring_dir(endpoint)` is the ingest socket's path with ``.sock``
replaced by ``.rings`` (``/run/trading-sidecar/ingest.rings`` under the
systemd unit, whose /run is tmpfs: memory, never written to a disk). Client
and sidecar derive it from the one endpoint, so neither is configured. The
directory and its files are 0770/0660: the trading group and the sidecar
only.

File layout (little-endian)::

    0     magic b"TSRING1\\n", u32 version, u32 flags (bit 0: records carry a CRC-32)
    16    u64 capacity (a power of two), u32 producer pid, u32 0, u64 created_ns
    64    client id, 64 bytes, NUL-padded
    128   u64 read_pos    written by the sidecar once the journal has committed up to it
    192   u8  wake        sidecar: 1 "look at me": ring the doorbell (and check byte 200)
    200   u8  quarantined sidecar: 1 "this ring is set aside, make a new one" (never cleared)
    256   u64 write_hint  producer: its position, written on the slow paths only (doorbell, full, close)
    264   u8  closed      producer: no more records will follow
    4096  data: `capacity` bytes of records

Positions are byte counts since the ring was made (never reset); a record
at position p lives at offset ``p % capacity`` and never straddles the
end: where one does not fit, a wrap record (or, in a tail too short for
one, nothing) fills the rest. A record is a 16-byte header, the body,
padding to 8 bytes, and a u64 trailer::

    u32 size, u16 nparts, u16 flags, u32 crc32, u32 0 | size bytes of body | pad | u64 end

The body is the event's frame alone (nparts = 1) or a table of nparts u32
lengths followed by the frame and its blobs. One `struct.pack_into` writes
a whole single-part record, in that order, so the hot path makes one C call.

Why a reader never sees half a record. The trailer `end` (the position after
the record) is written last and is the commit mark: a reader takes a record
only if the trailer where its header's size puts it equals its own position
plus the record's length, which no stale record of an earlier lap and no
zeroed page can match. On x86-64 stores become visible in program order
(TSO), so a reader that sees `end` sees the body. A copy (memcpy, pread) may
load the bytes of one region in any order, so the sidecar reads twice: a
first pass finds the committed marks, a second copy, made after them, is the
one it parses. aarch64 orders neither stores nor loads without barriers,
which Python cannot issue: there the producer also writes a CRC-32 of the
body, started from the record's end position so that no earlier lap's record
can pass for it (flag bit 0 in the file and in each record), and a mismatch
means "not visible yet, read again", becoming corruption only if it lasts. The CRC costs
about 0.2 µs an emit, so x86-64 skips it; `RingWriter(checksum=True)` forces it.

Wake-up. While events flow the sidecar polls every millisecond; after a
quarter of a second with none it sets `wake` in every ring and sleeps on a
Unix datagram socket in the ring directory (`doorbell`). The producer reads
`wake` after each record (a load from memory it already maps, ~20 ns) and only
when it is set clears it and sends one datagram. So a busy sidecar costs the
producer nothing, and an idle one hears of a lone event in about 0.4 ms
(bench/wakeup.py). (Set-flag-then-check and write-then-check-flag can still
cross on any CPU; the sidecar's sleep is bounded by 50 ms for that case.)
"""

from __future__ import annotations

import fcntl
import mmap
import os
import platform
import socket
import struct
import time
import zlib
from collections.abc import Callable, Sequence

from .transport import QueueFull, Transport, TransportError

MAGIC = b"TSRING1\n"
VERSION = 1
FILE_HEADER = 4096
OFF_CLIENT_ID = 64
OFF_READ = 128
OFF_WAKE = 192
OFF_QUARANTINED = 200
OFF_HINT = 256
OFF_CLOSED = 264
FILE_CHECKSUM = 1

RECORD = struct.Struct("<IHHII")   # size, nparts, flags, crc32, 0; the u64 trailer `end` follows the body
TRAILER = 8
HEADER = RECORD.size + TRAILER     # 24: a record's bytes beyond its body, before padding
REC_WRAP = 1
REC_CRC = 2
MAX_PARTS = 17                     # the frame and at most wire.MAX_BLOBS blobs

WAKE_NONE = 0
WAKE_RING = 1

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; Python 3.11 lacks the name
_FILE = struct.Struct("<8sIIQIIQ")  # magic, version, flags, capacity, pid, 0, created_ns
U64 = struct.Struct("<Q")

RING_SUFFIX = ".ring"
DOORBELL = "doorbell"
# 30 s at 10,000 events/s of 300-byte events (304 bytes a record) is 91 MB.
DEFAULT_RING_BYTES = 128 * 1024 * 1024
LAST_WORD_BYTES = 4096             # kept free for a closing message (its stats are under 2 KiB)
MIN_RING_BYTES = 64 * 1024
MAX_RING_BYTES = 1 << 34
# x86-64's total store order makes the commit mark enough; elsewhere, check.
CHECKSUM_BY_DEFAULT = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")


def ring_dir(endpoint: str) -> str | None:
    """The ring directory that belongs to an ``ipc://`` endpoint; None for others.

    >>> ring_dir("ipc:///run/trading-sidecar/ingest.sock")
    '/run/trading-sidecar/ingest.rings'
    >>> ring_dir("tcp://10.0.0.5:5555") is None
    True
    """
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    if path.endswith(".sock"):
        path = path[: -len(".sock")]
    return path + ".rings"


def record_bytes(size: int) -> int:
    """Bytes a record with a body of `size` takes in the ring (header, padding)."""
    return (size + HEADER + 7) & ~7


def max_record_body(capacity: int) -> int:
    """The largest body a ring of `capacity` takes: half of it, so that any
    record fits once the ring is empty, wherever the write position is."""
    return capacity // 2 - HEADER


def make_private_dir(path: str) -> None:
    """Create the ring directory, 2770 (group-shared, nobody else), if missing."""
    try:
        os.mkdir(path, 0o2770)
    except FileExistsError:
        return
    os.chmod(path, 0o2770)  # mkdir's mode is filtered by the umask


_packers: dict[int, Callable[..., None]] = {}


def packer(size: int) -> Callable[..., None]:
    """`pack_into(buf, offset, size, nparts, flags, crc, 0, body, end)` for a
    body of `size` bytes: the whole record in one C call, trailer last."""
    pack = _packers.get(size)
    if pack is None:
        if len(_packers) >= 4096:  # payload sizes vary; keep the cache bounded
            _packers.clear()
        pad = record_bytes(size) - HEADER - size
        pack = _packers[size] = struct.Struct(f"<IHHII{size}s{pad}xQ").pack_into
    return pack


class RingWriter(Transport):
    """The producer's end of one ring. One thread at a time (Client's rule)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, capacity: int, checksum: bool,
                 doorbell: str) -> None:
        self.path = path
        self.capacity = capacity
        self.checksum = checksum
        self._flags = REC_CRC if checksum else 0
        self._crc = zlib.crc32
        # Kept free for the closing message, so that a client closing on a
        # full ring still announces its last sequence number.
        self._usable = capacity - LAST_WORD_BYTES
        # Half of what is usable: any record then fits once the ring is empty.
        self.max_body = (self._usable // 2 - HEADER) & -8
        self._fd = fd
        self._mm = mm
        self._mask = capacity - 1
        self._pos = 0
        self._read = 0           # the sidecar's read_pos, as last looked at (it only grows)
        self._doorbell = doorbell
        self._bell: socket.socket | None = None
        self.doorbells = 0

    @classmethod
    def create(cls, directory: str, client_id: str, *, capacity: int = DEFAULT_RING_BYTES,
               checksum: bool = CHECKSUM_BY_DEFAULT, suffix: str = "", prefault: bool = False,
               allocate: bool = True) -> RingWriter:
        """Make `directory/<client_id><suffix>.ring` and map it.

        The file is built under a hidden name and renamed into place, so the
        sidecar never adopts a half-made ring; an exclusive flock held until
        close (or death) tells the sidecar that the producer is alive.
        With `allocate`, the file's pages are allocated at once
        (`posix_fallocate`, ~0.25 ms per MiB here), so a full tmpfs is an
        error now, not a SIGBUS in a later emit; without it (a ring made
        inside an emit, after a fork), only the free space is checked.
        `prefault` also maps them into this process (another ~1 ms per MiB),
        so that no emit of the first lap pays a page fault (about 2 µs, once
        per 4 KiB written); for long-running loops.
        Raises TransportError if the directory is unusable.
        """
        if capacity < MIN_RING_BYTES or capacity > MAX_RING_BYTES or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two from {MIN_RING_BYTES} to {MAX_RING_BYTES}")
        name = f"{client_id}{suffix}{RING_SUFFIX}"
        path = os.path.join(directory, name)
        tmp = os.path.join(directory, f".{name}.tmp")
        try:
            make_private_dir(directory)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o660)
        except OSError as exc:
            raise TransportError(f"cannot create a ring in {directory}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o660)
            os.ftruncate(fd, FILE_HEADER + capacity)
            # On a full tmpfs a write into a sparse mapping kills the process
            # with SIGBUS: allocate every page now, or at least see that they fit.
            if allocate:
                os.posix_fallocate(fd, 0, FILE_HEADER + capacity)
            else:
                fs = os.fstatvfs(fd)
                if fs.f_bavail * fs.f_frsize < FILE_HEADER + capacity:
                    raise OSError(28, "no room for the ring")
            header = _FILE.pack(MAGIC, VERSION, FILE_CHECKSUM if checksum else 0, capacity, os.getpid(), 0,
                                time.time_ns())
            os.pwrite(fd, header, 0)
            os.pwrite(fd, client_id.encode()[:64], OFF_CLIENT_ID)
            # Ring the doorbell on the first record: the sidecar learns of the new ring at once.
            os.pwrite(fd, bytes([WAKE_RING]), OFF_WAKE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mm = mmap.mmap(fd, FILE_HEADER + capacity)
            if prefault:
                try:
                    mm.madvise(MADV_POPULATE_WRITE)
                except OSError:
                    pass  # before Linux 5.14: pages are mapped as they are first written
            os.rename(tmp, path)
        except OSError as exc:
            os.close(fd)
            _unlink(tmp)
            raise TransportError(f"cannot create ring {path}: {exc.strerror}") from None
        return cls(path, fd, mm, capacity, checksum, os.path.join(directory, DOORBELL))

    # -- the hot path ---------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Append one single-part record; raise QueueFull if it does not fit now.

        `frame` must be at most `max_body` bytes (Client checks)."""
        n = len(frame)
        rec = (n + 31) & -8  # record_bytes(n), inlined
        pos = self._pos
        end = pos + rec
        off = pos & self._mask
        if off + rec > self.capacity or end - self._read > self._usable:
            return self._send_slow([frame])
        # Everything in one C call (header, body, trailer last), then the
        # wake flag: a byte of memory this process maps anyway.
        (_packers.get(n) or packer(n))(self._mm, FILE_HEADER + off, n, 1, self._flags,
                                        self._crc(frame, end & 0xFFFFFFFF) if self._flags else 0, 0, frame, end)
        self._pos = end
        if self._mm[OFF_WAKE]:
            self._wake()

    def send_blobs(self, frame: bytes, blobs: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append one record holding the frame and its blobs."""
        self._send_slow([frame, *blobs])

    # -- slow paths -----------------------------------------------------------

    def send_last(self, frame: bytes) -> None:
        """The closing message: it may use the space kept for it."""
        self._send_slow([frame], usable=self.capacity)

    def _send_slow(self, parts: list, usable: int = 0) -> None:
        """Any record: wrap first if it does not fit before the end; parts
        are copied straight into the ring (no joined copy of a large blob)."""
        lengths = [memoryview(p).nbytes for p in parts]
        nparts = len(parts)
        n = sum(lengths) + (4 * nparts if nparts > 1 else 0)
        if n > self.max_body:
            raise QueueFull  # never fits; Client checks sizes first, so only a tiny ring gets here
        rec = record_bytes(n)
        pos = self._pos
        off = pos & self._mask
        skip = self.capacity - off if off + rec > self.capacity else 0
        usable = usable or self._usable
        if pos + skip + rec - self._read > usable:
            self._read = U64.unpack_from(self._mm, OFF_READ)[0]
            if pos + skip + rec - self._read > usable:
                if self.quarantined:  # full because nobody reads it any more
                    raise TransportError("the sidecar quarantined this ring")
                self._hint()
                raise QueueFull
        mm = self._mm
        if skip:
            if skip >= HEADER:  # a wrap record: a body of padding up to the end
                start = FILE_HEADER + off
                RECORD.pack_into(mm, start, skip - HEADER, 0, REC_WRAP, 0, 0)
                U64.pack_into(mm, start + skip - TRAILER, pos + skip)
            pos += skip
            off = 0
        start = FILE_HEADER + off
        at = start + RECORD.size
        crc = (pos + rec) & 0xFFFFFFFF  # the CRC starts from the record's end: no earlier lap's matches
        if nparts > 1:
            table = struct.pack(f"<{nparts}I", *lengths)
            mm[at:at + len(table)] = table
            at += len(table)
            if self._flags:
                crc = self._crc(table, crc)
        for part, length in zip(parts, lengths, strict=True):
            mm[at:at + length] = part
            at += length
            if self._flags:
                crc = self._crc(part, crc)
        RECORD.pack_into(mm, start, n, nparts, self._flags, crc if self._flags else 0, 0)
        U64.pack_into(mm, start + rec - TRAILER, pos + rec)  # the commit mark, last
        self._pos = pos + rec
        if mm[OFF_WAKE]:
            self._wake()

    def _hint(self) -> None:
        U64.pack_into(self._mm, OFF_HINT, self._pos)

    def _wake(self) -> None:
        # Cleared first, then the quarantine byte read: the sidecar sets that
        # byte before `wake`, so either order of the two writers is seen.
        self._mm[OFF_WAKE] = WAKE_NONE
        if self.quarantined:
            raise TransportError("the sidecar quarantined this ring")
        self._hint()
        self.ring_doorbell()

    def ring_doorbell(self) -> None:
        """One datagram to the sidecar's doorbell; nobody listening is fine."""
        self.doorbells += 1
        try:
            if self._bell is None:
                self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._bell.setblocking(False)
            self._bell.sendto(b"\1", self._doorbell)
        except OSError:
            pass  # no sidecar (it reads the ring when it starts), or its queue is full (it is awake)

    # -- lifecycle ------------------------------------------------------------

    @property
    def quarantined(self) -> bool:
        return self._mm[OFF_QUARANTINED] != 0

    def close(self, linger: float = 0.0, sent: int = 0) -> int:
        """Mark the ring closed, ring the doorbell and let go at once: what it
        holds is the sidecar's to drain, now or when it next starts
        (`linger` and `sent` are the Transport interface's; a ring never waits)."""
        self._hint()
        self._mm[OFF_CLOSED] = 1
        self.ring_doorbell()
        self.forget()
        return 0  # nothing dropped: the ring keeps it

    def after_fork(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Unmap and release the ring without writing (a forked child's copy:
        the flock the child inherited must not keep the parent's ring alive)."""
        self._mm.close()
        os.close(self._fd)
        if self._bell is not None:
            self._bell.close()
            self._bell = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# The reader's side of the contract: the sidecar imports these.

class RingCorrupt(Exception):
    """A ring that breaks the layout; the sidecar quarantines it."""


class FileHeader:
    """A ring file's fixed header, checked: every field of an untrusted file is bounded."""

    def __init__(self, raw: bytes, file_size: int) -> None:
        if len(raw) < 128:
            raise RingCorrupt(f"file of {file_size} bytes is shorter than a ring header")
        magic, version, flags, capacity, pid, _, created_ns = _FILE.unpack_from(raw, 0)
        if magic != MAGIC or version != VERSION:
            raise RingCorrupt("not a ring file of this version (bad magic)")
        if capacity < MIN_RING_BYTES or capacity > MAX_RING_BYTES or capacity & (capacity - 1):
            raise RingCorrupt(f"capacity {capacity} is not a power of two in range")
        if file_size != FILE_HEADER + capacity:
            raise RingCorrupt(f"file is {file_size} bytes, the header says {FILE_HEADER + capacity}")
        self.capacity: int = capacity
        self.checksum = bool(flags & FILE_CHECKSUM)
        self.pid: int = pid
        self.created_ns: int = created_ns
        self.client_id = raw[OFF_CLIENT_ID:OFF_READ].rstrip(b"\0").decode("utf-8", "replace")
