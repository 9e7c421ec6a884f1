"""The client on its own: never blocks, never raises for downstream, counts every drop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest
import zmq

from client import Client, EmitError, wire
from client.ring import MIN_RING_BYTES, make_ring_dir, ring_dir
from client.transport import Transport, TransportError, ZmqTransport
from sidecar.ingest.rings import Rings
from sidecar.ops.metrics import Metrics

from ..support import ROOT, wait_until

pytestmark = pytest.mark.timeout(60)


def pull_socket(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return ctx, sock


class Receiver:
    """The sidecar's end of either transport, without a sidecar: a PULL socket,
    or the ring directory read as ingest reads it (acknowledging at once)."""

    def __init__(self, endpoint: str, transport: str) -> None:
        self.transport = transport
        self.rings: Rings | None = None
        self.sock: zmq.Socket | None = None
        self.pending: list[list[bytes]] = []
        if transport == "ring":
            directory = ring_dir(endpoint)
            assert directory is not None
            self.rings = Rings(directory, Metrics())
            self.rings.open()
        else:
            self.ctx, self.sock = pull_socket(endpoint)

    def _read(self, timeout_ms: int) -> list[list[bytes]]:
        if self.sock is not None:
            return [self.sock.recv_multipart()] if self.sock.poll(timeout_ms) else []
        assert self.rings is not None
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self.rings.maintain(time.monotonic(), force=True)
            got = self.rings.read(100_000)
            self.rings.ack()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.005)

    def messages(self, count: int, *, control: bool = False, timeout_ms: int = 10_000) -> list[list[bytes]]:
        """`count` messages, all frames (control messages skipped unless asked for)."""
        out: list[list[bytes]] = []
        while len(out) < count:
            if not self.pending:
                self.pending = self._read(timeout_ms)
                if not self.pending:
                    raise AssertionError(f"received {len(out)} of {count} messages")
            message = self.pending.pop(0)
            if control or wire.decode(message[0]).kind not in wire.CONTROL_KINDS:
                out.append(message)
        return out

    def events(self, count: int, timeout_ms: int = 10_000) -> list[wire.Envelope]:
        return [wire.decode(m[0]) for m in self.messages(count, timeout_ms=timeout_ms)]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.ctx.term()
        if self.rings is not None:
            self.rings.close()


@pytest.fixture(params=["ring", "zmq"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sidecar_ran(endpoint: str) -> str:
    """The endpoint, with the ring directory a sidecar makes (a Client never does)."""
    directory = ring_dir(endpoint)
    assert directory is not None
    make_ring_dir(directory)
    return endpoint


def test_import_client_loads_no_sidecar_dependency() -> None:
    code = ("import sys, client; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('httpx', 'psutil', 'prometheus_client', 'botocore', 'bcrypt', 'sidecar', 'sqlite3')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_envelope_round_trip_and_refusals() -> None:
    frame = wire.encode("c1", 7, "webhook.post", "k", "r", 123, {"text": "é"})
    assert wire.decode(frame) == wire.Envelope("c1", 7, "webhook.post", "k", "r", 123, {"text": "é"})
    for bad, reason in [(b"nope", "bad_json"), (b"{}", "bad_envelope"),
                        (b'[9, "c", 1, "k", null, null, 0, {}]', "bad_version"),
                        (b'[1, "c", -1, "k", null, null, 0, {}]', "bad_envelope"),
                        (b'[1, "c", 1, "k", 5, null, 0, {}]', "bad_envelope")]:
        with pytest.raises(wire.WireError) as info:
            wire.decode(bad)
        assert info.value.reason == reason


def test_programming_errors_are_counted_or_raised_in_strict_mode(short_tmp: Path) -> None:
    with Client(f"ipc://{short_tmp}/none.sock", linger=0) as c:
        assert c.emit("notion.page.craete", {}) is False
        assert c.emit("webhook.post", {"when": object()}) is False
        assert c.emit("webhook.post", {"x": "y" * 2_000_000}) is False
        assert c.emit("s3.put", {}, blob="not bytes") is False  # type: ignore[arg-type]
        assert c.stats()["dropped"] == {"unknown_kind": 1, "unserializable": 1, "too_large": 1, "bad_blob": 1}
        assert c.stats()["sent"] == 0
    with Client(f"ipc://{short_tmp}/none.sock", linger=0, strict=True) as c:
        with pytest.raises(EmitError) as info:
            c.emit("notion.page.craete", {})
        assert info.value.reason == "unknown_kind"
        with pytest.raises(EmitError):
            c.emit("webhook.post", {1, 2})


def test_full_queue_drops_with_a_reason_and_never_blocks(short_tmp: Path, transport: str) -> None:
    # No sidecar at all: the queue (or ring) fills, then every emit returns False at once.
    with Client(sidecar_ran(f"ipc://{short_tmp}/absent.sock"), queue_size=100, ring_bytes=MIN_RING_BYTES, linger=0,
                transport=transport) as c:
        results = [c.emit("webhook.post", {"n": n}) for n in range(3000)]
    assert results.count(True) >= 90  # the queue also holds a stats message
    assert c.stats()["dropped"]["queue_full"] == results.count(False) > 0
    assert c.emit("webhook.post", {}) is False
    assert c.stats()["dropped"]["closed"] == 1


def test_events_wait_while_the_sidecar_is_away_and_flow_when_it_is_back(short_tmp: Path, transport: str) -> None:
    endpoint = sidecar_ran(f"ipc://{short_tmp}/later.sock")  # the sidecar ran once, then went away
    with Client(endpoint, transport=transport) as c:
        assert all(c.emit("webhook.post", {"n": n}) for n in range(2000))
        rx = Receiver(endpoint, transport)
        got = rx.events(2000)
    assert [e.payload["n"] for e in got] == list(range(2000))
    assert [e.seq for e in got] == list(range(1, 2001))
    assert {e.client_id for e in got} == {c.client_id}
    rx.close()


def test_zmq_close_lingers_only_for_the_bounded_time(short_tmp: Path) -> None:
    c = Client(f"ipc://{short_tmp}/never.sock", transport="zmq")
    for n in range(10):
        c.emit("webhook.post", {"n": n})
    done = threading.Event()
    threading.Thread(target=lambda: (c.close(linger=0.2), done.set()), daemon=True).start()
    # Without a bounded linger, close() would wait for a sidecar forever.
    assert done.wait(10), "close() did not return"
    # No sidecar ever connected: all ten were still queued, and are counted.
    assert c.stats()["dropped"] == {"linger_expired": 10}


def test_zmq_close_counts_only_what_was_sent_after_the_sidecar_left(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/left.sock"
    rx = Receiver(endpoint, "zmq")
    t = ZmqTransport(endpoint, queue_size=100)
    frames = [wire.encode("c", n, "webhook.post", None, None, 0, {"n": n}) for n in range(1, 16)]
    for frame in frames[:10]:
        t.send(frame)
    assert [e.seq for e in rx.events(10)] == list(range(1, 11))
    wait_until(t.peer_connected, timeout=10, what="the transport to see the sidecar")
    t.tick(10)
    rx.close()  # the sidecar goes away
    wait_until(lambda: not t.peer_connected(), timeout=10, what="the transport to see the sidecar leave")
    t.tick(10)  # the emit after it left: the sequence stood at 10
    for frame in frames[10:]:
        t.send(frame)  # queued for nobody
    assert t.close(0.1, 15) == 5


def test_zmq_close_with_a_reader_connected_but_behind_counts_the_queue_and_warns(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = f"ipc://{short_tmp}/slow.sock"
    ctx = zmq.Context()
    slow = ctx.socket(zmq.PULL)            # connected, and never reads: the queue stays full
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.bind(endpoint)
    c = Client(endpoint, transport="zmq", queue_size=50_000)
    wait_until(lambda: c._transport is not None and c._transport.peer_connected(), timeout=10,
               what="the client to see the reader")
    for n in range(20_000):
        assert c.emit("webhook.post", {"n": n, "pad": "x" * 200})
    c.close(linger=0.2)
    lost = c.stats()["dropped"].get("linger_expired", 0)
    assert 0 < lost <= 20_000               # counted (at most what could be queued), never silently 0
    assert "up to" in caplog.text and endpoint in caplog.text
    slow.close(0)
    ctx.term()


class Recorder(Transport):
    """A transport of one's own: only what Transport leaves abstract."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.broken = False
        self.closed_with: tuple[float, int] | None = None

    def send(self, frame: bytes) -> None:
        if self.broken:
            raise TransportError("broken")
        self.frames.append(frame)

    def send_blobs(self, frame: bytes, blobs: object) -> None:
        self.send(frame)

    def close(self, linger: float, sent: int = 0) -> int:
        self.closed_with = (linger, sent)
        return 0


def test_a_transport_of_ones_own_needs_only_send_send_blobs_and_close(short_tmp: Path) -> None:
    t = Recorder()
    c = Client(f"ipc://{short_tmp}/own.sock", transport=t, linger=0.5)
    assert c.emit("webhook.post", {"n": 1})
    t.broken = True
    assert not c.emit("webhook.post", {"n": 2})  # not quarantined (the default): a transport_error drop
    t.broken = False
    assert c.emit("s3.put", {"bucket": "b", "key": "k"}, blob=b"body")
    c.close()
    kinds = [wire.decode(f).kind for f in t.frames]
    assert kinds == ["webhook.post", wire.STATS, "s3.put", wire.BYE]  # the goodbye through the default send_last
    assert t.closed_with == (0.5, 2)
    assert c.stats()["dropped"] == {"transport_error": 1}


def test_ring_close_leaves_the_tail_for_a_sidecar_that_comes_later(short_tmp: Path) -> None:
    endpoint = sidecar_ran(f"ipc://{short_tmp}/gone.sock")
    script = textwrap.dedent(f"""
        from client import Client
        c = Client({endpoint!r}, strict=True)
        for n in range(5000):
            c.emit("webhook.post", {{"n": n}})
        c.close(linger=5)   # nothing listens: a ring does not wait
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    rx = Receiver(endpoint, "ring")
    got = rx.events(5000)
    assert [e.payload["n"] for e in got] == list(range(5000))
    bye = [wire.decode(m[0]) for m in rx.messages(1, control=True)]
    assert bye[0].kind == wire.BYE and bye[0].payload["sent"] == 5000
    rx.close()


def test_burst_then_exit_without_close_loses_nothing(short_tmp: Path, transport: str) -> None:
    endpoint = f"ipc://{short_tmp}/burst.sock"
    rx = Receiver(endpoint, transport)
    script = textwrap.dedent(f"""
        from client import Client
        c = Client({endpoint!r}, strict=True, transport={transport!r})
        for n in range(20000):
            c.emit("webhook.post", {{"n": n, "pad": "x" * 100}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    got = rx.events(20000)
    assert [e.seq for e in got] == list(range(1, 20001))
    # The closing message announces the last sequence number.
    bye = wire.decode(rx.messages(1, control=True)[0][0])
    while bye.kind != wire.BYE:
        bye = wire.decode(rx.messages(1, control=True)[0][0])
    assert bye.payload["sent"] == 20000
    rx.close()


def test_forked_child_gets_its_own_identity_and_transport(short_tmp: Path, transport: str) -> None:
    endpoint = f"ipc://{short_tmp}/fork.sock"
    rx = Receiver(endpoint, transport)
    with Client(endpoint, strict=True, transport=transport) as c:
        c.emit("webhook.post", {"who": "parent", "n": 0})
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(read)
                c.emit("webhook.post", {"who": "child", "n": 0})
                c.emit("webhook.post", {"who": "child", "n": 1})
                os.write(write, c.client_id.encode())
                c.close()
            finally:
                os._exit(0)
        os.close(write)
        child_id = os.read(read, 200).decode()
        os.waitpid(pid, 0)
        c.emit("webhook.post", {"who": "parent", "n": 1})
        got = rx.events(4)
    by_client: dict[str, list[tuple[int, str]]] = {}
    for e in got:
        by_client.setdefault(e.client_id, []).append((e.seq, e.payload["who"]))
    assert child_id != c.client_id
    assert by_client[c.client_id] == [(1, "parent"), (2, "parent")]
    assert by_client[child_id] == [(1, "child"), (2, "child")]
    rx.close()


def test_threadsafe_client_shared_by_threads(short_tmp: Path, transport: str) -> None:
    endpoint = f"ipc://{short_tmp}/threads.sock"
    rx = Receiver(endpoint, transport)
    with Client(endpoint, threadsafe=True, strict=True, transport=transport) as c:
        def work(t: int) -> None:
            for n in range(2000):
                assert c.emit("webhook.post", {"t": t, "n": n})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = rx.events(8000)
    assert sorted(e.seq for e in got) == list(range(1, 8001))
    for t in range(4):
        assert [e.payload["n"] for e in got if e.payload["t"] == t] == list(range(2000))
    rx.close()


def test_large_blob_travels_as_its_own_frame(short_tmp: Path, transport: str) -> None:
    endpoint = f"ipc://{short_tmp}/blob.sock"
    rx = Receiver(endpoint, transport)
    small, big = os.urandom(100), os.urandom(3 * 1024 * 1024)
    with Client(endpoint, strict=True, transport=transport) as c:
        assert c.emit("s3.put", {"bucket": "b", "key": "small"}, blob=small)
        assert c.emit("s3.put", {"bucket": "b", "key": "big"}, blob=memoryview(big))
        assert c.emit("naver.images.upload", {}, blob=[small, b"", big])
        frames = rx.messages(3)
    assert [m[1:] for m in frames] == [[small], [big], [small, b"", big]]
    assert orjson.loads(frames[1][0])[7] == {"bucket": "b", "key": "big"}
    rx.close()


def test_blob_limits_are_the_wire_limits(short_tmp: Path, transport: str) -> None:
    with Client(sidecar_ran(f"ipc://{short_tmp}/limits.sock"), transport=transport, linger=0) as c:
        assert c.emit("naver.images.upload", {}, blob=[b"x"] * (wire.MAX_BLOBS + 1)) is False
        assert c.emit("naver.images.upload", {}, blob=[b"x"] * wire.MAX_BLOBS) is True
        assert c.emit("s3.put", {}, blob=bytes(wire.MAX_BLOB_BYTES + 1)) is False
        assert c.stats()["dropped"] == {"bad_blob": 1, "too_large": 1}


def test_bad_endpoint_counts_instead_of_raising() -> None:
    c = Client("nonsense://nowhere")
    assert c.emit("webhook.post", {}) is False
    assert c.stats()["dropped"] == {"transport_error": 1}
    c.close()


def test_client_dropped_without_close_still_sends_at_exit(short_tmp: Path, transport: str) -> None:
    endpoint = f"ipc://{short_tmp}/dropped.sock"
    rx = Receiver(endpoint, transport)
    script = textwrap.dedent(f"""
        from client import Client
        def alert(n):  # no close, no reference kept
            Client({endpoint!r}, strict=True, transport={transport!r}).emit("webhook.post", {{"n": n}})
        for n in range(50):
            alert(n)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    got = rx.events(50)
    assert sorted(e.payload["n"] for e in got) == list(range(50))
    rx.close()


def test_zmq_close_waits_for_a_sidecar_that_appears_within_the_linger(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/late.sock"
    c = Client(endpoint, linger=30, transport="zmq")
    for n in range(100):
        c.emit("webhook.post", {"n": n})
    closer = threading.Thread(target=c.close)
    closer.start()
    rx = Receiver(endpoint, "zmq")  # the sidecar comes up while close() lingers
    got = rx.events(100)
    closer.join(30)
    assert not closer.is_alive()
    assert [e.payload["n"] for e in got] == list(range(100))
    assert c.stats()["dropped"] == {}
    rx.close()


def test_strided_memoryview_blob_is_sent_whole(short_tmp: Path, transport: str) -> None:
    endpoint = f"ipc://{short_tmp}/strided.sock"
    rx = Receiver(endpoint, transport)
    data = bytes(range(256)) * 4
    strided = memoryview(data)[::2]
    with Client(endpoint, strict=True, transport=transport) as c:
        assert c.emit("s3.put", {"bucket": "b", "key": "k"}, blob=strided)
        assert c.emit("webhook.post", {"after": True})
        messages = rx.messages(2)
    assert messages[0][1:] == [strided.tobytes()]
    assert len(messages[1]) == 1 and wire.decode(messages[1][0]).payload == {"after": True}
    rx.close()
