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

Who does what: `Rings` (here) reads a batch across rings, acknowledges,
arms the producers, drains the doorbell and maintains the set; one ring's
reader is `ring_reader.Ring` (its blobs: `ring_blobs`); what goes to a
producer, `ring_control`; the directory's own entries (lock, ``acks/``,
``quarantine/``, doorbell, tidying), `ring_dir.RingDirectory`; finding and
opening rings within the fd budget, `ring_adopt.Adopter`. `STALL_SECONDS`,
`QUARANTINE_FILES`, `QUARANTINE_BYTES` and `CLEAN_SECONDS` take effect
from this module (tests patch them here); any other constant, from the
module that uses it.

Nothing in the directory can stop a start (`ring_dir`). Descriptors are
budgeted, live producers' rings first (`ring_adopt`). Rings with no
producer are drained and removed, which makes room for the next. A ring
that yielded nothing for RECENT_SECONDS is looked at again after
IDLE_PROBE_SECONDS, then less and less
often up to IDLE_PROBE_MAX while it stays empty (ARMED_PROBE_MAX once its
producer is asked to ring), and at once after a doorbell: idle rings cost
little (500 idle rings of live producers, here: about 2% of a core while
ingest sleeps, 8-18% while it polls for a busy one; 7% and 74% before).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from client.ring import RingCorrupt
from sidecar.ingest.decode import RingMessage
from sidecar.ingest.inbox import Inbox
from sidecar.ingest.ring_adopt import Adopter, Owners, fd_budget
from sidecar.ingest.ring_dir import (
    CLEAN_SECONDS,
    HALF_MADE_SECONDS,
    QUARANTINE_BYTES,
    QUARANTINE_FILES,
    TOMBSTONE_SECONDS,
    RingDirectory,
)
from sidecar.ingest.ring_files import unlink
from sidecar.ingest.ring_reader import BATCH_BYTES, IDLE_PROBE_SECONDS, STALL_SECONDS, Ring
from sidecar.ops.metrics import Metrics

# What others import from here (the tests patch or read these constants here).
__all__ = ["BATCH_BYTES", "CLEAN_SECONDS", "HALF_MADE_SECONDS", "QUARANTINE_BYTES", "QUARANTINE_FILES",
           "STALL_SECONDS", "TOMBSTONE_SECONDS", "Ring", "Rings"]

log = logging.getLogger("sidecar.rings")

MAINTAIN_SECONDS = 0.5         # how often to look for new rings and finished ones
RECENT_SECONDS = 0.25          # a ring that yielded a record this recently is read at every ingest cycle
IDLE_PROBE_MAX = 0.05          # then, found empty, after IDLE_PROBE_SECONDS, doubling while it stays
                               # empty, up to this; a doorbell: at once
ARMED_PROBE_MAX = 0.25         # ...and this once its producer will ring (the bound for a record and
                               # a new wake generation that cross, which no CPU's ordering rules out)
GRACE_SECONDS = 30.0           # a ring with no producer that yields nothing this long is set aside


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
    owners: Owners | None = None   # where client id -> owner uid bindings are kept (the journal's clients)
    rings: dict[str, Ring] = field(default_factory=dict)
    doorbell: socket.socket | None = None
    _last_maintain: float = float("-inf")
    _last_clean: float = float("-inf")
    _read: list[Ring] = field(default_factory=list)
    _probe_all: bool = True        # the next read looks at every ring, empty or not
    _turn: int = 0                 # which ring a batch starts with: each gets to go first
    _now: float = 0.0
    _dir_mtime: int = -1           # the directory's mtime when a doorbell last looked

    def __post_init__(self) -> None:
        self.fd_budget = self.fd_budget or fd_budget()  # at construction now (was open): the Adopter's budget
        # The quarantine bounds are read from this module now, not bound at import: tests patch them here.
        self.place = RingDirectory(self.directory, self.metrics, inbox=self.inbox,
                                   quarantine_files=QUARANTINE_FILES, quarantine_bytes=QUARANTINE_BYTES)
        self.adopter = Adopter(self.place, self.metrics, budget=self.fd_budget, max_record=self.max_record,
                               inbox=self.inbox, owners=self.owners)

    def open(self) -> None:
        """Lock the directory (raises `lock.Locked` naming the other sidecar's
        pid), tidy it, bind the doorbell and adopt the rings. Whatever stands
        in the way inside the directory is moved aside, and open() goes on."""
        self._now = self.clock()
        self.doorbell = self.place.open()
        self._clean(self._now)
        self.scan()

    def close(self) -> None:
        for r in self.rings.values():
            r.close()
        self.rings.clear()
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None
        self.place.close()

    # -- the ingest thread's calls --------------------------------------------

    def read(self, limit: int) -> list[RingMessage]:
        """`read_by_ring`'s messages, one list (each ring's in its order), each
        settled: its [0] the frame, a binary record's too (ingest settles them
        one at a time, as it takes them: `BatchWriter`)."""
        out = [m for _ring, messages in self.read_by_ring(limit) for m in messages]
        for m in out:
            m.settle()
        return out

    def read_by_ring(self, limit: int) -> list[tuple[Ring, list[RingMessage]]]:
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
        out: list[RingMessage] = []
        by_ring: dict[str, tuple[Ring, list[RingMessage]]] = {}
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
                if r.first_read is None:  # its grace with no producer counts from here (maintain)
                    r.first_read = r.progress_at = now
                if got:
                    by_ring.setdefault(r.path, (r, []))[1].extend(got)
                    r.progress_at = now  # the clock's now, not the last maintain's: ingest may have stalled
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
        producer that yield nothing for GRACE_SECONDS from their first read
        (a ring not read since adoption is never judged); tidy the directory."""
        if not force and now - self._last_maintain < MAINTAIN_SECONDS:
            return
        self._last_maintain = self._now = now
        if force:
            self._probe_all = True
        self.scan()
        for r in list(self.rings.values()):
            if r.first_read is None:
                continue  # adopted but not read yet: whatever it holds is read before anything is judged
            try:
                if r.stalled(now, STALL_SECONDS):  # this module's: tests patch it here
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

    # -- adoption, removal, quarantine, tidying ------------------------------------

    def scan(self) -> None:
        """Adopt the rings not read yet, as many as the fd budget allows, live producers' first."""
        # The clock's now, not the last maintain's: after a stall (a SIGSTOPped sidecar) a ring
        # adopted through the doorbell must not look as old as the stall.
        self.adopter.scan(self.rings, self.clock())

    def _remove(self, r: Ring) -> None:
        del self.rings[r.path]
        unlink(r.path)
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
        self.place.quarantine_path(r.path, why, pid=r.header.pid, client=r.header.client_id, reason=reason)

    def _clean(self, now: float) -> None:
        """Tidy the directory (`RingDirectory.clean`): every CLEAN_SECONDS, and at open."""
        self._last_clean = now
        self.place.clean(held=self.rings)

