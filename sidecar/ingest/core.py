"""Ingest: read events from the producers' rings and the ZeroMQ socket, and
group-commit them to the journal.

    ingest = Ingest(cfg.ingest, journal, connectors, metrics, on_written=wake_lanes)
    ingest.bind()              # raises IngestError if the endpoint is unusable
    ingest.start()             # a thread: read, gather up to batch_max or commit_window, one transaction
    ingest.stop()              # stop reading, journal what was already received

Two sources, one transaction per batch: the shared-memory rings of local
producers (`sidecar.ingest.rings`), whose read positions advance only after the
commit, so a crash re-reads them and the sequence numbers drop what the
journal already holds; and the ZeroMQ socket, for remote producers and old
clients, whose protocol (ZMTP) ingest speaks itself so that what it holds
is bounded in bytes (`Receiver`, zmtp.py). Runs in its own thread so that
a journal fsync never delays the delivery loop, and SQLite and the poller
release the GIL while they wait.

Group commit by size and by time: what a read finds joins the pending
batch, which commits when it holds `batch_max` events or when its oldest
has waited the commit window: at 100 or 1,000 events a second a
commit, and its fsync, serves several events, not one; the first event
after QUIET_WINDOWS `commit_window`s without a commit goes at once, so a lone
event is not kept waiting for company. The window starts at
`commit_window` (10 ms) and doubles at each commit while events keep
coming, up to `commit_window_max` (100 ms): a steady flow pays ten fsyncs
a second, and an event of it waits up to that long for its commit. Until then the
thread sleeps on a timer, not a poll, and the rings' read positions stay
where the journal has them (emit never waits: the producer only writes).

Waiting, with nothing pending: one more commit window unarmed (a producer
emitting faster than that never rings: the timer finds its records), then
it asks every ring's producer for a doorbell (`Rings.arm`) and sleeps on it
and on the socket, at most IDLE_SLEEP_MS (the bound for the rare crossing
of the wake flag and a record). So a steady flow costs the producer nothing
and the sidecar one wake-up per commit window; a lone event costs its
producer one datagram. bench/footprint.py measures the CPU, bench/wakeup.py
and bench/latency.py the hand-off and emit's cost. Anything that is
not a valid event is counted by reason and kept in `rejects`, and the rest
of its batch is journaled as usual.

Ingest is the loop; each other job is a collaborator's: what a commit
does with each message (`BatchWriter`, batch.py), what the disk
allows (`Admission`, admission.py, under the policy of journal/space.py),
client sequences (`Sequences`, sequences.py), rejected frames (`Rejects`,
rejects.py), and the journal's writes (`Journal`).

A journal that cannot be written (disk full, read-only, I/O error: see
journal/health.py) never stops ingest and never loses an event. The batch
that failed is held (one batch, so memory stays bounded) and retried every
RETRY_SECONDS; until it commits nothing new is read. The rings' read
positions stay where the journal has them, so producers keep emitting into
their rings until those fill (then `queue_full`); the ZeroMQ socket is not
read, so the kernel's socket buffers fill and push back on the senders. Blobs spooled for the failed
batch are removed at once, and each client's sequence state is restored
from the journal, so the retry is not taken for a replay.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping

import zmq

from client import wire
from client.ring import ring_dir
from sidecar.config import IngestConfig
from sidecar.connectors.base import Connector
from sidecar.errors import IngestError, JournalUnavailable
from sidecar.ingest.admission import RETRY_SECONDS, Admission
from sidecar.ingest.batch import BatchWriter
from sidecar.ingest.inbox import Inbox
from sidecar.ingest.rejects import Rejects, RejectTally
from sidecar.ingest.ring_adopt import Owners
from sidecar.ingest.rings import Rings
from sidecar.ingest.sequences import Sequences
from sidecar.ingest.zmtp import Limits, Receiver, Refused
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.ingest")

IDLE_SLEEP_MS = 250        # asleep on the doorbell, at most this long (4 wake-ups a second at idle)
NO_DOORBELL_SLEEP_MS = 50  # ...or this, where the doorbell could not be bound: then only time finds a record
SOCKET_SLEEP_MS = 50       # without rings: the socket alone wakes it, so this bounds only the stop
QUIET_WINDOWS = 5          # no commit for this many commit windows: the next event commits at once
DOORBELL_SECONDS = 0.5     # while busy, stale doorbells are emptied this often
STOP_DRAIN_SECONDS = 2.0
# The ZeroMQ socket holds at most `Limits.held` bytes of messages, whoever
# sends them, over tcp:// and ipc:// alike: ingest reads the connections
# itself (zmtp.py, whose docstring says why not libzmq's PULL, whose queue
# counted messages of up to MAXMSGSIZE each, nor a ZMQ_STREAM socket).
# A connection is read until its end, so a producer that bursts and exits
# at once loses no tail (libzmq's PULL dropped the rest of a connection
# whose peer hung up while its full queue had stopped the reading).
REFILL_BYTES = 64 << 10   # a read that found this much: the sender is ahead, so wait 1 ms for more
DRAIN_BYTES = 32 << 20     # one batch takes at most this much from the socket (and one message more)
M_MMAP_THRESHOLD = -3      # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 4 << 20   # blocks from this size on get a mapping of their own (`_fix_mmap_threshold`);
                           # above the rings' 1 MiB reads, which the heap serves faster


class Ingest:
    def __init__(
        self,
        cfg: IngestConfig,
        journal: Journal,
        connectors: Mapping[str, Connector],
        metrics: Metrics,
        *,
        on_written: Callable[[set[str]], None] = lambda lanes: None,
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.metrics = metrics
        self.on_written = on_written
        self.rejects = Rejects(metrics)
        self.sequences = Sequences(journal, metrics, keep_seconds=cfg.clients_keep_hours * 3600)
        self.admission = Admission(journal, batch_max=cfg.batch_max)
        self.batches = BatchWriter(cfg, journal, connectors, metrics, self.sequences, self.rejects, self.admission,
                                   on_written)
        self._sock: Receiver | None = None
        self.rings: Rings | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # A batch the journal refused, kept for the retry; how many of it came over ZeroMQ.
        self._held: list[list[bytes]] | None = None
        self._held_zmq = 0
        self._retry_at = 0.0
        # Read but not yet committed (the group commit's batch), how many of it came over ZeroMQ, since when.
        self._pending: list[list[bytes]] = []
        self._pending_zmq = 0
        self._pending_since: float | None = None
        self._last_commit = float("-inf")
        self._window = cfg.commit_window  # the commit window now: see the module's docstring

    # -- lifecycle ------------------------------------------------------------

    def bind(self) -> None:
        """Bind the ZeroMQ socket and open the ring directory; IngestError if either is unusable."""
        inbox = Inbox(self.cfg.blob_dir or f"{self.journal.path.parent}.inbox", max_bytes=self.cfg.max_blob_bytes)
        self._sock, self.rings = _bind(self.cfg, self.metrics, inbox, owners=self.journal.clients)

    def start(self) -> None:
        assert self._sock is not None, "bind() first"
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading; what already arrived is journaled, then the socket closes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("ingest did not stop within %.0f s; leaving it to process exit", timeout)
                return
        else:
            if self._sock is not None:
                self._sock.close()
            if self.rings is not None:
                self.rings.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop -------------------------------------------------------------

    def _run(self) -> None:
        _name_thread(b"ingest")  # bench/footprint.py splits the CPU by thread name
        sock = self._sock
        assert sock is not None
        rings = self.rings
        poller = zmq.Poller()
        poller.register(sock.fileno(), zmq.POLLIN)
        if rings is not None and rings.doorbell is not None:
            poller.register(rings.doorbell.fileno(), zmq.POLLIN)
        last_doorbells = 0.0
        lingered = False  # the one unarmed commit window after a batch has passed
        waited = False    # ...and what the read after it finds has waited up to a window: commit it now
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if rings is not None:
                    # Every half second at most, busy or not: a new ring is adopted
                    # (and a stuck one set aside) even while others keep ingest busy.
                    rings.maintain(now)
                took, waited = self._cycle(sock, now_or_never=waited), False
                if took:
                    lingered = False
                    if rings is not None and now - last_doorbells >= DOORBELL_SECONDS:
                        last_doorbells = now
                        rings.drain_doorbell()
                    if took >= self.cfg.batch_max:
                        continue  # a full batch: more waits; a window's sleep here would cap throughput
                if self._pending_since is not None:
                    # A timer, not a poll: arrivals meanwhile wait for the commit anyway.
                    self._stop.wait(max(0.0, self._pending_since + self._window - time.monotonic()))
                    continue
                if self._held is not None:
                    self._stop.wait(max(0.0, min(self._retry_at - time.monotonic(), IDLE_SLEEP_MS / 1000)))
                    continue
                if rings is None:
                    poller.poll(SOCKET_SLEEP_MS)
                    continue
                if not lingered and self._window > 0:
                    lingered = waited = True  # a steady flow is found here, and its producers never ring
                    self._stop.wait(self._window)
                    continue
                rings.arm()
                if not self._cycle(sock):  # a record written before its producer saw the generation
                    poller.poll(IDLE_SLEEP_MS if rings.doorbell is not None else NO_DOORBELL_SLEEP_MS)
                    rings.drain_doorbell()
            # Stopping: journal what already reached this process, without
            # waiting for more (a busy client would keep us here forever).
            # What stays in the rings is read at the next start.
            deadline = time.monotonic() + STOP_DRAIN_SECONDS
            self._retry_at = 0.0  # one more try of a held batch, now
            while time.monotonic() < deadline and self._cycle(sock, rings_too=False, now_or_never=True):
                pass
            if self._held is not None:
                log.error("stopping with the journal unwritable: %d event(s) stay in the producers' rings for "
                          "the next start, %d received over ZeroMQ are lost",
                          len(self._held) - self._held_zmq, self._held_zmq)
        except BaseException as exc:  # surfaced by the app, which exits non-zero
            self.error = exc
            log.exception("ingest stopped on an unexpected error")
        finally:
            sock.close()  # in this thread: a socket must not be closed under its user
            if rings is not None:
                rings.close()

    def _cycle(self, sock: Receiver, *, rings_too: bool = True, now_or_never: bool = False) -> int:
        """Read what waits into the pending batch and commit it once it is full
        or its oldest has waited `commit_window` (at once with `now_or_never`),
        then acknowledge the rings; returns how many messages it read or committed."""
        if self._held is not None:
            if time.monotonic() < self._retry_at:
                return 0
            if (self.sequences.stale and not self.sequences.restore()) or not self.admission.allowance(time.monotonic()):
                self._retry_at = time.monotonic() + RETRY_SECONDS
                return 0
            return self._commit(self._held, self._held_zmq)
        now = time.monotonic()
        pending = self._pending
        room = min(self.cfg.batch_max - len(pending), self.admission.allowance(now))
        took = self._gather(sock, room, rings_too) if room > 0 else 0
        if not pending:
            return took
        if self._pending_since is None:
            # The first event after a quiet spell goes at once: a lone event's hand-off
            # stays as quick as without a window, and a flow is what gets grouped.
            # (Past the current window too: a flow's commits are a window apart, the linger's.)
            quiet = now - self._last_commit >= QUIET_WINDOWS * self.cfg.commit_window + self._window
            self._window = self._next_window(quiet)
            # (-inf, not now - window: with a monotonic clock hours past boot, now - (now - w) can come out
            # a hair under w, and the lone event then waited for the next cycle.)
            self._pending_since = float("-inf") if quiet else now
        if not (now_or_never or room - took <= 0 or now - self._pending_since >= self._window):
            return took
        self._pending, self._pending_since = [], None
        zmq_n, self._pending_zmq = self._pending_zmq, 0
        return self._commit(pending, zmq_n) or took

    def _next_window(self, quiet: bool) -> float:
        """The window of a batch just begun: `commit_window` after a quiet spell, else twice the
        last one, at most `commit_window_max`."""
        base = self.cfg.commit_window
        return base if quiet else min(2 * self._window, max(base, self.cfg.commit_window_max))

    def _gather(self, sock: Receiver, limit: int, rings_too: bool) -> int:
        """Add up to `limit` messages from the rings and the socket to the pending batch."""
        rings = self.rings if rings_too else None
        # Each source is sure of half a batch, so a flood into the socket
        # cannot starve the rings, nor a busy ring the socket.
        messages = self._read_rings(rings, limit // 2) if rings is not None else []
        from_sock = self._drain(sock, limit - len(messages))
        if rings is not None and len(messages) == limit // 2 and len(messages) + len(from_sock) < limit:
            messages += self._read_rings(rings, limit - len(messages) - len(from_sock))
        messages += from_sock
        if messages:
            self.admission.take(len(messages))
            self._pending += messages
            self._pending_zmq += len(from_sock)
        return len(messages)

    def _commit(self, messages: list[list[bytes]], from_zmq: int) -> int:
        """Journal a batch and acknowledge the rings; if the journal refuses it,
        hold it for a retry (module docstring) and return 0."""
        try:
            self.process(messages)
        except JournalUnavailable as exc:
            self._held, self._held_zmq = messages, from_zmq
            self.admission.refused(exc.state)
            self._retry_at = time.monotonic() + RETRY_SECONDS
            self.sequences.restore()
            return 0
        self.metrics.ingest_commits.inc()
        self._last_commit = time.monotonic()
        self._held, self._held_zmq = None, 0
        self.admission.committed()
        if self.rings is not None:
            self.rings.ack()
        return len(messages)

    def process(self, messages: list[list[bytes]]) -> None:
        """Validate, route and journal one batch in a single transaction (`BatchWriter.process`)."""
        self.batches.process(messages)

    @staticmethod
    def _read_rings(rings: Rings, limit: int) -> list[list[bytes]]:
        """Up to `limit` messages from the rings, each a `RingMessage` tagged with its ring's client id."""
        return [frames for _ring, messages in rings.read_by_ring(limit) for frames in messages]

    def _drain(self, sock: Receiver, limit: int, budget: int = DRAIN_BYTES) -> list[list[bytes]]:
        """Read what is waiting, up to `limit` messages and about `budget` bytes, without blocking.

        What the socket refused (a message over the limits, a connection that
        broke the protocol or one too many) is counted and sampled like a
        frame refused in a batch, in a transaction of its own."""
        messages = sock.read(limit, budget)
        while 0 < len(messages) < limit and sock.last_bytes >= REFILL_BYTES and budget > sock.last_bytes:
            # As much as the kernel's socket buffers hold: the sender is ahead of us and
            # refills them in a moment. Wait that moment rather than commit a small batch.
            budget -= sock.last_bytes
            if not sock.poll(1):
                break
            more = sock.read(limit - len(messages), budget)
            if not more:
                break
            messages += more
        refused = sock.take_refused()
        if refused:
            self._record_refused(refused)
        return messages

    def _record_refused(self, refused: dict[str, Refused]) -> None:
        tallies: dict[str, RejectTally] = {}
        sample: list[tuple[str, str, bytes | None]] = []
        for reason, r in refused.items():
            self.rejects.add(tallies, sample, reason, r.detail, r.sample)
            tallies[reason].count += r.count - 1
            tallies[reason].unsampled += r.count - 1
        if self._held is None:  # a journal that refuses batches would refuse this too: counted only
            unsampled = {reason: t.unsampled for reason, t in tallies.items() if t.unsampled}
            try:
                self.journal.write_batch([], sample, {}, unsampled)
            except (sqlite3.Error, OSError) as exc:
                log.warning("could not journal %d refused message(s): %s; they are counted in metrics only",
                            sum(r.count for r in refused.values()), exc)
        self.rejects.report(tallies)


def _name_thread(name: bytes) -> None:
    """Name the calling OS thread (Linux's 15-byte `comm`), so per-thread CPU
    figures (top -H, psutil) say which is ingest; best effort elsewhere."""
    try:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _fix_mmap_threshold() -> None:
    """Large buffers (the socket's frames, their copies) each in their own mapping, given back when freed.

    glibc raises its mmap threshold to the size of each large block freed, up to
    32 MiB, so after one 16 MiB frame the next ones come from the heap and stay
    resident: one message of 60 such frames left 350 MiB behind. A fixed
    threshold keeps them out of the heap."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: its allocator has its own rules
        pass


def _bind(cfg: IngestConfig, metrics: Metrics, inbox: Inbox | None = None, *,
          owners: Owners | None = None) -> tuple[Receiver, Rings | None]:
    """The ZeroMQ socket, bound, and the rings beside an ipc:// endpoint (if it has them)."""
    _fix_mmap_threshold()
    endpoint = cfg.endpoint
    if endpoint.startswith("ipc://"):
        _clear_stale_ipc(endpoint[len("ipc://"):])
    sock = Receiver.bind(endpoint, Limits.of(cfg))  # IngestError if it cannot
    if endpoint.startswith("ipc://"):
        # The unit's RuntimeDirectory= decides who may reach the socket;
        # the socket itself is writable by the group (the trading user's).
        try:
            os.chmod(endpoint[len("ipc://"):], 0o660)
        except OSError:
            pass
    directory = ring_dir(endpoint)
    if directory is not None:
        # The longest record a valid event makes: the frame, its blobs and their table.
        largest = cfg.max_message_bytes + cfg.max_blob_bytes + 4 * (1 + wire.MAX_BLOBS)
        rings = Rings(directory, metrics, max_record=largest, inbox=inbox, owners=owners)
        try:
            rings.open()
            if inbox is not None:
                _open_inbox(inbox, directory)
        except IngestError:
            sock.close()  # a ring directory the sidecar must not use (ring_dir.py says why)
            rings.close()
            raise
        except OSError as exc:
            sock.close()
            rings.close()
            raise IngestError(f"cannot use the ring directory {directory}: {exc}") from None
        return sock, rings
    return sock, None


def _open_inbox(inbox: Inbox, ring_directory: str) -> None:
    """The blob inbox, or a logged reason why there is none (producers then keep blobs in their rings)."""
    try:
        inbox.open(ring_directory)
    except OSError as exc:
        log.error("no blob inbox at %s (%s): producers keep blobs in their rings, which then hold fewer; "
                  "set [ingest] blob_dir to a directory the sidecar can make", inbox.path, exc)



def _clear_stale_ipc(path: str) -> None:
    """Remove a socket file left by a dead sidecar; refuse if one still listens."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    except OSError as exc:
        raise IngestError(f"socket path {path} exists and cannot be probed ({exc.strerror})") from None
    finally:
        probe.close()
    raise IngestError(f"socket path {path} is in use by a running process (another sidecar?); "
                      "stop it or set [ingest] endpoint to another path")

