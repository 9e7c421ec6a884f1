"""How the client hands a frame to the sidecar, behind one small interface.

A `Transport` has `send(frame)`, `send_blobs(frame, blobs)` and
`close(linger, sent)` of its own; `send_last`, `quarantined`, `tick` and
`after_fork` have defaults, so `Client` never asks which transport it holds.
Every send either queues the message at once or raises `QueueFull` (the
local queue is at its limit) or `TransportError` (anything else); none
blocks. Two implement it: `client.ring.RingWriter`, a shared-memory ring for
a sidecar on this host (`ipc://` endpoints), and `ZmqTransport`, a PUSH
socket, for `tcp://` endpoints and old sidecars.

    class Recorder(Transport):            # a test double: keeps what it is given
        def __init__(self) -> None: self.frames: list[bytes] = []
        def send(self, frame: bytes) -> None: self.frames.append(frame)
        def send_blobs(self, frame, blobs) -> None: self.frames.append(frame)
        def close(self, linger: float, sent: int = 0) -> int: return 0

    Client(transport=Recorder())
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import zmq

# pyzmq documents that zero-copy sends cost more than copying below tens of
# kilobytes, because the IO thread must track the buffer's lifetime.
ZERO_COPY_MIN_BYTES = 64 * 1024

_NOBLOCK = zmq.NOBLOCK
_SNDMORE_NOBLOCK = zmq.NOBLOCK | zmq.SNDMORE


class QueueFull(Exception):
    """The local send queue is at its high-water mark: the message was not queued."""


class TransportError(Exception):
    """The transport cannot queue the message for another reason (closed, broken)."""


class Transport(ABC):
    """What `Client` asks of a way to the sidecar; see the module docstring."""

    # True for a ring the compiled emit (client/compiled.py) may write into directly.
    takes_compiled_emit = False

    @abstractmethod
    def send(self, frame: bytes) -> None:
        """Queue one single-part message, or raise QueueFull / TransportError."""

    @abstractmethod
    def send_blobs(self, frame: bytes, blobs: Sequence[bytes | bytearray | memoryview]) -> None:
        """Queue the frame and its blobs as one message, or raise QueueFull / TransportError."""

    # Set by close(): whether a reader was still connected when it let go (then
    # what close() counts is a bound, not an exact count: ZmqTransport).
    peer_connected_at_close: bool = False

    @abstractmethod
    def close(self, linger: float, sent: int = 0) -> int:
        """Let go, waiting at most `linger` seconds for queued messages to leave.
        Returns how many of the `sent` (the last sequence number) were dropped
        unsent when it ran out (at most: see `peer_connected_at_close`): 0 if
        none were, or if the transport cannot tell."""

    def send_last(self, frame: bytes) -> None:
        """The goodbye `Client.close` sends; a transport that keeps room for it uses that room."""
        self.send(frame)

    @property
    def ring_dir(self) -> str | None:
        """The ring directory whose sidecar may publish a blob inbox; None: blobs go with the event."""
        return None

    def send_refs(self, frame: bytes, parts: Sequence[bytes | bytearray | memoryview | str]) -> None:
        """Queue the frame and its blobs, a `str` part naming a file in the blob inbox
        (`client.blobs`); only a transport with a `ring_dir` is asked."""
        raise TransportError("this transport cannot send blob references")

    @property
    def quarantined(self) -> bool:
        """True once the sidecar has set this transport aside: Client lets go of it and makes a new one."""
        return False

    def tick(self, sent: int) -> None:  # noqa: B027  (a default: most transports need no tick)
        """Once a second, inside an emit: `sent` is the last sequence number
        handed over (ZmqTransport notes where it stood when the sidecar left)."""

    def after_fork(self) -> None:  # noqa: B027  (a default, not a forgotten abstract method)
        """In a forked child: let go of the parent's transport without using it."""

    # What the reader said, for `Client.stats` and `client.presence` (slow paths
    # only). A ring's reader acknowledges what its journal holds; a socket's
    # reader only shows that it is connected; a transport of one's own may say neither.

    @property
    def adopted(self) -> bool | None:
        """Whether a sidecar has taken this transport's output on (a ring: its ack file); None: cannot tell."""
        return None

    @property
    def acknowledged(self) -> int:
        """Bytes the sidecar's journal holds of what was written (0 where nothing acknowledges)."""
        return 0

    @property
    def unacknowledged(self) -> int | None:
        """Bytes written that the sidecar has not journaled yet; None where nothing acknowledges."""
        return None

    def peer_connected(self) -> bool | None:
        """Whether a sidecar is connected now; None where the transport cannot tell."""
        return None


class ZmqTransport(Transport):
    """A PUSH socket connected to the sidecar's PULL socket.

    `queue_size` is the send high-water mark in messages: while the sidecar is
    absent or slow, that many messages wait in this process and flow when it
    is back. Each transport has its own context, so closing one never waits on
    another's queue.
    """

    def __init__(self, endpoint: str, *, queue_size: int, immediate: bool = False) -> None:
        self._ctx = zmq.Context(io_threads=1)
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, queue_size)
        self.queue_size = queue_size
        # immediate: refuse (QueueFull) rather than queue while no sidecar is
        # connected; for one-shot emitters that must know, not for trading loops.
        sock.setsockopt(zmq.IMMEDIATE, int(immediate))
        # A socket's own linger is set at close(); until then never hang the
        # process on exit if the interpreter tears the context down first.
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._ctx.term()
            raise TransportError(f"cannot connect to {endpoint!r}: {exc}") from None
        self._sock = sock
        # Whether a sidecar is connected, from libzmq's own events, read on
        # the slow paths only (`peer_connected`); the close() count needs it.
        self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._connected = False
        self._monitor_lock = threading.Lock()
        self.ever_connected = False
        # The last sequence number sent when the sidecar was first seen gone
        # (`tick`); None while it is connected.
        self._sent_at_disconnect: int | None = None
        # pyzmq's Socket.send is a Python layer (for routing ids and groups,
        # unused here) over the Cython send; calling the latter directly
        # saves about a quarter of a microsecond on every emit.
        self._raw_send = super(zmq.Socket, sock).send

    def send(self, frame: bytes) -> None:
        try:
            self._raw_send(frame, _NOBLOCK)
        except zmq.Again:
            raise QueueFull from None
        except zmq.ZMQError as exc:
            raise TransportError(str(exc)) from None

    def send_blobs(self, frame: bytes, blobs: Sequence[bytes | bytearray | memoryview]) -> None:
        # Multipart messages are atomic: once the first frame is accepted the
        # others cannot meet the high-water mark.
        try:
            self._raw_send(frame, _SNDMORE_NOBLOCK)
            last = len(blobs) - 1
            for n, blob in enumerate(blobs):
                self._raw_send(blob, _NOBLOCK if n == last else _SNDMORE_NOBLOCK,
                               len(blob) < ZERO_COPY_MIN_BYTES)  # type: ignore[call-overload]
        except zmq.Again:
            raise QueueFull from None
        except zmq.ZMQError as exc:
            raise TransportError(str(exc)) from None

    def after_fork(self) -> None:
        pass  # libzmq's sockets are the parent's: the child must not even close them

    def tick(self, sent: int) -> None:
        # Where the sequence stood when the sidecar went away, so that a
        # close() whose linger runs out can count what it drops.
        if self.peer_connected():
            self._sent_at_disconnect = None
        elif self._sent_at_disconnect is None:
            self._sent_at_disconnect = sent if self.ever_connected else 0

    def peer_connected(self) -> bool:
        """Whether a sidecar is connected now (reads libzmq's events; not for the hot path).

        The emitting thread (its tick) and the client's watcher both ask; a
        ZeroMQ socket is for one thread at a time, so one reads and the other
        takes the answer it last read rather than wait."""
        if not self._monitor_lock.acquire(blocking=False):
            return self._connected
        try:
            while self._monitor.poll(0):
                event = self._monitor.recv_multipart()
                kind = int.from_bytes(event[0][:2], "little")
                self._connected = kind == zmq.EVENT_HANDSHAKE_SUCCEEDED
                self.ever_connected |= self._connected
        finally:
            self._monitor_lock.release()
        return self._connected

    def close(self, linger: float, sent: int = 0) -> int:
        """Wait at most `linger` seconds for queued messages to leave, then
        drop them. If the linger ran out with no sidecar connected, whatever
        was queued since it left is gone: returns how many of `sent` that is."""
        started = time.monotonic()
        self._sock.close(linger=int(linger * 1000))
        connected = self.peer_connected_at_close = self.peer_connected()
        self._monitor.close(0)
        self._ctx.term()
        # libzmq keeps the linger in whole milliseconds: allow for its rounding.
        if time.monotonic() - started < linger - 0.005:
            return 0  # everything left in time
        if connected:
            # The sidecar was there but had not taken the whole queue when the
            # linger ran out (a burst larger than it reads in `linger`, a loaded
            # host): libzmq drops the rest and does not say how much that was.
            # Count the most it can have been, its queue's bound, rather than 0.
            return min(sent, self.queue_size)
        # Every event since the sidecar was last seen gone (all of them if it
        # never was connected). Connections are looked at once a second
        # (`tick`), so a sidecar that left within the last second is not
        # counted here; its gap shows in the sidecar's sequence numbers when
        # it returns.
        since = 0 if not self.ever_connected else self._sent_at_disconnect
        return sent - since if since is not None and sent > since else 0

