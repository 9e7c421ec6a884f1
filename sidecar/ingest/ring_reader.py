"""One ring's reader: its records scanned, checked and parsed, read with `pread` (see `client/ring.py`).

    ring = Ring(path, fd, FileHeader(...), acked, control=open_ack_file(...), owner_uid=st.st_uid)
    messages = ring.read(limit=4096)     # [RingMessage, ...] from `pos` on; RingCorrupt at a broken record
    ...journal commits...
    ring.ack()                           # tells the producer; `acked` catches up with `pos`

A ring is untrusted input, so it is never mapped (a file truncated under a
mapping would kill the sidecar with SIGBUS): every length and position is
bounded before use, and whatever a file holds, reading it raises nothing but
`RingCorrupt`. `Rings` (rings.py) reads many of these, fairly, in batches.

Each message is a `RingMessage` (decode.py) tagged with the ring's client id;
a binary v1 record's stays its body, with the ring's decode context, until
ingest takes it (`RingMessage.settle`). Where `client._fastemit` is built,
the loops over the common records run in C (`scan_run`, `parse_run`): each
stops at the first record its Python loop would do anything with but take,
and the Python loop goes on from there, so both read every file alike
(bench/fuzz_decode.py --records compares them).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from client import ring as layout
from client.compiled import fastemit
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
from sidecar.ingest.decode import RingMessage, ring_context
from sidecar.ingest.inbox import Inbox
from sidecar.ingest.ring_blobs import RingBlobs
from sidecar.ingest.ring_control import Control
from sidecar.ingest.ring_files import locked

CHUNK_BYTES = 1 << 20          # one pread reads at most this much of a ring at a time
PROBE_BYTES = 4096             # ...and this much of a ring that was empty last time
BATCH_BYTES = 64 << 20         # one batch takes at most this much from all rings together (and one record more)
MAX_POSITION = 1 << 62         # no honest ring gets near; a larger read position is corruption
STALL_SECONDS = 1.0            # unreadable data behind the producer's hint for this long is corruption
IDLE_PROBE_SECONDS = 0.002     # an empty ring is read again after this at first (rings.py: then less often)
BODY = RECORD.size             # where a record's body starts
RECORD_SLACK = 64              # added to the mean record of a read for the next one's estimate
_zlib_crc32 = zlib.crc32
# The compiled loops over the common records (client/_fastemit.c), or None: Python's loops alone.
# Each stops where the Python loop would do anything but take the record, so both read alike.
_scan_run = fastemit.scan_run if fastemit is not None else None
_parse_run = fastemit.parse_run if fastemit is not None else None


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
    progress_at: float = 0.0       # when it last yielded a record (or was first read)
    first_read: float | None = None  # when it was first read (None: not yet; nothing removes it before)
    next_probe: float = 0.0        # an empty ring is read again from then on
    probe_every: float = IDLE_PROBE_SECONDS
    last_record: float = float("-inf")  # when a read last yielded a record (the reader's clock)
    inbox: Inbox | None = None     # where records with REC_PART_REFS find their blobs
    held_back: bool = False        # the last read stopped at a record over the batch's budget
    record_guess: int = 512        # bytes a record takes here, about: the last read's mean, and some

    def __post_init__(self) -> None:
        self.pos = self.acked
        self.mask = self.header.capacity - 1
        cap_largest = layout.max_record_body(self.header.capacity)
        self.largest = min(self.largest, cap_largest) if self.largest else cap_largest
        self.progress_at = self.adopted_at
        self._ctx = ring_context(self.header.client_id)
        self.blobs = RingBlobs(self.inbox, self.header.client_id, self.owner_uid, alive=self.producer_alive)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def client_id(self) -> str:
        """The identity every frame read from this ring must claim (its header's, checked against its name)."""
        return self.header.client_id

    # -- reading --------------------------------------------------------------

    def read(self, limit: int, budget: int = BATCH_BYTES, *, within: bool = False) -> list[RingMessage]:
        """Committed records from `pos` on, at most `limit` of them, each as its
        frames (a `RingMessage` of this ring's client id), taken while fewer
        than `budget` bytes are (so the last one may
        go past it, by one record at most; with `within`, not even that one:
        a batch that already holds records takes no record beyond its budget).

        Raises RingCorrupt at a broken record, but only once the good records
        before it have been returned (and so journaled). Whatever a file
        holds, the error is a RingCorrupt: nothing else escapes."""
        if self.broken:
            raise RingCorrupt(self.broken)
        out: list[RingMessage] = []
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

    def _read_into(self, out: list[RingMessage], limit: int, budget: int, within: bool = False) -> None:
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
            # No more than the records this read may take, by the size of the last ones (and
            # again if they were larger): four rings, each given a quarter of a batch, copied a
            # whole chunk each, four times what the batch took (issue 20: four producers cost
            # more an event than one).
            want = min(tail, chunk, max(PROBE_BYTES, (limit - len(out)) * self.record_guess))
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
                # bytes are all at least as new as the marks (client/ring.py's docstring).
                second = os.pread(self.fd, committed, layout.FILE_HEADER + off)
                if len(second) < committed:
                    raise RingCorrupt("file ends early (truncated)")
                before = len(out)
                got = self._parse(second, off, limit - len(out), out)
                if len(out) > before:
                    self.record_guess = got // (len(out) - before) + RECORD_SLACK
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
            if _scan_run is not None:  # C walks the common records; the one it stops at is this loop's
                i, records = _scan_run(buf, i, pos, off, cap, largest, budget, records)
                if not (n - i >= HEADER and i < budget and records > 0):
                    break
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

    def _parse(self, buf: bytes, off: int, limit: int, out: list[RingMessage]) -> int:
        """Append the records of `buf` to `out`; return the bytes consumed."""
        pos = self.pos
        checksum = self.header.checksum
        ctx, cid = self._ctx, self.header.client_id
        parse_run = None if checksum else _parse_run
        i = 0
        n = len(buf)
        while i < n and limit:
            if parse_run is not None:  # C takes the binary records; the one it stops at is this loop's
                at = i
                i, limit = parse_run(buf, i, pos, self.largest, limit, out, cid, ctx, RingMessage)
                if not (i < n and limit):
                    break
                if i == at:  # not one binary record: a pure-Python producer's ring, most likely; not again
                    parse_run = None
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
            if flags & FORMAT_BINARY_V1:  # the compiled client's record: ingest makes its envelope (decode.py)
                if nparts != 1:
                    raise RingCorrupt(f"binary record at {pos + i} has {nparts} parts")
                out.append(RingMessage([body], cid, ctx))
            else:
                parts = split_parts(body, nparts, pos + i, refs=bool(flags & layout.REC_PART_REFS))
                if flags & layout.REC_PART_REFS and not self.blobs.resolve(parts, pos + i):
                    break  # its blob is still being written: this record, and the ring's order, wait
                out.append(RingMessage(parts, cid))
            limit -= 1
            i += rec
        return i

    # -- state shared with the producer ---------------------------------------

    def ack(self) -> None:
        """Tell the producer the journal holds everything before `pos`; the
        inbox files of what it holds are the journal's now, and go."""
        if self.pos != self.acked:
            if self.control is not None:
                self.control.ack(self.pos)
            self.acked = self.pos
        self.blobs.consumed()

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
        return locked(self.fd)

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

    def stalled(self, now: float, after: float = STALL_SECONDS) -> bool:
        """True once data the producer says it wrote has stayed unreadable
        for `after` seconds: a broken record, not one still becoming visible."""
        if not self.empty or self.blobs.wait_since is not None or self.hint() <= self.pos:
            self.stalled_since = None
            return False
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since >= after

    def close(self, *, discard: bool = False) -> None:
        os.close(self.fd)
        if self.control is not None:
            self.control.close(discard=discard)


def split_parts(body: bytes, nparts: int, pos: int, *, refs: bool = False) -> list:
    """A record's parts; with `refs`, each reference part is a memoryview of
    the file name (RingBlobs.resolve replaces it), every other part bytes."""
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

