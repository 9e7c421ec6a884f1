"""The sidecar's end of the shared-memory rings (see `client/ring.py` for the layout).

    rings = Rings("/run/trading-sidecar/ingest.rings", metrics)
    rings.open()                         # make the directory, bind the doorbell, adopt every ring
    batch = rings.read(limit=4096)       # [(ring, frames), ...], not yet acknowledged
    ...journal commits...
    rings.ack()                          # only now may the producers reuse that space
    rings.maintain(now)                  # adopt new rings, remove finished ones, quarantine stuck ones

A ring is untrusted input: any process of the trading group can write one.
So it is never mapped here (a file truncated under a mapping would kill the
sidecar with SIGBUS); it is read with `pread`, every length and position is
bounded before use, and a ring that breaks the layout is moved to
`quarantine/`, counted and logged with its owner's pid, while the others go on.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import struct
import time
import zlib
from dataclasses import dataclass, field

from client import ring as layout
from client.ring import HEADER, REC_CRC, REC_WRAP, RECORD, TRAILER, U64, FileHeader, RingCorrupt, record_bytes
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.rings")

CHUNK_BYTES = 1 << 20          # one pread reads at most this much of a ring at a time
PROBE_BYTES = 4096             # ...and this much of a ring that was empty last time
BATCH_BYTES = 64 << 20         # one batch takes at most this much from the rings (and one record more)
MAX_POSITION = 1 << 62         # no honest ring gets near; a larger read position is corruption
STALL_SECONDS = 1.0            # unreadable data behind the producer's hint for this long is corruption
MAINTAIN_SECONDS = 0.5         # how often to look for new rings and finished ones
QUARANTINE = "quarantine"
BODY = RECORD.size             # where a record's body starts
_zlib_crc32 = zlib.crc32


@dataclass
class Ring:
    """One adopted ring: where the journal has it up to (`acked`) and where
    reading has got to (`pos`, ahead of `acked` until the commit)."""

    path: str
    fd: int
    header: FileHeader
    acked: int
    largest: int = 0               # the longest body ingest takes: its own limits, not the file's say
    pos: int = 0
    stalled_since: float | None = None
    empty: bool = False
    frames_read: int = 0
    broken: str | None = None
    charged: int = 0               # record bytes the last read took from its budget

    def __post_init__(self) -> None:
        self.pos = self.acked
        self.mask = self.header.capacity - 1
        cap_largest = layout.max_record_body(self.header.capacity)
        self.largest = min(self.largest, cap_largest) if self.largest else cap_largest

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    # -- reading --------------------------------------------------------------

    def read(self, limit: int, budget: int = BATCH_BYTES) -> list[list[bytes]]:
        """Committed records from `pos` on, at most `limit` of them and about
        `budget` bytes (at least one record), each as its frames.

        Raises RingCorrupt at a broken record, but only once the good records
        before it have been returned (and so journaled). Whatever a file
        holds, the error is a RingCorrupt: nothing else escapes."""
        if self.broken:
            raise RingCorrupt(self.broken)
        out: list[list[bytes]] = []
        self.charged = 0
        try:
            self._read_into(out, limit, budget)
        except Exception as exc:  # noqa: BLE001 -- struct.error, MemoryError, OverflowError...: all from the file
            why = str(exc) if isinstance(exc, RingCorrupt) else f"unreadable ({type(exc).__name__}: {exc})"
            if not out:
                raise RingCorrupt(why) from None
            self.broken = why
        self.empty = not out
        self.frames_read += len(out)
        return out

    def _read_into(self, out: list[list[bytes]], limit: int, budget: int) -> None:
        cap = self.header.capacity
        chunk = PROBE_BYTES if self.empty else CHUNK_BYTES  # an idle ring costs a small read
        while len(out) < limit and budget > 0:
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
            committed, jump, big = self._scan(first, off)
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
                budget -= got
                self.charged += got  # record bytes: wrap padding is not charged
                if got < committed or len(out) == before:
                    break  # a record that does not verify yet, or the limit
            if jump:
                self.pos += jump
                continue
            # Go on only past a whole chunk (or one long record): having stopped
            # at an unwritten record, reading again now would find the same.
            if not committed or (not big and committed + HEADER <= len(first)):
                break

    def _scan(self, buf: bytes, off: int) -> tuple[int, int, int]:
        """(bytes of committed records, a wrap's jump to the lap's end, the length
        of one committed record too long for `buf`), from the start of `buf`."""
        cap = self.header.capacity
        largest = self.largest
        pos = self.pos
        i = 0
        n = len(buf)
        while n - i >= HEADER:
            size, _nparts, flags, _crc, _ = RECORD.unpack_from(buf, i)
            rec = record_bytes(size)
            if flags & REC_WRAP:  # padding up to the ring's end; may be longer than any record
                if off + i + rec != cap or not self._trailer_ok(buf, i, rec, pos + i):
                    break
                return i, rec, 0
            if size > largest or off + i + rec > cap:
                if size > largest and off + i + rec <= cap and self._trailer_ok(buf, i, rec, pos + i):
                    # Committed, and longer than any event ingest takes: not something a
                    # Client writes. Set aside (counted), never read into memory.
                    raise RingCorrupt(f"record at {pos + i} of {size} bytes, over ingest's limit of {largest}")
                break  # not a header yet; if it stays so behind the producer's hint, see stalled()
            if i + rec > n:
                if i == 0:  # longer than the chunk: its trailer is checked by the caller's second read
                    return 0, 0, rec
                break
            if U64.unpack_from(buf, i + rec - TRAILER)[0] != pos + i + rec:
                break  # not written yet (or never will be: see stalled())
            i += rec
        return i, 0, 0

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
            body = buf[i + BODY:i + BODY + size]
            if checksum or flags & REC_CRC:
                if not flags & REC_CRC:
                    raise RingCorrupt(f"record at {pos + i} lacks the checksum its ring promises")
                # Started from the record's end: an earlier lap's record at this place cannot pass.
                if _zlib_crc32(body, (pos + i + rec) & 0xFFFFFFFF) != crc:
                    break  # not visible in full yet on a weakly ordered CPU; see stalled()
            out.append(_split(body, nparts, pos + i))
            limit -= 1
            i += rec
        return i

    # -- state shared with the producer ---------------------------------------

    def ack(self) -> None:
        """Tell the producer the journal holds everything before `pos`."""
        if self.pos != self.acked:
            os.pwrite(self.fd, U64.pack(self.pos), layout.OFF_READ)
            self.acked = self.pos

    def arm(self) -> None:
        """Ask the producer for a doorbell on its next record."""
        os.pwrite(self.fd, bytes([layout.WAKE_RING]), layout.OFF_WAKE)

    def hint(self) -> int:
        raw = os.pread(self.fd, 8, layout.OFF_HINT)
        return U64.unpack(raw)[0] if len(raw) == 8 else 0

    def producer_alive(self) -> bool:
        """The producer holds an exclusive flock for as long as it lives."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False

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
        if not wrap and size > self.largest:
            if self._trailer_ok(b"", 0, rec, self.pos):
                raise RingCorrupt(f"record at {self.pos} of {size} bytes, over ingest's limit of {self.largest}")
            return 0, False
        return (rec, wrap) if self._trailer_ok(b"", 0, rec, self.pos) else (0, False)

    def has_record(self) -> bool:
        """Whether a committed record (or wrap) waits at `pos`, without reading it."""
        tail = self.header.capacity - (self.pos & self.mask)
        return tail < HEADER or bool(self._committed_here()[0])

    def stalled(self, now: float) -> bool:
        """True once data the producer says it wrote has stayed unreadable
        for STALL_SECONDS: a broken record, not one still becoming visible."""
        if not self.empty or self.hint() <= self.pos:
            self.stalled_since = None
            return False
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since >= STALL_SECONDS


def _split(body: bytes, nparts: int, pos: int) -> list[bytes]:
    if nparts == 1:
        return [body]
    if not 1 < nparts <= layout.MAX_PARTS or len(body) < 4 * nparts:
        raise RingCorrupt(f"record at {pos} has {nparts} parts")
    lengths = struct.unpack_from(f"<{nparts}I", body, 0)
    i = 4 * nparts
    if i + sum(lengths) != len(body):
        raise RingCorrupt(f"record at {pos}: part lengths do not add up to its size")
    parts = []
    for n in lengths:
        parts.append(body[i:i + n])
        i += n
    return parts


@dataclass
class Rings:
    """Every ring in one directory, and the doorbell their producers ring."""

    directory: str
    metrics: Metrics
    max_record: int = 0            # the longest record body ingest accepts (0: the ring's own bound)
    rings: dict[str, Ring] = field(default_factory=dict)
    doorbell: socket.socket | None = None
    ignored: set[str] = field(default_factory=set)
    _last_maintain: float = 0.0
    _read: list[Ring] = field(default_factory=list)

    def open(self) -> None:
        layout.make_private_dir(self.directory)
        os.makedirs(os.path.join(self.directory, QUARANTINE), mode=0o2770, exist_ok=True)
        path = os.path.join(self.directory, layout.DOORBELL)
        try:
            os.unlink(path)  # a dead sidecar's; a live one holds the ingest socket, checked before this
        except FileNotFoundError:
            pass
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bell.bind(path)
        bell.setblocking(False)
        os.chmod(path, 0o660)  # the trading group may ring it
        self.doorbell = bell
        self.scan()

    def close(self) -> None:
        for r in self.rings.values():
            os.close(r.fd)
        self.rings.clear()
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None

    # -- the ingest thread's calls --------------------------------------------

    def read(self, limit: int) -> list[list[bytes]]:
        """Up to `limit` messages (and about BATCH_BYTES) from all rings,
        fairly: no ring starves the others.

        Each pass gives every ring still holding records an equal share of
        what is left; the room a nearly idle ring leaves goes to the busy
        ones in the next pass, so several producers still fill a batch (a
        half-empty batch costs a transaction, and its fsync, all the same).
        """
        out: list[list[bytes]] = []
        active = list(self.rings.values())
        bytes_left = BATCH_BYTES
        while active and len(out) < limit and bytes_left > 0:
            share = max(1, (limit - len(out)) // len(active))
            budget = max(1, bytes_left // len(active))
            busy = []
            for r in active:
                if len(out) >= limit:
                    break
                before = r.pos
                asked = min(share, limit - len(out))
                try:
                    got = r.read(asked, budget)
                except RingCorrupt as exc:
                    self.quarantine(r, str(exc))
                    continue
                out += got
                size = r.charged  # the record bytes the ring charged to its budget
                bytes_left -= size
                # Acknowledged even if it only passed a wrap: else a drained ring
                # would never look drained (pos == acked) and never be removed.
                if r.pos != before and r not in self._read:
                    self._read.append(r)
                if len(got) >= asked or size >= budget:  # stopped by its share, not for want of records
                    busy.append(r)
            active = busy
        return out

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
        for r in list(self.rings.values()):
            try:
                r.arm()
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
            self.scan()  # a new ring's first record rings too
        return n

    def maintain(self, now: float, *, force: bool = False) -> None:
        """Adopt new rings; remove the empty ones whose producer is gone;
        quarantine the ones whose data stays unreadable."""
        if not force and now - self._last_maintain < MAINTAIN_SECONDS:
            return
        self._last_maintain = now
        self.scan()
        for r in list(self.rings.values()):
            try:
                if r.stalled(now):
                    self.quarantine(r, f"no readable record at {r.pos} but the producer wrote up to {r.hint()}")
                elif r.empty and r.pos == r.acked and not r.producer_alive():
                    # Looked at once more: it may have written between our last read and its end.
                    if r.has_record():
                        r.empty = False
                    else:
                        self._remove(r)
            except Exception as exc:  # noqa: BLE001 - a file's content, whatever it is, costs only its ring
                self.quarantine(r, str(exc))
        self.metrics.rings.set(len(self.rings))

    # -- adoption, removal, quarantine -----------------------------------------

    def scan(self) -> None:
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.error("cannot list the ring directory %s: %s", self.directory, exc.strerror)
            return
        for entry in entries:
            if entry.name.endswith(layout.RING_SUFFIX) and not entry.name.startswith(".") \
                    and entry.path not in self.rings:
                self._adopt(entry.path)

    def _adopt(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:  # a symlink (never followed), a file we may not open
            self._quarantine_path(path, None, f"cannot open it: {exc.strerror}", pid=None)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingCorrupt("not a regular file")
            header = FileHeader(os.pread(fd, 128, 0), st.st_size)
            acked = U64.unpack(os.pread(fd, 8, layout.OFF_READ))[0]
            if acked & 7 or acked > MAX_POSITION:
                raise RingCorrupt(f"read position {acked} is not 8-aligned or is past any real ring's")
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it goes aside
            try:
                if os.pread(fd, len(layout.MAGIC), 0) == layout.MAGIC:  # a ring of ours: tell its producer
                    os.pwrite(fd, b"\1", layout.OFF_QUARANTINED)
                    os.pwrite(fd, bytes([layout.WAKE_RING]), layout.OFF_WAKE)
            except OSError:
                pass
            self._quarantine_path(path, fd, str(exc), pid=None)
            return
        ring = Ring(path, fd, header, acked, largest=self.max_record)
        self.rings[path] = ring
        log.info("adopted ring %s (client %s, pid %d, %d bytes, read from %d)", ring.name, header.client_id,
                 header.pid, header.capacity, acked)

    def _remove(self, r: Ring) -> None:
        del self.rings[r.path]
        try:
            os.unlink(r.path)
        except FileNotFoundError:
            pass
        os.close(r.fd)
        log.info("removed ring %s: its producer (pid %d) is gone and it is drained (%d messages read)",
                 r.name, r.header.pid, r.frames_read)

    def quarantine(self, r: Ring, why: str) -> None:
        self.rings.pop(r.path, None)
        if r in self._read:
            self._read.remove(r)
        try:
            # Tell its producer to start a new ring: the sticky byte first,
            # then `wake`, which sends it to look (client/ring.py).
            os.pwrite(r.fd, b"\1", layout.OFF_QUARANTINED)
            os.pwrite(r.fd, bytes([layout.WAKE_RING]), layout.OFF_WAKE)
        except OSError:
            pass
        self._quarantine_path(r.path, r.fd, why, pid=r.header.pid, client=r.header.client_id)

    def _quarantine_path(self, path: str, fd: int | None, why: str, *, pid: int | None, client: str = "?") -> None:
        """Move a file aside, count and log it. Logged once: a file that
        cannot even be moved is remembered and left alone."""
        if fd is not None:
            os.close(fd)
        if path in self.ignored:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = os.path.join(self.directory, QUARANTINE, f"{os.path.basename(path)}.{stamp}.{time.time_ns() % 10**9}")
        try:
            os.rename(path, dest)
        except OSError as exc:
            dest = f"(could not move it: {exc.strerror}; ignoring it from now on)"
            self.ignored.add(path)
        self._count("corrupt")
        log.error("quarantined ring %s of client %s (pid %s): %s; moved to %s", os.path.basename(path), client,
                  pid if pid is not None else "unknown", why, dest)

    def _count(self, reason: str) -> None:
        self.metrics.rings_quarantined.labels(reason=reason).inc()
