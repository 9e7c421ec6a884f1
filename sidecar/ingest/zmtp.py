"""The ingest socket: ZMTP 3 (NULL mechanism) spoken by ingest itself, over a
plain listening socket, so that what it holds is bounded in bytes.

    receiver = Receiver.bind("tcp://127.0.0.1:5555", Limits.of(cfg.ingest))   # IngestError if unusable
    poller.register(receiver.fileno(), zmq.POLLIN)     # readable while anything waits
    messages = receiver.read(limit=4096, budget=32 << 20)  # complete messages (lists of frames), at once
    refused = receiver.take_refused()                  # {reason: Refused}: what it closed or skipped, and why
    receiver.close()

The producers are unchanged: pyzmq PUSH sockets (libzmq 4.x, ZMTP 3.1, or
3.0 for older ones) connect to it as to a PULL socket. Each connection
gets the greeting (signature, version 3.1, mechanism NULL, not as-server)
and the READY command (Socket-Type PULL) at once; it must send a 3.x NULL
greeting and READY with Socket-Type PUSH, then frames: a flags byte (MORE,
LONG, COMMAND), a size of one byte or eight, the body (RFC 23 and 37,
libzmq's v2/v3_1 decoders). PING is answered with PONG, other commands
after the handshake are ignored.

Why not libzmq's PULL: libzmq holds a whole message before the application
sees any frame, MAXMSGSIZE bounds one frame and RCVHWM counts messages, so
one message of 60 frames of 16 MiB was a gigabyte, and a queue of 10,000
1 MiB frames 10 GB. Why not a ZMQ_STREAM socket with this parser behind it
(the first design): its RCVHWM counts chunks of 8 KiB per connection, so
the bound is connections x RCVHWM x 8 KiB, and it keeps libzmq's tail
loss on ipc:// (a peer that hangs up while libzmq has stopped reading its
connection for a full queue: `stream_engine_base_t::in_event`, with
input stopped, takes the hang-up as an I/O error and never reads what the
kernel still holds, the ~128 events a burst-then-exit producer lost at
RCVHWM 16; a Unix socket's peer closing raises EPOLLHUP, a TCP FIN alone
does not, hence ipc:// only). ZMQ_STREAM does work over ipc:// in libzmq
4.3.5; it is the tail and the per-connection chunk count that rule it out. Reading the sockets ourselves,
every byte ingest holds is one it parsed, and a connection is read until its
end of file, so what a producer wrote before exiting is all read:

- Each connection keeps at most one partial message, parsed as it arrives.
  A frame's size is known from its header, before its body: a frame over
  `Limits.frame` (MAXMSGSIZE, as before) closes the connection; a message
  of more than 1 + MAX_BLOBS frames (`bad_frames`), an event frame over
  `max_message_bytes` or blobs over `max_blob_bytes` (`too_large`) is
  counted and skipped, its bodies read and dropped, never held: the
  connection and the messages behind it go on, as they did when libzmq
  delivered such a message whole for ingest to refuse.
- A message of at most SMALL_BYTES (64 KiB, all its frames) is held from
  its own allowance, at most one partial message per connection, so
  `Limits.connections` x SMALL_BYTES: small events are never refused for
  room that large messages in flight hold. The bodies of larger partial
  messages across all connections are at most `Limits.held` bytes,
  reserved from each frame's header (a message crossing SMALL_BYTES moves
  all it holds there); a message that would need more is skipped
  (`no_room`). A frame's buffer is not allocated at its header: it grows
  as the body arrives, so headers alone cost nothing but the reservation.
  Complete messages not yet taken are about READY_BYTES (reading stops
  there), apart from that room.
- A connection mid-message or mid-handshake that sends nothing for
  STALL_SECONDS, or whose handshake or message is not whole MESSAGE_SECONDS
  after its first byte (however it trickles), is closed (`stalled`), so
  neither a silent nor a trickling one keeps room or a slot for long.
- At most `Limits.connections` connections: one more closes, in this order,
  the oldest still in its handshake, else the one whose partial message is
  oldest, else the longest idle that has nothing unread in the kernel,
  else the new one (`too_many_connections`). An idle producer is only
  chosen when every other connection is idle too; closed, it reconnects
  (libzmq does). On ipc://, a peer uid (SO_PEERCRED) holding a quarter
  of the connections (UID_SHARE) makes room from its own connections
  only, and another uid from those of uids over their share first, so a
  group member filling the slots leaves room for others. Residual: an
  idle connection is checked for unread bytes (FIONREAD) and then closed;
  bytes that arrive between the two are lost though libzmq counted them
  sent (a window of microseconds, and only when every connection is idle).
- Back-pressure is the kernel's: while ingest does not read (a journal it
  cannot write), nothing is read from the sockets, their buffers (RCVBUF)
  fill and the producers' libzmq queues hold the rest, as before.

A protocol violation (a bad greeting, another mechanism or socket type, a
command where a message continues) closes the connection and is counted
(`bad_zmtp`, `bad_socket_type`). No security mechanism is configured on
the socket (NULL, as the PULL socket had): ipc:// is guarded by the
socket file's mode, tcp:// by where it is bound.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from client import wire
from sidecar.config import IngestConfig
from sidecar.errors import IngestError

SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
GREETING = SIGNATURE + bytes([3, 1]) + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)  # 64 bytes

MORE, LONG, COMMAND = 1, 2, 4
COMMAND_MAX = 4096         # a command's body at most (READY with metadata; PING is 23)
READ_BYTES = 256 << 10     # one recv per ready connection per round
READY_BYTES = 8 << 20      # complete messages waiting for a `read`: no more reads once this much is parsed
DIRECT_BYTES = 64 << 10    # a frame body larger than this goes into its own buffer, grown as it arrives
SAMPLE_BYTES = 256         # of a refused connection or message, what is kept as its reject sample
STALL_SECONDS = 30.0       # mid-handshake or mid-message, silent this long: closed
MESSAGE_SECONDS = 30.0     # a handshake or a message not whole this long after its first byte: closed
SMALL_BYTES = 64 << 10     # a message up to this is held from its own allowance, never refused for room
SWEEP_SECONDS = 1.0        # stalled connections are looked for this often
MAX_CONNECTIONS = 256
UID_SHARE = 4              # on ipc://, when full, a uid holding 1/UID_SHARE of the connections makes room from its own
LISTEN_BACKLOG = 128
RCVBUF = 1 << 20           # the kernel's buffer per connection


def _command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    return (bytes([COMMAND, len(data)]) if len(data) < 256 else bytes([COMMAND | LONG]) + len(data).to_bytes(8, "big")) + data


READY = _command(b"READY", b"\x0bSocket-Type" + (4).to_bytes(4, "big") + b"PULL")


@dataclass(frozen=True, kw_only=True)
class Limits:
    frame: int          # one frame's body: over it the connection closes (MAXMSGSIZE)
    event: int          # the first frame of a message
    blobs: int          # the frames after it, together
    frames: int = 1 + wire.MAX_BLOBS
    held: int           # bodies of partial messages over SMALL_BYTES, across all connections
    connections: int = MAX_CONNECTIONS

    @classmethod
    def of(cls, cfg: IngestConfig) -> Limits:
        largest = cfg.max_message_bytes + cfg.max_blob_bytes
        return cls(frame=max(cfg.max_message_bytes, cfg.max_blob_bytes) + 1024, event=cfg.max_message_bytes,
                   blobs=cfg.max_blob_bytes, held=2 * largest + (1 << 20))


@dataclass
class Refused:
    """One reason's refusals since the last `take_refused`: how many, and the first one's detail and bytes."""

    detail: str
    sample: bytes
    count: int = 1


class _Close(Exception):
    """Close this connection, counted under `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_GREETING, _HANDSHAKE, _OPEN = 0, 1, 2


class _Conn:
    __slots__ = ("blobs", "body", "body_more", "frames", "got", "large", "last", "pending", "reserved", "size",
                 "skip", "sock", "started", "state", "uid")

    def __init__(self, sock: socket.socket, now: float, uid: int | None = None) -> None:
        self.sock = sock
        self.uid = uid                    # the peer's uid (ipc://), for its share of the connections
        self.state = _GREETING
        self.pending = b""                # bytes read and not yet parsed (a header, a greeting, a short frame)
        self.frames: list[bytes] = []     # the message so far
        self.blobs = 0                    # bytes of its frames after the first
        self.skip: str | None = None      # the reason it is refused: its frames are read and dropped
        self.reserved = 0                 # bytes of `Limits.held` reserved for this message
        self.large = False                # `reserved` counts against `Limits.held` (over SMALL_BYTES)
        self.body: bytearray | None = None  # a large frame's body so far, grown as it arrives...
        self.size = 0                     # ...to this size
        self.got = 0                      # what is left of a skipped body
        self.body_more = False
        self.last = now                   # when it last sent anything
        self.started: float | None = now  # when the handshake or the partial message began (None: between messages)

    @property
    def mid(self) -> bool:
        """Within a handshake or a message: silent now, it would hold the sidecar's room."""
        return (self.state != _OPEN or bool(self.frames) or self.skip is not None or self.body is not None
                or bool(self.pending))


class Receiver:
    """ZMTP 3 PUSH peers on one listening socket, read without blocking (the module docstring says how)."""

    def __init__(self, listener: socket.socket, limits: Limits, *, path: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._listener = listener
        self._path = path  # an ipc:// socket file, removed at close
        self._epoll = select.epoll()
        self._epoll.register(listener.fileno(), select.EPOLLIN)
        self._conns: dict[int, _Conn] = {}
        self._ready: deque[tuple[list[bytes], int]] = deque()  # complete messages, with their bytes
        self._held = 0  # bytes reserved by partial messages and complete ones not yet taken...
        self._ready_bytes = 0  # ...of which complete ones (about READY_BYTES at most)
        self._large = 0  # bytes reserved by partial messages over SMALL_BYTES (at most `Limits.held`)
        self._uids: dict[int, int] = {}  # ipc://: connections per peer uid
        self._refused: dict[str, Refused] = {}
        self._swept = clock()
        self.last_bytes = 0  # what the last `read` handed out
        self._scratch = memoryview(bytearray(READ_BYTES))  # skipped bodies land here

    @classmethod
    def bind(cls, endpoint: str, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> Receiver:
        """Listen on an ipc://PATH or tcp://HOST:PORT endpoint; IngestError if it cannot."""
        try:
            if endpoint.startswith("ipc://"):
                path = endpoint[len("ipc://"):]
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    listener.bind(path)
                except OSError:
                    listener.close()
                    raise
            else:
                path = None
                listener = _tcp_listener(endpoint)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # inherited by each connection
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except (OSError, ValueError) as exc:
            raise IngestError(f"cannot bind ingest endpoint {endpoint}: {exc}; "
                              "is another sidecar running, or is [ingest] endpoint wrong?") from None
        return cls(listener, limits, path=path, clock=clock)

    @property
    def address(self) -> str:
        """The endpoint bound (a tcp:// port of 0 says which it got)."""
        if self._path is not None:
            return f"ipc://{self._path}"
        host, port = self._listener.getsockname()[:2]
        return f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"

    def fileno(self) -> int:
        """Readable while a connection or anything on one waits (for a poller)."""
        return self._epoll.fileno()

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` for anything to read."""
        return bool(self._ready) or bool(self._epoll.poll(timeout_ms / 1000, 1))

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def held(self) -> int:
        """Bytes reserved for messages: partial ones, and complete ones not yet read."""
        return self._held

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._epoll.close()
        self._listener.close()
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass

    def take_refused(self) -> dict[str, Refused]:
        """What was refused since the last call, by reason (the caller counts and records it)."""
        refused, self._refused = self._refused, {}
        return refused

    # -- reading ----------------------------------------------------------------

    def read(self, limit: int, budget: int) -> list[list[bytes]]:
        """Up to `limit` complete messages and about `budget` bytes of them, without blocking."""
        now = self.clock()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            self._sweep(now)
        out: list[list[bytes]] = []
        ready = self._ready
        self.last_bytes = 0
        while True:
            while ready and len(out) < limit and budget > 0:
                frames, size = ready.popleft()
                self._held -= size
                self._ready_bytes -= size
                budget -= size
                self.last_bytes += size
                out.append(frames)
            if len(out) >= limit or budget <= 0:
                return out
            events = self._epoll.poll(0)
            progress = False
            for fd, _ in events:
                if fd == self._listener.fileno():
                    progress |= self._accept(now)
                else:
                    conn = self._conns.get(fd)
                    if conn is not None:
                        progress |= self._read_one(conn, now)
                if self._ready_bytes >= READY_BYTES:
                    break  # the rest wait in the kernel (epoll takes them first next time)
            if not progress:
                return out

    def _accept(self, now: float) -> bool:
        """Take the connections waiting; False if there was none (or none could be taken)."""
        took = False
        for _ in range(LISTEN_BACKLOG):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return took
            except OSError as exc:  # EMFILE and the like: it stays in the backlog
                self._refuse("too_many_connections", f"accept failed: {exc.strerror}", b"")
                return took
            took = True
            uid = _peer_uid(sock) if sock.family == socket.AF_UNIX else None
            if len(self._conns) >= self.limits.connections and not self._make_room(uid):
                self._refuse("too_many_connections", f"over {self.limits.connections} connections: the new one "
                                                     "closed", b"")
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sent = sock.send(GREETING + READY)  # into an empty send buffer: whole
            except OSError:
                sent = 0
            if sent != len(GREETING) + len(READY):
                sock.close()
                continue
            conn = _Conn(sock, now, uid)
            self._conns[sock.fileno()] = conn
            if uid is not None:
                self._uids[uid] = self._uids.get(uid, 0) + 1
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        return took

    def _make_room(self, uid: int | None = None) -> bool:
        """Close one connection for a new one (from `uid` on ipc://): one still in its handshake, else the one
        whose partial message is oldest, else the longest idle with nothing unread in the kernel; False if none.
        On ipc://, a uid holding its share (1/UID_SHARE) makes room from its own connections; another from those
        of uids over their share, if any."""
        conns = list(self._conns.values())
        if uid is not None:
            share = max(1, self.limits.connections // UID_SHARE)
            if self._uids.get(uid, 0) >= share:
                conns = [c for c in conns if c.uid == uid]
            else:
                over = [c for c in conns if self._uids.get(c.uid, 0) > share]  # type: ignore[arg-type]
                conns = over or conns
        handshake = [c for c in conns if c.state != _OPEN]
        partial = [c for c in conns if c.state == _OPEN and c.mid]
        victim: _Conn | None = None
        if handshake:
            victim, why = min(handshake, key=lambda c: c.started or 0.0), "one in its handshake"
        elif partial:
            victim, why = min(partial, key=lambda c: c.started or 0.0), "the oldest partial message's"
        else:
            # One with bytes unread in the kernel is not idle: closing it would lose them.
            why = "the longest idle"
            victim = next((c for c in sorted(conns, key=lambda c: c.last) if not _unread(c.sock)), None)
        if victim is None:
            return False
        self._refuse("too_many_connections", f"over {self.limits.connections} connections: {why} closed", b"")
        self._drop(victim)
        return True

    def _sweep(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if not conn.mid:
                continue
            what = "mid-message" if conn.state == _OPEN else "mid-handshake"
            if now - conn.last >= STALL_SECONDS:
                detail = f"{what}, silent for {now - conn.last:.0f} s"
            elif conn.started is not None and now - conn.started >= MESSAGE_SECONDS:
                detail = f"{what}, not whole {now - conn.started:.0f} s after its first byte"
            else:
                continue
            self._refuse("stalled", detail, conn.pending[:SAMPLE_BYTES])
            self._drop(conn)

    def _read_one(self, conn: _Conn, now: float) -> bool:
        """One recv from a readable connection, and what it completes; False if it had nothing."""
        data = b""
        try:
            if conn.body is not None:  # a large body: grown as it arrives, never beyond what was sent
                chunk = conn.sock.recv(min(conn.size - len(conn.body), READ_BYTES))
                n = len(chunk)
                if n:
                    conn.body += chunk
                    if len(conn.body) == conn.size:
                        self._body_done(conn)
            elif conn.body is None and conn.got:  # a skipped body: read and dropped
                n = conn.sock.recv_into(self._scratch, min(conn.got, READ_BYTES))
                conn.got -= n
                if n and not conn.got:
                    self._frame_done(conn, b"", conn.body_more)
            else:
                data = conn.sock.recv(READ_BYTES)
                n = len(data)
                if n:
                    data = conn.pending + data if conn.pending else data
                    self._parse(conn, data)
        except _Close as exc:
            self._refuse(exc.reason, exc.detail, data[:SAMPLE_BYTES])
            self._drop(conn)
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # reset by the peer: as its end
            n = 0
        if n:
            conn.last = now
            if conn.started is None and conn.mid:
                conn.started = now  # a message begun in this read
        else:  # the peer is gone: a partial message goes with it, as with libzmq
            self._drop(conn)
        return True

    def _parse(self, conn: _Conn, data: bytes) -> None:
        """Consume `data`: greeting, handshake and frames; keep what is not whole yet in `pending`."""
        pos, end = 0, len(data)
        if conn.state == _GREETING:
            if end < 64:
                _check_greeting(data)  # refuse a wrong start at once
                conn.pending = data
                return
            _check_greeting(data[:64])
            conn.state, pos = _HANDSHAKE, 64
        limits = self.limits
        ready = self._ready
        while pos < end:
            flags = data[pos]
            if not flags and conn.state == _OPEN and not conn.frames and conn.skip is None:
                # The common case, inline: an event alone in its message, whole here, within the limits.
                size = data[pos + 1] if end - pos >= 2 else DIRECT_BYTES + 1
                start = pos + 2
                if start + size <= end and size <= limits.event:
                    pos = start + size
                    self._held += size
                    self._ready_bytes += size
                    ready.append(([data[start:pos]], size))
                    conn.started = None
                    continue
            if flags & LONG:
                if end - pos < 9:
                    break
                size = int.from_bytes(data[pos + 1:pos + 9], "big")
                start = pos + 9
            else:
                if end - pos < 2:
                    break
                size = data[pos + 1]
                start = pos + 2
            if flags & ~(MORE | LONG | COMMAND):
                raise _Close("bad_zmtp", f"frame flags {flags:#04x}")
            if flags & COMMAND:
                if size > COMMAND_MAX:
                    raise _Close("bad_zmtp", f"a command of {size} bytes")
                if end - start < size:
                    break
                self._command(conn, data[start:start + size])
                pos = start + size
                continue
            if conn.state != _OPEN:
                raise _Close("bad_zmtp", "a message before READY")
            if size > limits.frame:
                raise _Close("too_large", f"a frame of {size} bytes, limit {limits.frame}")
            whole = end - start >= size
            if not whole and size <= DIRECT_BYTES:
                break  # a short frame split across reads: parsed again when whole
            self._admit(conn, size)
            more = bool(flags & MORE)
            if whole:  # the common case of small events
                pos = start + size
                self._frame_done(conn, data[start:pos] if conn.skip is None else b"", more)
                continue
            # The body goes on in later reads: into its own buffer, or dropped as it comes.
            have = data[start:]
            conn.pending, conn.body_more = b"", more
            if conn.skip is not None:
                conn.got = size - len(have)
            else:  # reserved in full from the header, allocated as it comes
                conn.body = bytearray(have)
                conn.size = size
            return
        conn.pending = data[pos:]

    def _admit(self, conn: _Conn, size: int) -> None:
        """Decide, from its header, whether a data frame joins its message or the message is skipped."""
        if conn.skip is not None:
            return
        index = len(conn.frames)
        limits = self.limits
        if index >= limits.frames:
            reason, detail = "bad_frames", f"more than {limits.frames} frames in a message"
        elif index == 0 and size > limits.event:
            reason, detail = "too_large", f"event of {size} bytes, limit {limits.event}"
        elif index and conn.blobs + size > limits.blobs:
            reason, detail = "too_large", f"blobs of over {conn.blobs + size} bytes, limit {limits.blobs}"
        elif not conn.large and conn.reserved + size <= SMALL_BYTES:  # small: its own allowance, never refused
            if index:
                conn.blobs += size
            conn.reserved += size
            self._held += size
            return
        elif self._large + size + (0 if conn.large else conn.reserved) > limits.held:
            reason, detail = "no_room", f"{self._large} bytes held for other large partial messages, " \
                                        f"limit {limits.held}"
        else:
            if not conn.large:  # over SMALL_BYTES now: all of it counts against `Limits.held`
                conn.large = True
                self._large += conn.reserved
            if index:
                conn.blobs += size
            conn.reserved += size
            self._held += size
            self._large += size
            return
        conn.skip = reason
        self._refuse(reason, detail, conn.frames[0][:SAMPLE_BYTES] if conn.frames else b"")
        self._unreserve(conn)
        conn.frames = []  # let go now: the rest of the message is read and dropped

    def _unreserve(self, conn: _Conn) -> None:
        self._held -= conn.reserved
        if conn.large:
            self._large -= conn.reserved
            conn.large = False
        conn.reserved = 0

    def _body_done(self, conn: _Conn) -> None:
        body = conn.body
        assert body is not None
        conn.body, conn.size = None, 0
        self._frame_done(conn, bytes(body), conn.body_more)  # one copy, for a moment: the frames are bytes

    def _frame_done(self, conn: _Conn, frame: bytes, more: bool) -> None:
        if conn.skip is None:
            conn.frames.append(frame)
        if more:
            return
        if conn.skip is None:
            self._ready.append((conn.frames, conn.reserved))  # reserved until `read` hands it out
            self._ready_bytes += conn.reserved
            if conn.large:
                self._large -= conn.reserved
        conn.frames, conn.blobs, conn.reserved, conn.skip, conn.large = [], 0, 0, None, False
        conn.started = None

    def _command(self, conn: _Conn, body: bytes) -> None:
        name_len = body[0] if body else 0
        name, data = body[1:1 + name_len], body[1 + name_len:]
        if conn.state == _HANDSHAKE:
            if name != b"READY":
                raise _Close("bad_zmtp", f"expected READY, got a command {name[:20]!r}")
            socket_type = _properties(data).get("socket-type")
            if socket_type != b"PUSH":
                raise _Close("bad_socket_type", f"Socket-Type {socket_type!r:.40}: only PUSH sends here")
            conn.state, conn.started = _OPEN, None
            return
        if conn.frames or conn.skip is not None:
            raise _Close("bad_zmtp", "a command within a message")
        if name == b"PING" and len(data) >= 2:
            pong = _command(b"PONG", data[2:18])
            try:
                conn.sock.send(pong)
            except OSError:  # a full send buffer: the peer is not reading; its heartbeat decides
                pass
        # PONG, and commands this version does not know: ignored (RFC 37)

    def _refuse(self, reason: str, detail: str, sample: bytes) -> None:
        refused = self._refused.get(reason)
        if refused is None:
            self._refused[reason] = Refused(detail, bytes(sample))
        else:
            refused.count += 1

    def _drop(self, conn: _Conn) -> None:
        self._unreserve(conn)
        conn.frames, conn.body = [], None
        if conn.uid is not None:
            left = self._uids.pop(conn.uid, 1) - 1
            if left:
                self._uids[conn.uid] = left
            conn.uid = None
        fd = conn.sock.fileno()
        self._conns.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in the kernel for this socket (SIOCINQ); -1 if it cannot tell."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except OSError:
        return -1
    return count[0]


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of a Unix socket's peer (SO_PEERCRED); None if it cannot tell."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except OSError:
        return None
    return int(uid)


def _check_greeting(data: bytes) -> None:
    """Refuse a greeting that is not ZMTP 3 with the NULL mechanism (as far as `data` goes)."""
    if (data[:1] and data[0] != 0xFF) or (len(data) >= 10 and not data[9] & 1):
        raise _Close("bad_zmtp", "not a ZMTP greeting")
    if len(data) >= 11 and data[10] < 3:
        raise _Close("bad_zmtp", f"ZMTP version {data[10]}: 3 or later only")
    if len(data) >= 32 and data[12:32].rstrip(b"\0") != b"NULL":
        raise _Close("bad_zmtp", f"mechanism {data[12:32].rstrip(bytes(1))!r}: NULL only")


def _properties(data: bytes) -> dict[str, bytes]:
    """A READY command's metadata: names (lowercased) to values."""
    props: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        n = data[pos]
        name = data[pos + 1:pos + 1 + n]
        pos += 1 + n
        if pos + 4 > len(data):
            raise _Close("bad_zmtp", "a truncated READY property")
        size = int.from_bytes(data[pos:pos + 4], "big")
        value = data[pos + 4:pos + 4 + size]
        if len(value) != size:
            raise _Close("bad_zmtp", "a truncated READY property")
        props[name.decode("ascii", "replace").lower()] = value
        pos += 4 + size
    return props


def _tcp_listener(endpoint: str) -> socket.socket:
    """A TCP socket bound to tcp://HOST:PORT (HOST: a name, an address, [IPv6] or * for all)."""
    rest = endpoint[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected tcp://HOST:PORT")
    host = host.strip("[]")
    if host in ("*", ""):
        host = "0.0.0.0"
    family, kind, proto, _name, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq: a restart reuses the port at once
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock

