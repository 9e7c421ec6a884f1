"""The sidecar's end of the shared-memory rings (see `client/ring.py` for the layout).

    rings = Rings("/run/trading-sidecar/ingest.rings", metrics)
    rings.open()                         # lock and tidy the directory, bind the doorbell, adopt rings
    batch = rings.read(limit=4096)       # [frames, ...], not yet acknowledged (read_by_ring: with their rings)
    ...journal commits...
    rings.ack()                          # only now may the producers reuse that space
    rings.maintain(now)                  # adopt new rings, remove finished ones, set aside stuck ones

A ring is untrusted input: any process of the trading group can write one.
So it is never mapped here (a file truncated under a mapping would kill the
sidecar with SIGBUS); it is read with `pread`, every length and position is
bounded before use, and a ring that breaks the layout is moved to
`quarantine/`, counted and logged with its owner's pid, while the others go on.
What the sidecar tells a producer (version 2) goes into its own file,
``acks/<ring name>``, which it maps: nobody else can write or truncate it.

Nothing in the directory can stop a start: whatever stands where the
sidecar's own entries belong (``acks``, ``quarantine``, ``doorbell``) is
renamed aside, never followed, and `open()` goes on; ``quarantine/`` keeps
at most QUARANTINE_FILES entries and QUARANTINE_BYTES, oldest out first.
Another sidecar using the same directory (``ipc://X`` and ``ipc://X.sock``
share one) is refused by a lock (`sidecar.ops.lock`), which `open()` takes.

Descriptors are budgeted: at most `fd_budget` rings are held open (by
default half of RLIMIT_NOFILE at two descriptors a ring; the rest is for the
journal, sockets and HTTP), rings whose producer is alive first (one read of
/proc/locks tells which); an fd shortage defers a ring (counted in
`sidecar_rings_deferred_total`), never quarantines it. Rings with no
producer are drained and removed, which makes room for the next. A ring
that yielded nothing for RECENT_SECONDS is looked at again after
IDLE_PROBE_SECONDS, then less and less
often up to IDLE_PROBE_MAX while it stays empty (ARMED_PROBE_MAX once its
producer is asked to ring), and at once after a doorbell: idle rings cost
little (500 idle rings of live producers, here: about 2% of a core while
ingest sleeps, 8-18% while it polls for a busy one; 7% and 74% before).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import resource
import shutil
import socket
import stat
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from client import ring as layout
from client.ring import (
    FORMAT_BINARY_V1,
    HEADER,
    REC_CRC,
    REC_KNOWN,
    REC_WRAP,
    RECORD,
    TRAILER,
    U64,
    FileHeader,
    RingCorrupt,
    record_bytes,
)
from sidecar.ingest.decode import KINDS_JSON, binary_frame, client_id_json
from sidecar.ingest.inbox import WAIT_SECONDS, BlobRef, Inbox
from sidecar.ops import lock
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.rings")

CHUNK_BYTES = 1 << 20          # one pread reads at most this much of a ring at a time
PROBE_BYTES = 4096             # ...and this much of a ring that was empty last time
BATCH_BYTES = 64 << 20         # one batch takes at most this much from all rings together (and one record more)
MAX_POSITION = 1 << 62         # no honest ring gets near; a larger read position is corruption
STALL_SECONDS = 1.0            # unreadable data behind the producer's hint for this long is corruption
MAINTAIN_SECONDS = 0.5         # how often to look for new rings and finished ones
RECENT_SECONDS = 0.25          # a ring that yielded a record this recently is read at every ingest cycle
IDLE_PROBE_SECONDS = 0.002     # then, found empty, it is read again after this, doubling while it stays
IDLE_PROBE_MAX = 0.05          # empty, up to this; a doorbell: at once
ARMED_PROBE_MAX = 0.25         # ...and this once its producer will ring (the bound for a record and
                               # a new wake generation that cross, which no CPU's ordering rules out)
GRACE_SECONDS = 30.0           # a ring with no producer that yields nothing this long is set aside
CLEAN_SECONDS = 60.0           # how often quarantine/, acks/ and half-made rings are tidied
QUARANTINE_FILES = 64          # quarantine/ keeps at most this many entries...
QUARANTINE_BYTES = 1 << 30     # ...and bytes (tmpfs: memory), oldest out first
TOMBSTONE_SECONDS = 3600.0     # a quarantined ring's ack file stays this long for its producer to see
HALF_MADE_SECONDS = 60.0       # a hidden .tmp ring nobody holds, older than this, is a dead producer's
FD_RESERVE = 128               # descriptors never given to rings: journal, sockets, HTTP, metrics
FDS_PER_RING = 2               # the ring's own, and the dup that mmap keeps of its ack file's
QUARANTINE = "quarantine"
LOCK = ".lock"                 # in acks/, which only the sidecar writes
OWN = (layout.ACKS, QUARANTINE, layout.DOORBELL)
BODY = RECORD.size             # where a record's body starts
_ACK_ID = struct.Struct("<QQ")  # the ring an ack file belongs to: created_ns, inode
ACK_RING_ID = 40
_zlib_crc32 = zlib.crc32
_SHORT = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)  # out of descriptors or mappings: try later


class V1Control:
    """Where the sidecar writes for a version-1 ring: into the producer's own file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read_pos(self) -> int:
        raw = os.pread(self.fd, 8, layout.OFF_READ)
        return U64.unpack(raw)[0] if len(raw) == 8 else 0

    def ack(self, pos: int) -> None:
        os.pwrite(self.fd, U64.pack(pos), layout.OFF_READ)

    def arm(self) -> None:
        os.pwrite(self.fd, bytes([layout.WAKE_RING]), layout.OFF_WAKE)

    def quarantine(self) -> None:
        # The sticky byte first, then `wake`, which sends the producer to look.
        os.pwrite(self.fd, b"\1", layout.OFF_QUARANTINED)
        self.arm()

    def close(self, *, discard: bool = False) -> None:
        pass


class AckFile:
    """`acks/<ring name>` (version 2), mapped: the sidecar's writes cost no syscall."""

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        self.path = path
        self.mm = mm

    def read_pos(self) -> int:
        return int(U64.unpack_from(self.mm, layout.ACK_READ)[0])

    def ack(self, pos: int) -> None:
        U64.pack_into(self.mm, layout.ACK_READ, pos)

    def arm(self) -> None:
        self.mm[layout.ACK_WAKE] = (self.mm[layout.ACK_WAKE] + 1) & 0xFF  # a new generation to answer

    def quarantine(self) -> None:
        self.mm[layout.ACK_QUARANTINED] = 1  # before the generation: the producer reads them the other way round
        self.arm()

    def close(self, *, discard: bool = False) -> None:
        """Unmap; with `discard` (the ring is gone with its producer) remove the file too."""
        if not self.mm.closed:
            self.mm.close()
        if discard:
            _unlink(self.path)


Control = V1Control | AckFile


@dataclass
class Ring:
    """One adopted ring: where the journal has it up to (`acked`) and where
    reading has got to (`pos`, ahead of `acked` until the commit)."""

    path: str
    fd: int
    header: FileHeader
    acked: int
    largest: int = 0               # the longest body ingest takes: its own limits, not the file's say
    control: Control | None = None  # where acknowledgements go (None: nowhere, tests of reading alone)
    owner_uid: int = -1            # who wrote the ring: the only process that can (version 2)
    adopted_at: float = 0.0
    pos: int = 0
    stalled_since: float | None = None
    empty: bool = False
    frames_read: int = 0
    broken: str | None = None
    charged: int = 0               # record bytes the last read took from its budget
    armed: bool = False            # a wake generation is out, unanswered by a record since
    progress_at: float = 0.0       # when it last yielded a record (or was adopted)
    next_probe: float = 0.0        # an empty ring is read again from then on
    probe_every: float = IDLE_PROBE_SECONDS
    last_record: float = float("-inf")  # when a read last yielded a record (the reader's clock)
    inbox: Inbox | None = None     # where records with REC_PART_REFS find their blobs
    refs_read: list[str] = field(default_factory=list)  # inbox files read since the last ack
    blob_wait_since: float | None = None  # reading stopped at a record whose blob file is not there yet
    held_back: bool = False        # the last read stopped at a record over the batch's budget

    def __post_init__(self) -> None:
        self.pos = self.acked
        self.mask = self.header.capacity - 1
        cap_largest = layout.max_record_body(self.header.capacity)
        self.largest = min(self.largest, cap_largest) if self.largest else cap_largest
        self.progress_at = self.adopted_at
        self._cid_json = client_id_json(self.header.client_id)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def client_id(self) -> str:
        """The identity every frame read from this ring must claim (its header's, checked against its name)."""
        return self.header.client_id

    # -- reading --------------------------------------------------------------

    def read(self, limit: int, budget: int = BATCH_BYTES, *, within: bool = False) -> list[list[bytes]]:
        """Committed records from `pos` on, at most `limit` of them, each as its
        frames, taken while fewer than `budget` bytes are (so the last one may
        go past it, by one record at most; with `within`, not even that one:
        a batch that already holds records takes no record beyond its budget).

        Raises RingCorrupt at a broken record, but only once the good records
        before it have been returned (and so journaled). Whatever a file
        holds, the error is a RingCorrupt: nothing else escapes."""
        if self.broken:
            raise RingCorrupt(self.broken)
        out: list[list[bytes]] = []
        self.charged = 0
        self.held_back = False
        try:
            self._read_into(out, limit, budget, within)
        except Exception as exc:  # noqa: BLE001 -- struct.error, MemoryError, OverflowError...: all from the file
            why = str(exc) if isinstance(exc, RingCorrupt) else f"unreadable ({type(exc).__name__}: {exc})"
            if not out:
                raise RingCorrupt(why) from None
            self.broken = why
        self.empty = not out and not self.held_back  # held back by the budget: not idle, read it next batch
        if out:
            self.armed = False  # its producer wrote: a later sleep asks it again
        self.frames_read += len(out)
        return out

    def _read_into(self, out: list[list[bytes]], limit: int, budget: int, within: bool = False) -> None:
        cap = self.header.capacity
        chunk = PROBE_BYTES if self.empty else CHUNK_BYTES  # an idle ring costs a small read
        while len(out) < limit and self.charged < budget:
            if self.pos > MAX_POSITION:
                raise RingCorrupt(f"read position {self.pos} is past any real ring's")
            off = self.pos & self.mask
            tail = cap - off
            if tail < HEADER:   # too short for a header: the producer skipped it too
                self.pos += tail
                continue
            want = min(tail, chunk)
            chunk = CHUNK_BYTES
            first = os.pread(self.fd, want, layout.FILE_HEADER + off)
            if len(first) < want:
                raise RingCorrupt(f"file ends early (truncated to {layout.FILE_HEADER + off + len(first)} bytes)")
            # Scan no further than the records this read may take: a ring given a
            # share of a batch would otherwise walk (and walk again next time) a whole chunk.
            left = budget - self.charged
            committed, jump, big = self._scan(first, off, left, limit - len(out))
            if within and (big > left or committed > left):
                # Over what this batch has left: only records that fit (a large one waits for a batch it starts).
                self.held_back = True
                if big:
                    break
                committed, jump = self._fitting(first, left), 0  # the wrap, if any, lies beyond them
            if big:  # one record longer than a chunk: its trailer first, then the whole of it
                # (the length from a fresh look at its header: the first copy's may be stale,
                # and what stands there now may be a wrap)
                committed, wrap = self._committed_here()
                if wrap:
                    self.pos += committed
                    continue
            if committed:
                # The second copy, made after the commit marks were seen: its
                # bytes are all at least as new as the marks (module docstring).
                second = os.pread(self.fd, committed, layout.FILE_HEADER + off)
                if len(second) < committed:
                    raise RingCorrupt("file ends early (truncated)")
                before = len(out)
                got = self._parse(second, off, limit - len(out), out)
                self.pos += got
                self.charged += got  # record bytes: wrap padding is not charged
                if got < committed or len(out) == before:
                    break  # a record that does not verify yet, or the limit
            if jump:
                self.pos += jump
                continue
            # Go on only past a whole chunk (or one long record): having stopped
            # at an unwritten record (or its budget), reading again now would find the same.
            if not committed or (not big and committed + HEADER <= len(first)):
                break

    def _scan(self, buf: bytes, off: int, budget: int, records: int) -> tuple[int, int, int]:
        """(bytes of committed records, a wrap's jump to the lap's end, the length
        of one committed record too long for `buf`), from the start of `buf`,
        counting at most `records` records while fewer than `budget` bytes are."""
        cap = self.header.capacity
        largest = self.largest
        pos = self.pos
        i = 0
        n = len(buf)
        while n - i >= HEADER and i < budget and records > 0:
            size, _nparts, flags, _crc, _ = RECORD.unpack_from(buf, i)
            rec = record_bytes(size)
            if flags & REC_WRAP:  # padding up to the ring's end; may be longer than any record
                if off + i + rec != cap or not self._trailer_ok(buf, i, rec, pos + i):
                    break
                return i, rec, 0
            if size > largest or off + i + rec > cap or flags & ~REC_KNOWN:
                if off + i + rec <= cap and self._trailer_ok(buf, i, rec, pos + i):
                    # Committed, and not something a Client of this version writes.
                    # Set aside (counted), never read into memory.
                    if flags & ~REC_KNOWN:
                        raise RingCorrupt(f"record at {pos + i} has flags {flags:#x} this sidecar does not read")
                    raise RingCorrupt(f"record at {pos + i} of {size} bytes, over ingest's limit of {largest}")
                break  # not a header yet; if it stays so behind the producer's hint, see stalled()
            if i + rec > n:
                if i == 0:  # longer than the chunk: its trailer is checked by the caller's second read
                    return 0, 0, rec
                break
            if U64.unpack_from(buf, i + rec - TRAILER)[0] != pos + i + rec:
                break  # not written yet (or never will be: see stalled())
            i += rec
            records -= 1
        return i, 0, 0

    def _fitting(self, buf: bytes, left: int) -> int:
        """Bytes of the whole records at the start of `buf` (all committed) that fit in `left`."""
        i = 0
        while i + HEADER <= len(buf):
            rec = record_bytes(RECORD.unpack_from(buf, i)[0])
            if i + rec > left:
                break
            i += rec
        return i

    def _trailer_ok(self, buf: bytes, i: int, rec: int, pos: int) -> bool:
        """Whether the record at `buf[i]` (position `pos`) is committed, reading
        its trailer from the file when it lies beyond `buf`."""
        if i + rec <= len(buf):
            trailer = buf[i + rec - TRAILER:i + rec]
        else:
            trailer = os.pread(self.fd, TRAILER, layout.FILE_HEADER + (pos & self.mask) + rec - TRAILER)
        return len(trailer) == TRAILER and U64.unpack(trailer)[0] == pos + rec

    def _parse(self, buf: bytes, off: int, limit: int, out: list[list[bytes]]) -> int:
        """Append the records of `buf` to `out`; return the bytes consumed."""
        pos = self.pos
        checksum = self.header.checksum
        i = 0
        n = len(buf)
        while i < n and limit:
            if n - i < HEADER:
                raise RingCorrupt(f"record at {pos + i} changed under the reader")
            size, nparts, flags, crc, _ = RECORD.unpack_from(buf, i)
            rec = record_bytes(size)
            if size > self.largest or i + rec > n or U64.unpack_from(buf, i + rec - TRAILER)[0] != pos + i + rec:
                if checksum:
                    break  # on a weakly ordered CPU the first copy may have seen a stale header: again
                raise RingCorrupt(f"record at {pos + i} changed under the reader")
            if flags & REC_WRAP:
                raise RingCorrupt(f"wrap record at {pos + i} in the middle of the ring")
            if flags & ~REC_KNOWN:
                if checksum:
                    break
                raise RingCorrupt(f"record at {pos + i} has flags {flags:#x} this sidecar does not read")
            body = buf[i + BODY:i + BODY + size]
            if checksum or flags & REC_CRC:
                if not flags & REC_CRC:
                    raise RingCorrupt(f"record at {pos + i} lacks the checksum its ring promises")
                # Started from the record's end: an earlier lap's record at this place cannot pass.
                if _zlib_crc32(body, (pos + i + rec) & 0xFFFFFFFF) != crc:
                    break  # not visible in full yet on a weakly ordered CPU; see stalled()
            if flags & FORMAT_BINARY_V1:  # the compiled client's record: as the JSON envelope (decode.py)
                if nparts != 1:
                    raise RingCorrupt(f"binary record at {pos + i} has {nparts} parts")
                out.append([binary_frame(body, self._cid_json, KINDS_JSON)])
            else:
                parts = _split(body, nparts, pos + i, refs=bool(flags & layout.REC_PART_REFS))
                if flags & layout.REC_PART_REFS and not self._resolve(parts, pos + i):
                    break  # its blob is still being written: this record, and the ring's order, wait
                out.append(parts)
            limit -= 1
            i += rec
        return i

    def _resolve(self, parts: list, pos: int) -> bool:
        """Put a BlobRef in place of each reference part; False while a file
        is not there yet and the producer lives (for at most inbox.WAIT_SECONDS)."""
        inbox = self.inbox
        for k in range(1, len(parts)):
            if isinstance(parts[k], memoryview):  # marked by _split: a reference
                raw = parts[k].tobytes()
                if inbox is None or not inbox.ok:
                    parts[k] = BlobRef("", raw[:80].decode("ascii", "replace"), error="blob_no_inbox")
                    continue
                ref = inbox.resolve(raw, self.client_id, self.owner_uid, alive=self._worth_waiting)
                if ref is None:
                    if self.blob_wait_since is None:
                        self.blob_wait_since = time.monotonic()
                    return False
                parts[k] = ref
        self.blob_wait_since = None
        self.refs_read += [p.name for p in parts[1:] if isinstance(p, BlobRef) and p.path]
        return True

    def _worth_waiting(self) -> bool:
        """Whether a blob file not there yet may still come: its producer lives, and not for too long."""
        since = self.blob_wait_since
        return (since is None or time.monotonic() - since < WAIT_SECONDS) and self.producer_alive()

    # -- state shared with the producer ---------------------------------------

    def ack(self) -> None:
        """Tell the producer the journal holds everything before `pos`; the
        inbox files of what it holds are the journal's now, and go."""
        if self.pos != self.acked:
            if self.control is not None:
                self.control.ack(self.pos)
            self.acked = self.pos
        if self.refs_read and self.inbox is not None:
            self.inbox.consumed(self.refs_read)
            self.refs_read = []

    def arm(self) -> None:
        """Ask the producer for a doorbell on its next record (once until it writes one)."""
        if not self.armed and self.control is not None:
            self.control.arm()
            self.armed = True

    def hint(self) -> int:
        raw = os.pread(self.fd, 8, layout.OFF_HINT)
        return U64.unpack(raw)[0] if len(raw) == 8 else 0

    def producer_alive(self) -> bool:
        """The producer holds an exclusive flock for as long as it lives."""
        return _locked(self.fd)

    def _committed_here(self) -> tuple[int, bool]:
        """(length, is a wrap) of the committed record at `pos`, or (0, False): two small reads."""
        off = self.pos & self.mask
        raw = os.pread(self.fd, RECORD.size, layout.FILE_HEADER + off)
        if len(raw) < RECORD.size:
            raise RingCorrupt("file ends early (truncated)")
        size, _, flags, _, _ = RECORD.unpack(raw)
        rec = record_bytes(size)
        wrap = bool(flags & REC_WRAP)
        if (off + rec != self.header.capacity) if wrap else (off + rec > self.header.capacity):
            return 0, False
        if not wrap and (size > self.largest or flags & ~REC_KNOWN):
            if self._trailer_ok(b"", 0, rec, self.pos):
                raise RingCorrupt(f"record at {self.pos} of {size} bytes (flags {flags:#x}) is not one ingest takes")
            return 0, False
        return (rec, wrap) if self._trailer_ok(b"", 0, rec, self.pos) else (0, False)

    def has_record(self) -> bool:
        """Whether a committed record (or wrap) waits at `pos`, without reading it."""
        tail = self.header.capacity - (self.pos & self.mask)
        return tail < HEADER or bool(self._committed_here()[0])

    def stalled(self, now: float) -> bool:
        """True once data the producer says it wrote has stayed unreadable
        for STALL_SECONDS: a broken record, not one still becoming visible."""
        if not self.empty or self.blob_wait_since is not None or self.hint() <= self.pos:
            self.stalled_since = None
            return False
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since >= STALL_SECONDS

    def close(self, *, discard: bool = False) -> None:
        os.close(self.fd)
        if self.control is not None:
            self.control.close(discard=discard)


def _split(body: bytes, nparts: int, pos: int, *, refs: bool = False) -> list:
    """A record's parts; with `refs`, each reference part is a memoryview of
    the file name (Ring._resolve replaces it), every other part bytes."""
    if nparts == 1 and not refs:
        return [body]
    if not 1 < nparts <= layout.MAX_PARTS or len(body) < (5 if refs else 4) * nparts:
        raise RingCorrupt(f"record at {pos} has {nparts} parts")
    lengths = struct.unpack_from(f"<{nparts}I", body, 0)
    i = 4 * nparts
    kinds = body[i:i + nparts] if refs else bytes(nparts)
    i += len(kinds) if refs else 0
    if i + sum(lengths) != len(body):
        raise RingCorrupt(f"record at {pos}: part lengths do not add up to its size")
    if kinds[0] != layout.PART_INLINE or any(k not in (layout.PART_INLINE, layout.PART_REF) for k in kinds):
        raise RingCorrupt(f"record at {pos}: part kinds {kinds.hex()} (the frame is inline; 0 or 1)")
    parts: list = []
    for n, kind in zip(lengths, kinds, strict=True):
        parts.append(memoryview(body)[i:i + n] if kind == layout.PART_REF else body[i:i + n])
        i += n
    return parts


def _locked(fd: int) -> bool:
    """Whether another open file holds an flock on `fd`'s file (its producer lives)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fd_budget() -> int:
    """How many rings may be held open: half the soft RLIMIT_NOFILE, with
    FD_RESERVE left for everything else, at two descriptors a ring (its
    file, and its mapped ack file: Python's mmap keeps a dup), but at least 8."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(8, min(soft - FD_RESERVE, soft // 2) // FDS_PER_RING)


def flocked_inodes() -> set[int] | None:
    """Inodes some process holds an flock on (/proc/locks), or None if unknown.

    One read tells which of thousands of rings have a live producer,
    without a descriptor for each."""
    try:
        with open("/proc/locks", "rb") as f:
            text = f.read(8 << 20)
    except OSError:
        return None
    inodes = set()
    for line in text.splitlines():
        fields = line.split()
        if b"FLOCK" in fields and b"->" not in fields:
            for f_ in fields:
                if f_.count(b":") == 2:
                    try:
                        inodes.add(int(f_.rsplit(b":", 1)[1]))
                    except ValueError:
                        pass
                    break
    return inodes


@dataclass
class Rings:
    """Every ring in one directory, and the doorbell their producers ring.

    `fd_budget` (0: from RLIMIT_NOFILE), `batch_bytes` and `clock` are
    there for tests; the sidecar leaves them be."""

    directory: str
    metrics: Metrics
    max_record: int = 0            # the longest record body ingest accepts (0: the ring's own bound)
    fd_budget: int = 0
    batch_bytes: int = BATCH_BYTES
    clock: Callable[[], float] = time.monotonic
    inbox: Inbox | None = None     # blobs that records refer to (client.blobs); None: such records are rejected
    rings: dict[str, Ring] = field(default_factory=dict)
    doorbell: socket.socket | None = None
    ignored: set[str] = field(default_factory=set)
    _last_maintain: float = float("-inf")
    _last_clean: float = float("-inf")
    _read: list[Ring] = field(default_factory=list)
    _lock: lock.Held | None = None
    _probe_all: bool = True        # the next read looks at every ring, empty or not
    _turn: int = 0                 # which ring a batch starts with: each gets to go first
    _now: float = 0.0
    _in_quarantine: int = 0        # entries in quarantine/ (counted at the last tidy, plus those added since)
    _deferred_logged: float = float("-inf")
    _dir_mtime: int = -1           # the directory's mtime when a doorbell last looked

    def open(self) -> None:
        """Lock the directory (raises `lock.Locked` naming the other sidecar's
        pid), tidy it, bind the doorbell and adopt the rings. Whatever stands
        in the way inside the directory is moved aside, and open() goes on."""
        self._now = self.clock()
        self.fd_budget = self.fd_budget or fd_budget()
        self._make_dir()
        acks = self._own_dir(layout.ACKS, layout.ACKS_DIR_MODE)
        self._lock = lock.acquire(os.path.join(acks, LOCK), f"ring directory {self.directory}")
        try:
            self._own_dir(QUARANTINE, 0o700)
        except OSError as exc:  # rings that break the layout are then left where they are, and ignored
            log.error("no quarantine/ in %s (%s): broken rings will be ignored, not moved", self.directory, exc)
        self._bind_doorbell()
        self._clean(self._now)
        self.scan()

    def close(self) -> None:
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the directory ----------------------------------------------------------

    def _make_dir(self) -> None:
        try:
            os.mkdir(self.directory, layout.RING_DIR_MODE)
        except FileExistsError:
            pass
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory (nor followed if a symlink)", self.directory)
        if st.st_uid == os.geteuid():
            os.chmod(self.directory, layout.RING_DIR_MODE)  # whatever the umask was
        else:
            log.warning("the ring directory %s belongs to uid %d, not to this sidecar: producers are not "
                        "protected from each other until it is the sidecar's (chown it)", self.directory, st.st_uid)

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
        self._count("in_the_way")
        log.warning("moved aside a %s (uid %d) that stood where the sidecar's %r belongs", _kind(st.st_mode),
                    st.st_uid, name)

    def _bind_doorbell(self) -> None:
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
            return
        bell.setblocking(False)
        os.chmod(path, 0o660)  # the trading group may ring it (nobody can swap it: the directory is sticky)
        self.doorbell = bell

    # -- the ingest thread's calls --------------------------------------------

    def read(self, limit: int) -> list[list[bytes]]:
        """`read_by_ring`'s messages, one list (each ring's in its order)."""
        return [m for _ring, messages in self.read_by_ring(limit) for m in messages]

    def read_by_ring(self, limit: int) -> list[tuple[Ring, list[list[bytes]]]]:
        """Up to `limit` messages from all rings, with the ring each came from
        (`ring.client_id` is the identity its frames must claim), fairly: no
        ring starves the others; `batch_bytes` at most in all, and one record more.

        Each pass gives every ring still holding records an equal share of
        what is left; the room a nearly idle ring leaves goes to the busy
        ones in the next pass, so several producers still fill a batch (a
        half-empty batch costs a transaction, and its fsync, all the same).
        A ring found empty is looked at again after a while (module docstring),
        or after a doorbell.
        """
        out: list[list[bytes]] = []
        by_ring: dict[str, tuple[Ring, list[list[bytes]]]] = {}
        now = self.clock()
        probe_all, self._probe_all = self._probe_all, False
        order = list(self.rings.values())
        if order:
            k = self._turn % len(order)
            order = order[k:] + order[:k]
            self._turn += 1
        active = [r for r in order if probe_all or not r.empty or now >= r.next_probe]
        bytes_left = self.batch_bytes
        while active and len(out) < limit and bytes_left > 0:
            share = max(1, (limit - len(out)) // len(active))
            busy = []
            for r in active:
                if len(out) >= limit or bytes_left <= 0:
                    break
                # Never more than what the batch has left: the one record that
                # crosses it is the batch's only excess.
                budget = max(1, min(bytes_left, self.batch_bytes // len(active)))
                before = r.pos
                asked = min(share, limit - len(out))
                try:
                    # The batch's byte budget spans all rings: once it holds records, no ring adds
                    # one beyond what is left (one large record per batch, whoever starts it).
                    got = r.read(asked, budget, within=bytes_left < self.batch_bytes)
                except RingCorrupt as exc:
                    self.quarantine(r, str(exc))
                    continue
                out += got
                bytes_left -= r.charged
                if got:
                    by_ring.setdefault(r.path, (r, []))[1].extend(got)
                    r.progress_at = self._now
                    r.probe_every = IDLE_PROBE_SECONDS
                    r.last_record = now
                elif r.empty and now - r.last_record >= RECENT_SECONDS:  # less and less often while idle
                    r.next_probe = now + r.probe_every
                    r.probe_every = min(2 * r.probe_every, ARMED_PROBE_MAX if r.armed else IDLE_PROBE_MAX)
                # Acknowledged even if it only passed a wrap: else a drained ring
                # would never look drained (pos == acked) and never be removed.
                if r.pos != before and r not in self._read:
                    self._read.append(r)
                if len(got) >= asked or r.charged >= budget:  # stopped by its share, not for want of records
                    busy.append(r)
            active = busy
        return list(by_ring.values())

    def ack(self) -> None:
        """After the journal committed what every `read` since the last ack returned."""
        for r in self._read:
            if r.path not in self.rings:
                continue  # quarantined since it was read
            try:
                r.ack()
            except Exception as exc:  # noqa: BLE001 - whatever the file did, it is that ring's problem
                self.quarantine(r, f"cannot write its read position: {exc}")
        self._read = []

    def arm(self) -> None:
        """Going to sleep: ask every producer for a doorbell on its next record."""
        for r in list(self.rings.values()):
            try:
                if not r.armed:
                    r.arm()
                    # The read after this looks at it once more: a record written
                    # before its producer saw the new generation rings no bell.
                    r.next_probe = 0.0
            except OSError as exc:
                self.quarantine(r, f"cannot write its wake flag: {exc}")

    def drain_doorbell(self) -> int:
        n = 0
        while self.doorbell is not None and n < 10_000:  # bounded: anyone in the group can ring
            try:
                self.doorbell.recv(64)
                n += 1
            except BlockingIOError:
                break
        if n:
            self.metrics.ring_doorbells.inc(n)
            self._probe_all = True  # a doorbell does not say whose: look at every ring
            if self._dir_changed():  # a new ring's first record rings too; else no listing (a lone event's wake)
                self.scan()
        return n

    def _dir_changed(self) -> bool:
        """Whether the directory changed (a ring made or removed) since last asked; a
        change within the clock's granularity is left to `maintain`, within MAINTAIN_SECONDS."""
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            return True
        changed, self._dir_mtime = mtime != self._dir_mtime, mtime
        return changed

    def maintain(self, now: float, *, force: bool = False) -> None:
        """Adopt new rings; remove the drained ones whose producer is gone;
        quarantine the ones whose data stays unreadable, and those with no
        producer that yield nothing for GRACE_SECONDS; tidy the directory."""
        if not force and now - self._last_maintain < MAINTAIN_SECONDS:
            return
        self._last_maintain = self._now = now
        if force:
            self._probe_all = True
        self.scan()
        for r in list(self.rings.values()):
            try:
                if r.stalled(now):
                    self.quarantine(r, f"no readable record at {r.pos} but the producer wrote up to {r.hint()}",
                                    reason="stalled")
                elif r.pos == r.acked and not r.producer_alive():
                    if r.empty:
                        # Looked at once more: it may have written between our last read and its end.
                        if r.has_record():
                            r.empty = False
                        elif r.hint() > r.pos:  # it said it wrote more, and nobody is left to finish it
                            self.quarantine(r, f"no producer, and no readable record at {r.pos} of the "
                                               f"{r.hint()} bytes it wrote", reason="unreadable")
                        else:
                            self._remove(r)
                    elif now - r.progress_at >= GRACE_SECONDS:
                        self.quarantine(r, f"no producer, and nothing readable for {GRACE_SECONDS:.0f} s",
                                        reason="abandoned")
            except Exception as exc:  # noqa: BLE001 - a file's content, whatever it is, costs only its ring
                self.quarantine(r, str(exc))
        if now - self._last_clean >= CLEAN_SECONDS:
            self._clean(now)
        self.metrics.rings.set(len(self.rings))
        self.metrics.ring_shm_bytes.set(self.shm_bytes())

    def shm_bytes(self) -> int:
        """The memory the rings being read hold (allocated bytes of their files: tmpfs is memory)."""
        total = 0
        for r in self.rings.values():
            try:
                total += os.fstat(r.fd).st_blocks * 512
            except OSError:
                pass
        return total

    # -- adoption, removal, quarantine -----------------------------------------

    def scan(self) -> None:
        """Adopt the rings not read yet, as many as the fd budget allows, live producers' first."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.error("cannot list the ring directory %s: %s", self.directory, exc.strerror)
            return
        waiting = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(layout.RING_SUFFIX) or entry.path in self.rings \
                    or entry.path in self.ignored:
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not regular:  # a directory, symlink, FIFO, socket: moved aside, never opened
                self._quarantine_path(entry.path, "not a regular file", pid=None, reason="not_a_file")
                continue
            waiting.append(entry)
        room = self.fd_budget - len(self.rings)
        if len(waiting) > min(room, 8):  # more than a few: descriptors may run out before the budget does
            live = flocked_inodes()
            if live:
                waiting.sort(key=lambda e: e.inode() not in live)  # stable: live producers' rings first
        for entry in waiting[:max(room, 0)]:
            if not self._adopt(entry.path, entry.name):
                break  # out of descriptors: the rest wait for the next scan
        if len(waiting) > room:
            self._defer("fd_budget", len(waiting) - max(room, 0))

    def _adopt(self, path: str, name: str) -> bool:
        """Open, check and start reading one ring; False if descriptors ran short (try later)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # gone since the listing
        except OSError as exc:
            if exc.errno in _SHORT:
                self._defer("fd_shortage", 1)
                return False
            self._quarantine_path(path, f"cannot open it: {exc.strerror}", pid=None, reason="unopenable")
            return True
        control: Control | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingCorrupt("not a regular file")
            header = FileHeader(os.pread(fd, 128, 0), st.st_size, name)
            if header.version == layout.VERSION_V1:
                fd = _reopen_rw(fd)  # the sidecar writes a version-1 ring's read position into it
                control = V1Control(fd)
            else:
                control = self._ack_file(name, header.created_ns, st.st_ino)
            acked = control.read_pos()
            if acked & 7 or acked > MAX_POSITION:
                raise RingCorrupt(f"read position {acked} is not 8-aligned or is past any real ring's")
        except OSError as exc:
            os.close(fd)
            if control is not None:
                control.close()
            if exc.errno in _SHORT:
                self._defer("fd_shortage", 1)
                return False
            self._quarantine_path(path, f"cannot read it: {exc.strerror}", pid=None, reason="unopenable")
            return True
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it goes aside
            os.close(fd)
            if control is not None:
                control.close()
            self._tell_producer(path, name)
            self._quarantine_path(path, str(exc), pid=None)
            return True
        ring = Ring(path, fd, header, acked, largest=self.max_record, control=control, owner_uid=st.st_uid,
                    adopted_at=self._now, inbox=self.inbox)
        self.rings[path] = ring
        log.info("adopted ring %r (client %s, pid %d, uid %d, version %d, %d bytes, read from %d)", ring.name,
                 header.client_id, header.pid, st.st_uid, header.version, header.capacity, acked)
        return True

    def _ack_file(self, name: str, created_ns: int, inode: int, *, quarantined: bool = False) -> AckFile:
        """Map `acks/<name>`: the one a ring had before this start, or a new one.

        An ack file of another ring of that name (or a tombstone) is
        replaced by a new file, never rewritten: a producer mapping the
        old one keeps reading what was meant for it."""
        path = os.path.join(self.directory, layout.ACKS, name)
        ident = _ACK_ID.pack(created_ns, inode)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, layout.ACK_FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            if size and (quarantined or size != layout.ACK_BYTES
                         or os.pread(fd, len(layout.ACK_MAGIC), 0) != layout.ACK_MAGIC
                         or os.pread(fd, _ACK_ID.size, ACK_RING_ID) != ident
                         or os.pread(fd, 1, layout.ACK_QUARANTINED) != b"\0"):
                os.unlink(path)
                os.close(fd)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             layout.ACK_FILE_MODE)
                size = 0
            if not size:
                os.ftruncate(fd, layout.ACK_BYTES)
                os.pwrite(fd, U64.pack(time.time_ns()) + ident, layout.ACK_ADOPTED)
                if quarantined:
                    os.pwrite(fd, bytes([layout.WAKE_RING, 1]), layout.ACK_WAKE)
                os.pwrite(fd, layout._ACK.pack(layout.ACK_MAGIC, layout.VERSION, 0), 0)  # last: then it is whole
            os.fchmod(fd, layout.ACK_FILE_MODE)
            mm = mmap.mmap(fd, layout.ACK_BYTES)
        finally:
            os.close(fd)
        return AckFile(path, mm)

    def _tell_producer(self, path: str, name: str) -> None:
        """A ring set aside at adoption: tell its producer to make a new one, if it can hear."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                magic = os.pread(fd, len(layout.MAGIC), 0)
                if magic == layout.MAGIC_V1:
                    fd = _reopen_rw(fd)
                    V1Control(fd).quarantine()
            finally:
                os.close(fd)
            if magic != layout.MAGIC or not layout.valid_client_id(name[: -len(layout.RING_SUFFIX)]):
                return
            ack = os.path.join(self.directory, layout.ACKS, name)
            try:  # the ack file its producer may already map: marked in place
                afd = os.open(ack, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                self._ack_file(name, 0, 0, quarantined=True).close()
                return
            try:
                if os.fstat(afd).st_size == layout.ACK_BYTES:
                    marked = AckFile(ack, mmap.mmap(afd, layout.ACK_BYTES))
                    marked.quarantine()
                    marked.close()
            finally:
                os.close(afd)
        except OSError:
            pass

    def _remove(self, r: Ring) -> None:
        del self.rings[r.path]
        _unlink(r.path)
        r.close(discard=True)  # its ack file too: the producer is gone
        log.info("removed ring %r: its producer (pid %d) is gone and it is drained (%d messages read)",
                 r.name, r.header.pid, r.frames_read)

    def quarantine(self, r: Ring, why: str, *, reason: str = "corrupt") -> None:
        self.rings.pop(r.path, None)
        if r in self._read:
            self._read.remove(r)
        try:
            if r.control is not None:
                r.control.quarantine()  # its producer starts a new ring (client/ring.py)
        except (OSError, ValueError):
            pass
        r.close()  # a version-2 ack file stays, as a tombstone its producer can read
        self._quarantine_path(r.path, why, pid=r.header.pid, client=r.header.client_id, reason=reason)

    def _quarantine_path(self, path: str, why: str, *, pid: int | None, client: str = "?",
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
        self._count(reason)
        log.error("quarantined ring %r of client %s (pid %s): %s; moved to %s", os.path.basename(path), client,
                  pid if pid is not None else "unknown", why, dest)
        if self._in_quarantine > QUARANTINE_FILES:  # a flood of them: keep quarantine/ bounded now
            self._clean_quarantine()

    def _count(self, reason: str) -> None:
        self.metrics.rings_quarantined.labels(reason=reason).inc()

    def _defer(self, reason: str, n: int) -> None:
        self.metrics.rings_deferred.labels(reason=reason).inc(n)
        if self._now - self._deferred_logged >= CLEAN_SECONDS:  # logged once a minute at most
            self._deferred_logged = self._now
            log.warning("%d ring(s) in %s wait for a descriptor (%s; %d rings held, budget %d): they are read "
                        "as others finish", n, self.directory, reason, len(self.rings), self.fd_budget)

    # -- tidying ------------------------------------------------------------------

    def _clean(self, now: float) -> None:
        """Keep quarantine/ bounded (oldest out first), and remove what was moved
        aside, half-made rings of dead producers and ack files of rings gone."""
        self._last_clean = now
        try:
            self._clean_quarantine()
            self._clean_top()
            self._clean_acks()
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
        while held and (len(held) > QUARANTINE_FILES or total > QUARANTINE_BYTES):
            _, path, size, is_dir = held.pop(0)
            _delete(path, is_dir)
            total -= size
        self._in_quarantine = len(held)

    def _clean_top(self) -> None:
        for e in os.scandir(self.directory):
            if e.name.startswith(".aside."):
                _delete(e.path, e.is_dir(follow_symlinks=False))
            elif e.name.startswith(".") and e.name.endswith(layout.RING_SUFFIX + ".tmp"):
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > HALF_MADE_SECONDS \
                        and not _held_by_other(e.path):
                    _unlink(e.path)  # a producer died making it; nobody else removes it

    def _clean_acks(self) -> None:
        acks = os.path.join(self.directory, layout.ACKS)
        for e in os.scandir(acks):
            if not e.name.endswith(layout.RING_SUFFIX) or os.path.join(self.directory, e.name) in self.rings:
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
                _unlink(e.path)


def _reopen_rw(fd: int) -> int:
    """The same file, opened again for writing (not by its name, which may have changed)."""
    rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    os.close(fd)
    return rw


def _held_by_other(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True  # cannot tell: leave it
    try:
        return _locked(fd)
    finally:
        os.close(fd)


def _delete(path: str, is_dir: bool) -> None:
    """Remove a file or a whole tree, never following a symlink out of it."""
    if is_dir:
        shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: symlinks inside are not followed
    else:
        _unlink(path)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISREG, "file")):
        if test(mode):
            return kind
    return "special file"
