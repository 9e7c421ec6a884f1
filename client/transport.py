"""How the client hands a frame to the sidecar, behind one small interface.

A transport has `send(frame)`, `send_blobs(frame, blobs)`, `close(linger)`
and `after_fork()`. Both sends either queue the message at once or raise
`QueueFull` (the local queue is at its limit) or `TransportError` (anything
else); neither blocks. Two implement it: `client.ring.RingWriter`, a
shared-memory ring for a sidecar on this host (`ipc://` endpoints), and
`ZmqTransport`, a PUSH socket, for `tcp://` endpoints and old sidecars.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

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


class Transport(Protocol):
    def send(self, frame: bytes) -> None: ...

    def send_blobs(self, frame: bytes, blobs: Sequence[bytes | bytearray | memoryview]) -> None: ...

    def close(self, linger: float) -> bool | None:
        """Let go; True if queued messages were dropped when `linger` ran out."""

    def after_fork(self) -> None:
        """In a forked child: let go of the parent's transport without using it."""


class ZmqTransport:
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
        self.ever_connected = False
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

    def peer_connected(self) -> bool:
        """Whether a sidecar is connected now (reads libzmq's events; not for the hot path)."""
        while self._monitor.poll(0):
            event = self._monitor.recv_multipart()
            kind = int.from_bytes(event[0][:2], "little")
            self._connected = kind == zmq.EVENT_HANDSHAKE_SUCCEEDED
            self.ever_connected |= self._connected
        return self._connected

    def close(self, linger: float) -> bool:
        """Wait at most `linger` seconds for queued messages to leave, then
        drop them. Returns True if the linger ran out with no sidecar
        connected: then whatever was queued since it left is gone."""
        started = time.monotonic()
        self._sock.close(linger=int(linger * 1000))
        connected = self.peer_connected()
        self._monitor.close(0)
        self._ctx.term()
        # libzmq keeps the linger in whole milliseconds: allow for its rounding.
        return time.monotonic() - started >= linger - 0.005 and not connected

