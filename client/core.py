"""`Client`: hand events to the sidecar without ever waiting on it.

    from client import Client

    with Client() as sidecar:                 # endpoint: $SIDECAR_ENDPOINT or the default
        sidecar.emit("notion.page.create", body, key="trade-42")
        sidecar.emit("notion.page.update", {"properties": {...}}, ref="trade-42")

`emit` returns True once the event is handed over and False when it was
dropped; it never blocks and never raises for anything downstream.

Two transports: with a local ``ipc://`` endpoint (the default) each Client
writes into its own ring of shared memory (`client.ring`), a file the sidecar
reads and acknowledges only once its journal has committed, so the events
survive the death of either process and `close()` returns at once; with a
``tcp://`` endpoint, or ``transport="zmq"``, a ZeroMQ PUSH socket queues them
in this process instead. Every drop is counted by reason in
`stats()["dropped"]`:

- ``queue_full``: the ring (or the ZeroMQ queue) is full: the sidecar has
  been away or slow for longer than it holds (the 8 MiB default ring: about
  2.7 s at 10,000 events/s of 300 bytes; `ring_bytes` or
  ``$SIDECAR_RING_BYTES=128M`` for 30 s, README "Sizing a ring");
- ``closed`` / ``transport_error``: the client was closed, or the transport
  refused (``transport="ring"`` with no ring directory, ZeroMQ broken);
- ``ring_quarantined``: the sidecar found this client's ring corrupt and set
  it aside; the event that learnt it is lost and the next one goes to a new ring;
- ``linger_expired``: at ``close()``, ZeroMQ only: events still queued when
  `linger` ran out (all of them are counted when no sidecar was connected;
  with one connected but not done reading, libzmq does not tell how many were
  left, so the queue's bound, at most `queue_size`, is counted and a warning
  says so);
- ``blob_backlog``: more blob bytes wait for the helper thread that writes
  them to disk than it holds (`client.blobs.MAX_PENDING_BYTES`);
- ``unknown_kind``, ``unserializable``, ``too_large``, ``bad_blob``: the call
  itself is wrong. These are programming errors: by default emit logs one
  warning per reason and kind and returns False, so a typo in a rare branch
  cannot stop a trading loop; with ``strict=True`` it raises `EmitError`
  instead (use that in tests and development).

Whether anyone reads it (`client.presence`, `client.dial`): a Client never
makes a ring directory, since a missing one means a mistyped endpoint or no
sidecar yet. It then falls back to ZeroMQ on the same endpoint rather than
drop: a sidecar that starts later gets every event, and a typo is said once
(endpoint and directory), shown in `stats()` and counted as
``linger_expired`` at close, never true and silently lost. Events that no
sidecar acknowledges for a few seconds (one stopped, or none adopted the
ring) are said once too; `stats()["unacknowledged"]` shows them and since
when, and `ping(timeout)` waits for a sidecar or learns it is absent.

Thread-safety: a Client is meant for one thread, like the ZeroMQ socket under
it. Pass ``threadsafe=True`` to share one between threads (a lock around each
emit, about 0.1 µs), or give each thread its own Client.

Fork: a child process gets a fresh identity and ring (or socket) on its
first emit; the parent's stay the parent's.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from . import presence, ring, wire
from .blob_emit import Blob, BlobRefused, BlobSender
from .compiled import fastemit
from .dial import Dialer
from .presence import Presence
from .transport import QueueFull, Transport, TransportError

log = logging.getLogger("client")

# 30 s at 10,000 events/s, the floor the trading loop asked for (ZeroMQ's
# queue; the ring's is ring.DEFAULT_RING_BYTES).
DEFAULT_QUEUE_SIZE = 300_000
DEFAULT_LINGER = 5.0
STATS_INTERVAL_NS = 1_000_000_000
PING_POLL_SECONDS = 0.01

_time_ns = time.time_ns
_dumps = orjson.dumps
_KINDS = wire.KINDS
_KIND_CODES = {kind: code for code, kind in enumerate(ring.BINARY_KINDS)}
_VERSION = wire.VERSION
_live: set[Client] = set()


class EmitError(ValueError):
    """A call to emit that can never succeed (strict mode only)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _new_client_id() -> str:
    # Host-unique and restart-unique (the sidecar tracks sequence gaps per id),
    # and carrying this process's uid, which the sidecar checks against the ring's owner.
    return ring.new_client_id()


class Client:
    """A non-blocking event emitter; see the module docstring for usage."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        linger: float = DEFAULT_LINGER,
        ring_bytes: int | None = None,
        prefault: bool = False,
        max_event_bytes: int = wire.MAX_EVENT_BYTES,
        max_blob_bytes: int = wire.MAX_BLOB_BYTES,
        strict: bool = False,
        threadsafe: bool = False,
        transport: Transport | str = "auto",
    ) -> None:
        """`transport`: "auto" (a ring for ``ipc://``, ZeroMQ for ``tcp://``),
        "ring", "zmq", or a `client.transport.Transport` of your own (tests). `ring_bytes`:
        None is ``$SIDECAR_RING_BYTES``, else 8 MiB. `prefault`: map
        the whole ring now (~8 ms for 8 MiB) rather than page
        by page as the first lap writes it: for a long-running trading loop."""
        self.endpoint = endpoint or wire.default_endpoint()
        self.queue_size = queue_size
        self.ring_bytes = ring_bytes or ring.default_ring_bytes()  # $SIDECAR_RING_BYTES, else 8 MiB
        self.prefault = prefault
        self.linger = linger
        self.max_event_bytes = min(max_event_bytes, wire.MAX_EVENT_BYTES)
        self.max_blob_bytes = min(max_blob_bytes, wire.MAX_BLOB_BYTES)
        self.strict = strict
        if isinstance(transport, str):
            if transport not in ("auto", "ring", "zmq"):
                raise ValueError(f"transport must be 'auto', 'ring' or 'zmq', not {transport!r}")
            self.ring_dir = ring.ring_dir(self.endpoint) if transport != "zmq" else None
            if transport == "ring" and self.ring_dir is None:
                raise ValueError(f"a ring needs a local ipc:// endpoint, not {self.endpoint!r}")
            self.transport_name = "ring" if self.ring_dir else "zmq"
        else:
            self.ring_dir, self.transport_name = None, type(transport).__name__
        self._presence = Presence(self.endpoint, self.ring_dir)
        # "ring" insists on a ring; "auto" falls back to ZeroMQ where no sidecar made the directory.
        self._dialer = Dialer(self.endpoint, transport if isinstance(transport, str) else "own", self.ring_dir,
                              self._presence, queue_size=queue_size, ring_bytes=self.ring_bytes, prefault=prefault)
        self.client_id = _new_client_id()
        self._seq = 0
        self._dropped: Counter[str] = Counter()
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        self._next_stats_ns = 0
        self._max_record = self.max_event_bytes + self.max_blob_bytes
        self._blobs = BlobSender(self.max_blob_bytes)  # emit's blob branch (client.blob_emit)
        self._transport: Transport | None = None
        self._threadsafe = threadsafe
        self._attach(self._connect() if isinstance(transport, str) else transport)
        self._lock = threading.Lock()
        if threadsafe:
            def emit(kind: str, payload: Any, *, key: str | None = None,
                     ref: str | None = None, blob: Any = None) -> bool:
                with self._lock:
                    return self._emit_now(kind, payload, key=key, ref=ref, blob=blob)

            self.emit = emit  # type: ignore[method-assign]
        # Held until close(), so a client dropped without close() still
        # sends its tail at exit.
        _live.add(self)
        presence.watch(_live_clients, _look)

    def _attach(self, transport: Transport | None) -> None:
        self._transport = transport
        # Bound once: the hot path calls the transport's send without a lookup.
        # Only emit calls it, and only after checking that a transport exists.
        self._send = transport.send if transport is not None else _no_transport
        # The compiled emit takes a ring's common case and hands the rest to
        # the Python one (client/compiled.py); bound as the instance's emit,
        # so a call costs no Python frame. One per ring: a new ring, a new one.
        pure = Client.emit.__get__(self)
        if fastemit is not None and transport is not None and transport.takes_compiled_emit:
            self._emit_now = fastemit.Emitter(self, transport, pure, _KIND_CODES, TransportError).emit
        else:
            self._emit_now = pure
        if not self._threadsafe:
            self.emit = self._emit_now  # type: ignore[method-assign]

    def _connect(self, *, in_emit: bool = False) -> Transport | None:
        """A transport (`client.dial`), attached, with the record limits of the one made."""
        made = self._dialer.connect(self.client_id, in_emit=in_emit)
        self._take_id()
        self._connect_limits(made)
        return made

    def _take_id(self) -> None:
        """The id the dialer went on with: a fresh one, numbered from 1, if the ring's name was taken."""
        if self._dialer.client_id and self._dialer.client_id != self.client_id:
            self.client_id = self._dialer.client_id
            self._seq = 0

    def _connect_limits(self, made: Transport | None) -> None:
        self._attach(made)
        if made is not None:
            self.transport_name = self._dialer.name
            # A ring's record holds the frame and the blobs: half the ring at most.
            self._max_record = self._dialer.max_record or self.max_event_bytes + self.max_blob_bytes
            self.max_event_bytes = min(self.max_event_bytes, self._max_record)

    # -- the hot path ---------------------------------------------------------

    def emit(
        self,
        kind: str,
        payload: Any,
        *,
        key: str | None = None,
        ref: str | None = None,
        blob: Blob | Sequence[Blob] | None = None,
    ) -> bool:
        """Queue one event for the sidecar. True if queued, False if dropped.

        `blob` is binary data that travels in its own frame (an S3 body), a
        `pathlib.Path` of a file to send by reference, or a list of them
        (images to upload together). Blobs of 64 KiB or more, and Paths, go
        to files in the sidecar's blob inbox, not the ring (`client.blobs`).
        """
        transport = self._transport
        if transport is None:
            transport = self._reopen()
            if transport is None:
                return self._drop("closed" if self._closed else "transport_error")
        if kind not in _KINDS:
            return self._misuse("unknown_kind", kind, f"unknown event kind {kind!r}")
        seq = self._seq + 1
        now = _time_ns()
        try:
            # wire.encode, inlined: this line is most of emit's cost.
            frame = _dumps([_VERSION, self.client_id, seq, kind, key, ref, now, payload])
        except TypeError as exc:
            return self._misuse("unserializable", kind, f"payload is not JSON-serialisable: {exc}")
        if len(frame) > self.max_event_bytes:
            return self._misuse("too_large", kind, f"event is {len(frame)} bytes, limit {self.max_event_bytes}")
        try:
            if blob is None:
                self._send(frame)
            else:
                self._blobs.send(transport, frame, seq, blob, self.client_id, self._max_record)
        except BlobRefused as refused:
            if refused.reason == "blob_backlog":
                return self._drop(refused.reason)
            return self._misuse(refused.reason, kind, refused.detail)
        except QueueFull:
            return self._drop("queue_full")
        except TransportError:
            return self._transport_failed(transport)
        self._seq = seq
        if now >= self._next_stats_ns:
            self._next_stats_ns = now + STATS_INTERVAL_NS
            self._tick()
        return True

    # -- outcomes -------------------------------------------------------------

    def _transport_failed(self, transport: Transport) -> bool:
        if transport.quarantined:
            log.error("the sidecar set this client's ring aside as corrupt; starting a new one")
            transport.after_fork()  # let go without writing: the sidecar owns the old file now
            self._attach(self._connect(in_emit=True))
            return self._drop("ring_quarantined")
        return self._drop("transport_error")

    def _drop(self, reason: str) -> bool:
        self._dropped[reason] += 1
        return False

    def _misuse(self, reason: str, kind: str, detail: str) -> bool:
        if self.strict:
            raise EmitError(reason, detail)
        if (reason, kind) not in self._warned:
            self._warned.add((reason, kind))
            log.warning("emit dropped an event (%s); further drops of this kind are only counted", detail)
        return self._drop(reason)

    def _tick(self) -> None:
        """Once a second, inside an emit: tell the transport how far the
        sequence has got, and report our counters."""
        if self._transport is not None:
            self._transport.tick(self._seq)
        self._send_control(wire.STATS)

    def _send_control(self, kind: str) -> None:
        transport = self._transport
        if transport is None:
            return
        frame = wire.encode(self.client_id, 0, kind, None, None, _time_ns(), self.stats())
        try:
            transport.send(frame)
        except (QueueFull, TransportError):
            pass  # the next report carries the same totals

    # -- lifecycle ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """This client's counters: sent (= last sequence number), drops by
        reason, and what waits for a sidecar (`Presence.report` says what each means)."""
        return {
            "client_id": self.client_id,
            "pid": os.getpid(),
            "transport": self.transport_name,
            "sent": self._seq,  # also the last sequence number used
            "dropped": dict(self._dropped),
            **self._presence.report(self._transport, self._seq),
        }

    def ping(self, timeout: float = 5.0) -> bool:
        """Wait at most `timeout` seconds for a sidecar to show that it reads
        this client (`Presence.answered`); False if none did in time. It
        sleeps: at start-up or in a script, never inside the trading loop.

            with Client() as sidecar:
                if not sidecar.ping(30):
                    sys.exit(f"no sidecar reads {sidecar.endpoint}: {sidecar.stats()}")

        A Client that fell back to ZeroMQ for want of a ring directory and has
        sent nothing yet moves onto a ring once the directory is there.
        """
        deadline = time.monotonic() + timeout
        noted = False
        while True:
            with self._lock:
                if self._closed:
                    return False
                made = self._dialer.ring_now(self.client_id, self._seq, self._transport)
                if made is not None:
                    self._take_id()
                    if self._transport is not None:
                        self._transport.close(0.0)  # only the counters' notes were queued there
                    self._connect_limits(made)
                    self._presence.reset()
                if self._transport is not None:
                    if not noted:
                        self._send_control(wire.STATS)  # something for the sidecar to acknowledge
                        noted = True
                    if self._presence.answered(self._transport):
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(PING_POLL_SECONDS)

    def close(self, linger: float | None = None) -> None:
        """Announce the last sequence number, then wait at most `linger`
        seconds (default: the constructor's) for queued events to leave."""
        # Under the emit lock: a threadsafe client's other threads may be in
        # emit, whose ring must not be unmapped under it.
        with self._lock:
            self._close(linger)

    def _close(self, linger: float | None) -> None:
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        transport = self._transport
        if transport is None:
            return
        frame = wire.encode(self.client_id, 0, wire.BYE, None, None, _time_ns(), self.stats())
        self._presence.closing(transport, self._seq, self.client_id)
        self._attach(None)
        try:
            # A ring keeps room for this one, so a full ring still says goodbye.
            transport.send_last(frame)
        except (QueueFull, TransportError):
            pass  # ZeroMQ's queue is full: the sidecar counts the tail it never saw as gaps
        self._blobs.close()
        # ZeroMQ drops its queue when the linger runs out with no sidecar connected.
        lost = transport.close(self.linger if linger is None else linger, self._seq)
        if lost:
            self._dropped["linger_expired"] += lost
            if transport.peer_connected_at_close:
                log.warning("client %s closed before the sidecar at %s took all its queued events "
                            "(linger %.1f s ran out): up to %d may be lost; close(linger=...) longer",
                            self.client_id, self.endpoint, self.linger if linger is None else linger, lost)

    def _after_fork_in_child(self) -> None:
        # The parent's ring or socket stays the parent's. The child gets its
        # own on its first emit, if it emits.
        if self._transport is not None:
            self._transport.after_fork()
        self._attach(None)
        self._blobs.after_fork()
        self._lock = threading.Lock()  # another thread may have held it at fork()
        self.client_id = _new_client_id()
        self._seq = 0
        self._dropped = Counter()
        self._next_stats_ns = 0
        self._dialer.rings_made = self._dialer.retry_ns = 0
        self._presence.reset()
        self._presence.told_unreachable = False

    def _reopen(self) -> Transport | None:
        """A transport for an emit that has none: after fork, or once a second
        after a failure (a ring directory that did not exist yet, say)."""
        if self._closed or _time_ns() < self._dialer.retry_ns:
            return None
        presence.watch(_live_clients, _look)  # a forked child has no watcher thread yet
        return self._connect(in_emit=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Client {self.client_id} {self.endpoint} {state} sent={self._seq}>"


def _no_transport(frame: bytes) -> None:
    raise TransportError("no transport")


def _live_clients() -> list[Client]:
    return list(_live)


def _look(client: Client) -> None:
    """The watcher's once-a-second look (its own thread): skipped, never
    waited for, while the client is emitting (threadsafe) or closing."""
    if client._lock.acquire(blocking=False):
        try:
            if not client._closed:
                client._presence.look(client._transport, client._seq, client.client_id)
        finally:
            client._lock.release()


def _reset_clients_in_child() -> None:
    for client in list(_live):
        client._after_fork_in_child()


def _close_all_at_exit() -> None:
    # A short-lived emitter that forgets close() still sends its tail.
    for client in list(_live):
        client.close()


os.register_at_fork(after_in_child=_reset_clients_in_child)
atexit.register(_close_all_at_exit)
