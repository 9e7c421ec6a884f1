"""The ingest socket's ZMTP receiver (issue 17) against real pyzmq PUSH peers
and raw sockets over loopback: what arrives whole, what is refused and how,
and that what it holds stays bounded whoever connects."""

from __future__ import annotations

import socket
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from sidecar.ingest import zmtp
from sidecar.ingest.zmtp import GREETING, MESSAGE_SECONDS, READY, STALL_SECONDS, Limits, Receiver

from ..support import wait_until

pytestmark = pytest.mark.timeout(60)

KiB, MiB = 1 << 10, 1 << 20
LIMITS = Limits(frame=2 * MiB, event=64 * KiB, blobs=1 * MiB, held=3 * MiB, connections=256)


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def rx(clock: Clock) -> Iterator[Receiver]:
    r = Receiver.bind("tcp://127.0.0.1:0", LIMITS, clock=clock)
    yield r
    r.close()


@pytest.fixture()
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def push(ctx: zmq.Context, rx: Receiver, **options: int) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        s.setsockopt(getattr(zmq, name), value)
    s.connect(rx.address)
    return s


def collect(rx: Receiver, count: int, what: str) -> list[list[bytes]]:
    got: list[list[bytes]] = []

    def more() -> bool:
        rx.poll(20)
        got.extend(rx.read(1000, 1 << 30))
        return len(got) >= count

    wait_until(more, timeout=20, what=what)
    return got


def refused_until(rx: Receiver, reason: str, count: int = 1) -> dict[str, int]:
    """Read until `reason` is refused `count` times; every reason refused meanwhile, with its count."""
    seen: dict[str, int] = {}

    def found() -> bool:
        rx.poll(20)
        rx.read(1000, 1 << 30)
        for r, refused in rx.take_refused().items():
            seen[r] = seen.get(r, 0) + refused.count
        return seen.get(reason, 0) >= count

    wait_until(found, timeout=20, what=f"a refusal as {reason}")
    return seen


def raw(rx: Receiver, *, minor: int = 1, socket_type: bytes = b"PUSH") -> socket.socket:
    """A hand-made ZMTP 3.x PUSH peer, its handshake done (the receiver's greeting and READY read)."""
    host, port = rx.address[len("tcp://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    greeting = GREETING[:11] + bytes([minor]) + GREETING[12:]
    body = b"\x05READY\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    ready = bytes([4, len(body)]) + body
    s.sendall(greeting + ready)
    got = b""
    while len(got) < len(GREETING) + len(READY):
        rx.poll(20)
        rx.read(1000, 1 << 30)
        try:
            s.settimeout(0.05)
            got += s.recv(4096)
        except TimeoutError:
            pass
    s.settimeout(10)
    assert got == GREETING + READY
    return s


def frame(body: bytes, *, more: bool = False, long: bool = False) -> bytes:
    flags = int(more) | (2 if long or len(body) > 255 else 0)
    size = len(body).to_bytes(8, "big") if flags & 2 else bytes([len(body)])
    return bytes([flags]) + size + body


def closed(s: socket.socket, rx: Receiver) -> bool:
    """True once the receiver closed `s` (what it sent before is read and dropped)."""
    rx.poll(20)
    rx.read(1000, 1 << 30)
    s.settimeout(0.05)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_single_and_multipart_messages_of_a_pyzmq_push_arrive_whole(rx: Receiver, ctx: zmq.Context) -> None:
    p = push(ctx, rx)
    blob = bytes(range(256)) * 3000  # 750 KiB: a LONG size, received straight into its buffer
    p.send(b"one")
    p.send_multipart([b"event", b"b" * 300, blob])
    p.send(b"")  # an empty frame is a message too
    got = collect(rx, 3, "three messages")
    assert got == [[b"one"], [b"event", b"b" * 300, blob], [b""]]
    assert rx.take_refused() == {}


def test_a_flood_of_small_events_arrives_in_order_and_nothing_stays_held(rx: Receiver, ctx: zmq.Context) -> None:
    p = push(ctx, rx, SNDHWM=0)
    for n in range(20_000):
        p.send(b"e%d" % n)
    got = collect(rx, 20_000, "20,000 events")
    assert got == [[b"e%d" % n] for n in range(20_000)]
    assert rx.held == 0


def test_a_zmtp_3_0_peer_is_read_like_a_3_1_one(rx: Receiver) -> None:
    s = raw(rx, minor=0)
    s.sendall(frame(b"short") + frame(b"x" * 100, long=True, more=True) + frame(b"y" * 70_000))
    assert collect(rx, 2, "the 3.0 peer's two messages") == [[b"short"], [b"x" * 100, b"y" * 70_000]]


def test_ping_is_answered_with_pong_and_the_connection_goes_on(rx: Receiver, ctx: zmq.Context) -> None:
    s = raw(rx)
    ping = b"\x04PING" + (100).to_bytes(2, "big") + b"ctx"
    s.sendall(bytes([4, len(ping)]) + ping)
    pong = b"\x04PONG" + b"ctx"

    def answered() -> bytes:
        rx.poll(20)
        rx.read(10, 1 << 20)
        s.settimeout(0.05)
        try:
            return s.recv(100)
        except TimeoutError:
            return b""

    assert wait_until(answered, timeout=10, what="the PONG") == bytes([4, len(pong)]) + pong
    s.sendall(frame(b"after"))
    assert collect(rx, 1, "the message after the PING") == [[b"after"]]
    # And libzmq's own heartbeats, every 100 ms, keep a real peer's connection open.
    p = push(ctx, rx, HEARTBEAT_IVL=100, HEARTBEAT_TIMEOUT=300)
    p.send(b"first")
    assert collect(rx, 1, "the first message") == [[b"first"]]
    end = time.monotonic() + 1
    while time.monotonic() < end:
        rx.poll(50)
        rx.read(10, 1 << 20)
    p.send(b"second")
    assert collect(rx, 1, "the second message") == [[b"second"]]
    assert rx.take_refused() == {}


def test_a_peer_that_is_not_zmtp_is_closed_as_bad_zmtp(rx: Receiver) -> None:
    host, port = rx.address[len("tcp://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    wait_until(lambda: closed(s, rx), timeout=10, what="the connection closed")
    assert rx.connections == 0


def test_a_zmtp_2_peer_and_another_mechanism_are_refused(rx: Receiver) -> None:
    host, port = rx.address[len("tcp://"):].rsplit(":", 1)
    old = socket.create_connection((host, int(port)), timeout=10)
    old.sendall(GREETING[:10] + b"\x01")  # ZMTP 2.0's revision byte
    seen = refused_until(rx, "bad_zmtp")
    curve = socket.create_connection((host, int(port)), timeout=10)
    curve.sendall(GREETING[:12] + b"CURVE".ljust(20, b"\0") + GREETING[32:])
    seen = refused_until(rx, "bad_zmtp")
    assert seen == {"bad_zmtp": 1}
    assert closed(old, rx) and closed(curve, rx)


def test_a_peer_saying_socket_type_req_is_refused_as_bad_socket_type(rx: Receiver, ctx: zmq.Context) -> None:
    s = raw(rx, socket_type=b"REQ")
    assert refused_until(rx, "bad_socket_type") == {"bad_socket_type": 1}
    assert closed(s, rx)
    # A real REQ socket reads the receiver's READY (PULL) and leaves by itself: nothing of it arrives.
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(rx.address)
    req.send(b"hello?")
    p = push(ctx, rx)
    p.send(b"only this")
    assert collect(rx, 1, "the PUSH peer's message") == [[b"only this"]]
    wait_until(lambda: (rx.poll(20), rx.read(10, 1 << 20), rx.connections)[2] == 1, timeout=10,
               what="the REQ socket gone")


def test_a_message_of_too_many_frames_is_skipped_and_the_next_one_arrives(rx: Receiver, ctx: zmq.Context) -> None:
    p = push(ctx, rx)
    p.send_multipart([b"event", *[b"b" * 1000] * 60])
    p.send(b"next")
    assert collect(rx, 1, "the message after it") == [[b"next"]]
    refused = rx.take_refused()
    assert list(refused) == ["bad_frames"] and refused["bad_frames"].sample == b"event"
    assert refused["bad_frames"].count == 1
    assert rx.connections == 1 and rx.held == 0


def test_an_event_or_blobs_over_their_limits_are_skipped_unheld(rx: Receiver, ctx: zmq.Context) -> None:
    p = push(ctx, rx)
    p.send(b"e" * (LIMITS.event + 1))
    p.send_multipart([b"event", b"b" * (600 * KiB), b"c" * (600 * KiB)])  # 1.2 MiB of blobs, limit 1 MiB
    p.send(b"next")
    assert collect(rx, 1, "the message after them") == [[b"next"]]
    assert rx.take_refused()["too_large"].count == 2


def test_a_frame_over_the_frame_limit_closes_the_connection(rx: Receiver, ctx: zmq.Context) -> None:
    p = push(ctx, rx)
    p.send(b"f" * (LIMITS.frame + 1))
    assert refused_until(rx, "too_large") == {"too_large": 1}
    s = raw(rx)
    s.sendall(b"\x02" + (2**63).to_bytes(8, "big"))  # a LONG size of 2^63
    assert refused_until(rx, "too_large") == {"too_large": 1}
    wait_until(lambda: closed(s, rx), timeout=10, what="the connection closed")
    assert rx.held == 0


def test_half_a_greeting_then_silence_is_closed_as_stalled_and_costs_no_one_else(
        rx: Receiver, ctx: zmq.Context, clock: Clock) -> None:
    host, port = rx.address[len("tcp://"):].rsplit(":", 1)
    slow = socket.create_connection((host, int(port)), timeout=10)
    slow.sendall(GREETING[:20])
    p = push(ctx, rx)
    p.send(b"meanwhile")
    assert collect(rx, 1, "a good peer's message") == [[b"meanwhile"]]
    assert rx.connections == 2
    clock.now += STALL_SECONDS + 1
    assert refused_until(rx, "stalled") == {"stalled": 1}
    assert closed(slow, rx) and rx.connections == 1


def test_a_partial_message_then_silence_gives_its_room_back(rx: Receiver, clock: Clock) -> None:
    s = raw(rx)
    s.sendall(frame(b"event", more=True) + b"\x02" + (900 * KiB).to_bytes(8, "big") + b"b" * 1000)
    wait_until(lambda: (rx.poll(20), rx.read(10, 1 << 20), rx.held)[2] > 900 * KiB, timeout=10,
               what="the blob's room reserved")
    clock.now += STALL_SECONDS + 1
    assert refused_until(rx, "stalled") == {"stalled": 1}
    assert rx.held == 0


def test_messages_beyond_the_bytes_held_are_refused_as_no_room(rx: Receiver) -> None:
    hogs = [raw(rx) for _ in range(4)]  # each starts a message of 1 MiB of blobs: three fit LIMITS.held
    for s in hogs:
        s.sendall(frame(b"event", more=True) + b"\x02" + MiB.to_bytes(8, "big") + b"b" * 1000)
    assert refused_until(rx, "no_room", 2) == {"no_room": 2}
    assert LIMITS.held - MiB < rx.held <= LIMITS.held
    for s in hogs:
        s.close()


def test_300_connections_are_bounded_and_a_good_peer_still_gets_through(rx: Receiver, ctx: zmq.Context) -> None:
    host, port = rx.address[len("tcp://"):].rsplit(":", 1)
    crowd = []
    for _ in range(300):
        crowd.append(socket.create_connection((host, int(port)), timeout=10))
        rx.read(10, 1 << 20)
    wait_until(lambda: (rx.poll(20), rx.read(10, 1 << 20), rx.connections)[2] == LIMITS.connections, timeout=10,
               what="the connections accepted")
    p = push(ctx, rx)  # the longest idle one makes room for it
    p.send(b"through")
    assert collect(rx, 1, "the good peer's message") == [[b"through"]]
    assert rx.connections == LIMITS.connections
    assert rx.take_refused()["too_many_connections"].count >= 45
    for s in crowd:
        s.close()


def test_ipc_endpoints_work_the_same_and_the_socket_file_goes_with_close(short_tmp: Path) -> None:
    r = Receiver.bind(f"ipc://{short_tmp}/r.sock", LIMITS)
    c = zmq.Context()
    p = c.socket(zmq.PUSH)
    p.setsockopt(zmq.LINGER, 0)
    p.connect(r.address)
    p.send_multipart([b"over", b"ipc"])
    assert collect(r, 1, "the message over ipc://") == [[b"over", b"ipc"]]
    c.destroy(linger=0)
    r.close()
    assert not (short_tmp / "r.sock").exists()


def test_while_nothing_is_read_the_sender_is_pushed_back_and_loses_nothing(rx: Receiver, ctx: zmq.Context) -> None:
    p = push(ctx, rx, SNDHWM=100)
    p.send(b"0")
    assert collect(rx, 1, "the handshake and the first message") == [[b"0"]]
    sent = 1
    while True:  # ingest reads nothing (a journal it cannot write): the kernel's buffers, then the sender's queue
        try:
            p.send(b"%d" % sent + b"." * 1000, zmq.NOBLOCK)
        except zmq.Again:
            break
        sent += 1
    assert rx.held == 0  # all of it waits outside this process
    got = collect(rx, sent - 1, "everything sent, once reading resumes")
    assert [m[0].split(b".")[0] for m in got] == [b"%d" % n for n in range(1, sent)]


def test_a_message_trickled_in_past_message_seconds_is_closed_as_stalled(rx: Receiver, clock: Clock) -> None:
    s = raw(rx)
    s.sendall(frame(b"x", more=True))  # mid-message from now on...
    wait_until(lambda: (rx.poll(20), rx.read(10, 1 << 20), rx.held)[2] == 1, timeout=10, what="the frame read")
    assert STALL_SECONDS > 10
    for _ in range(int(MESSAGE_SECONDS // 10) + 2):  # ...a frame every 10 s: never silent for STALL_SECONDS
        clock.now += 10
        try:
            s.sendall(frame(b"", more=True))
        except OSError:
            break
        if closed(s, rx):
            break
    assert closed(s, rx) or closed(s, rx)
    assert rx.take_refused()["stalled"].detail.startswith("mid-message, not whole")
    assert rx.connections == 0 and rx.held == 0


def test_when_full_a_new_connection_closes_the_oldest_partial_message_not_an_idle_producer(
        clock: Clock, ctx: zmq.Context) -> None:
    rx = Receiver.bind("tcp://127.0.0.1:0", Limits(frame=2 * MiB, event=64 * KiB, blobs=1 * MiB, held=3 * MiB,
                                                    connections=4), clock=clock)
    try:
        p = push(ctx, rx)
        p.send(b"first")
        assert collect(rx, 1, "the producer's first message") == [[b"first"]]
        crowd = []
        for n in range(8):  # each always mid-message: the producer, idle, is the only one holding nothing
            clock.now += 1
            s = raw(rx)
            s.sendall(frame(b"x", more=True))
            crowd.append(s)
            held = min(n + 1, 3)  # the oldest of four closed for the fifth: three hold a frame each
            wait_until(lambda k=held: (rx.poll(20), rx.read(10, 1 << 20), rx.held)[2] == k, timeout=10,
                       what="the attacker's frame read")
        assert rx.connections == 4
        p.send(b"second")
        assert collect(rx, 1, "the idle producer's next message") == [[b"second"]]
        refused = rx.take_refused()["too_many_connections"]
        assert refused.count == 5 and "oldest partial" in refused.detail
        assert [closed(s, rx) for s in crowd] == [True] * 5 + [False] * 3  # the oldest first
        # One still in its handshake goes before any partial message.
        host, port = rx.address[len("tcp://"):].rsplit(":", 1)
        slow = socket.create_connection((host, int(port)), timeout=10)
        slow.sendall(GREETING[:20])
        wait_until(lambda: closed(crowd[5], rx), timeout=10, what="room made for the half greeting")
        crowd.append(raw(rx))
        wait_until(lambda: closed(slow, rx), timeout=10, what="the half greeting closed")
        assert not closed(crowd[6], rx)
    finally:
        rx.close()


def test_on_ipc_a_uid_over_its_share_makes_room_from_its_own_connections(
        short_tmp: Path, clock: Clock, ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    uids = iter([1000])  # the producer's uid (SO_PEERCRED), then an attacker's
    monkeypatch.setattr(zmtp, "_peer_uid", lambda sock: next(uids, 2000))
    rx = Receiver.bind(f"ipc://{short_tmp}/r.sock", Limits(frame=2 * MiB, event=64 * KiB, blobs=1 * MiB,
                                                             held=3 * MiB, connections=4), clock=clock)
    try:
        p = push(ctx, rx)
        p.send(b"first")
        assert collect(rx, 1, "the producer's first message") == [[b"first"]]
        crowd = []
        for _ in range(6):  # idle too, and newer: without the share the producer would be the longest idle
            clock.now += 1
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{short_tmp}/r.sock")
            body = b"\x05READY\x0bSocket-Type" + (4).to_bytes(4, "big") + b"PUSH"
            s.sendall(GREETING + bytes([4, len(body)]) + body)
            crowd.append(s)
            wait_until(lambda: (rx.poll(20), rx.read(10, 1 << 20), rx.connections)[2] == min(len(crowd) + 1, 4)
                       and not any(c.state != zmtp._OPEN for c in rx._conns.values()), timeout=10,
                       what="the connection accepted")
        assert [closed(s, rx) for s in crowd] == [True] * 3 + [False] * 3
        p.send(b"second")
        assert collect(rx, 1, "the producer's next message") == [[b"second"]]
        assert rx.connections == 4 and rx.take_refused()["too_many_connections"].count == 3
    finally:
        rx.close()


def test_small_messages_are_admitted_while_large_ones_hold_all_the_room_and_headers_allocate_nothing(
        rx: Receiver, ctx: zmq.Context) -> None:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        hogs = []
        for size in (MiB, MiB, LIMITS.held - 2 * (MiB + 5) - 5):  # headers only: the room exactly full
            s = raw(rx)
            s.sendall(frame(b"event", more=True) + b"\x02" + size.to_bytes(8, "big") + b"b")
            hogs.append(s)
        wait_until(lambda: (rx.poll(20), rx.read(10, 1 << 20), rx.held)[2] == LIMITS.held, timeout=10,
                   what="the room reserved")
        assert tracemalloc.get_traced_memory()[0] - base < 512 * KiB  # reserved, not allocated
    finally:
        tracemalloc.stop()
    p = push(ctx, rx)
    for n in range(20):
        p.send_multipart([b"e%d" % n + b"." * 400, b"b" * 1000])  # a LONG event frame and a blob: small
    got = collect(rx, 20, "the small messages")
    assert got == [[b"e%d" % n + b"." * 400, b"b" * 1000] for n in range(20)]
    assert "no_room" not in rx.take_refused()
    p.send_multipart([b"event", b"b" * (200 * KiB)])  # a large one still waits for room: refused
    assert refused_until(rx, "no_room") == {"no_room": 1}
    for s in hogs:
        s.close()
