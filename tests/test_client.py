"""The client on its own: never blocks, never raises for downstream, counts every drop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import orjson
import pytest
import zmq

from client import Client, EmitError, wire

from .support import ROOT

pytestmark = pytest.mark.timeout(60)


def pull_socket(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return ctx, sock


def receive_messages(sock: zmq.Socket, count: int, timeout_ms: int = 10_000) -> list[list[bytes]]:
    """Receive `count` event messages, all frames (control messages are skipped)."""
    out: list[list[bytes]] = []
    while len(out) < count:
        if not sock.poll(timeout_ms):
            raise AssertionError(f"received {len(out)} of {count} events")
        message = sock.recv_multipart()
        if wire.decode(message[0]).kind not in wire.CONTROL_KINDS:
            out.append(message)
    return out


def receive(sock: zmq.Socket, count: int, timeout_ms: int = 10_000) -> list[wire.Envelope]:
    """Receive `count` events, decoded."""
    return [wire.decode(m[0]) for m in receive_messages(sock, count, timeout_ms)]


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


def test_full_queue_drops_with_a_reason_and_never_blocks(short_tmp: Path) -> None:
    # No sidecar at all: the queue fills, then every emit returns False at once.
    with Client(f"ipc://{short_tmp}/absent.sock", queue_size=100, linger=0) as c:
        results = [c.emit("webhook.post", {"n": n}) for n in range(300)]
    assert results.count(True) >= 90  # the queue also holds a stats message
    assert c.stats()["dropped"]["queue_full"] == results.count(False) > 0
    assert c.emit("webhook.post", {}) is False
    assert c.stats()["dropped"]["closed"] == 1


def test_events_wait_while_the_sidecar_is_away_and_flow_when_it_is_back(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/later.sock"
    with Client(endpoint) as c:
        assert all(c.emit("webhook.post", {"n": n}) for n in range(2000))
        ctx, sock = pull_socket(endpoint)
        got = receive(sock, 2000)
    assert [e.payload["n"] for e in got] == list(range(2000))
    assert [e.seq for e in got] == list(range(1, 2001))
    assert {e.client_id for e in got} == {c.client_id}
    sock.close()
    ctx.term()


def test_close_lingers_only_for_the_bounded_time(short_tmp: Path) -> None:
    c = Client(f"ipc://{short_tmp}/never.sock")
    for n in range(10):
        c.emit("webhook.post", {"n": n})
    done = threading.Event()
    threading.Thread(target=lambda: (c.close(linger=0.2), done.set()), daemon=True).start()
    # Without a bounded linger, close() would wait for a sidecar forever.
    assert done.wait(10), "close() did not return"


def test_burst_then_exit_without_close_loses_nothing(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/burst.sock"
    ctx, sock = pull_socket(endpoint)
    script = textwrap.dedent(f"""
        from client import Client
        c = Client({endpoint!r}, strict=True)
        for n in range(20000):
            c.emit("webhook.post", {{"n": n, "pad": "x" * 100}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    got = receive(sock, 20000)
    assert [e.seq for e in got] == list(range(1, 20001))
    # The closing message announces the last sequence number.
    assert sock.poll(5000)
    bye = wire.decode(sock.recv_multipart()[0])
    while bye.kind != wire.BYE:
        assert sock.poll(5000)
        bye = wire.decode(sock.recv_multipart()[0])
    assert bye.payload["sent"] == 20000
    sock.close()
    ctx.term()


def test_forked_child_gets_its_own_identity_and_socket(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/fork.sock"
    ctx, sock = pull_socket(endpoint)
    with Client(endpoint, strict=True) as c:
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
        got = receive(sock, 4)
    by_client: dict[str, list[tuple[int, str]]] = {}
    for e in got:
        by_client.setdefault(e.client_id, []).append((e.seq, e.payload["who"]))
    assert child_id != c.client_id
    assert by_client[c.client_id] == [(1, "parent"), (2, "parent")]
    assert by_client[child_id] == [(1, "child"), (2, "child")]
    sock.close()
    ctx.term()


def test_threadsafe_client_shared_by_threads(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/threads.sock"
    ctx, sock = pull_socket(endpoint)
    with Client(endpoint, threadsafe=True, strict=True) as c:
        def work(t: int) -> None:
            for n in range(2000):
                assert c.emit("webhook.post", {"t": t, "n": n})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = receive(sock, 8000)
    assert sorted(e.seq for e in got) == list(range(1, 8001))
    for t in range(4):
        assert [e.payload["n"] for e in got if e.payload["t"] == t] == list(range(2000))
    sock.close()
    ctx.term()


def test_large_blob_travels_as_its_own_frame(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/blob.sock"
    ctx, sock = pull_socket(endpoint)
    small, big = os.urandom(100), os.urandom(3 * 1024 * 1024)
    with Client(endpoint, strict=True) as c:
        assert c.emit("s3.put", {"bucket": "b", "key": "small"}, blob=small)
        assert c.emit("s3.put", {"bucket": "b", "key": "big"}, blob=memoryview(big))
        frames = receive_messages(sock, 2)
    assert [m[1] for m in frames] == [small, big]
    assert orjson.loads(frames[1][0])[7] == {"bucket": "b", "key": "big"}
    sock.close()
    ctx.term()


def test_bad_endpoint_counts_instead_of_raising() -> None:
    c = Client("nonsense://nowhere")
    assert c.emit("webhook.post", {}) is False
    assert c.stats()["dropped"] == {"transport_error": 1}
    c.close()


def test_client_dropped_without_close_still_sends_at_exit(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/dropped.sock"
    ctx, sock = pull_socket(endpoint)
    script = textwrap.dedent(f"""
        from client import Client
        def alert(n):
            Client({endpoint!r}, strict=True).emit("webhook.post", {{"n": n}})  # no close, no reference kept
        for n in range(50):
            alert(n)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    got = receive(sock, 50)
    assert sorted(e.payload["n"] for e in got) == list(range(50))
    sock.close()
    ctx.term()


def test_close_waits_for_a_sidecar_that_appears_within_the_linger(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/late.sock"
    c = Client(endpoint, linger=30)
    for n in range(100):
        c.emit("webhook.post", {"n": n})
    closer = threading.Thread(target=c.close)
    closer.start()
    ctx, sock = pull_socket(endpoint)  # the sidecar comes up while close() lingers
    got = receive(sock, 100)
    closer.join(30)
    assert not closer.is_alive()
    assert [e.payload["n"] for e in got] == list(range(100))
    sock.close()
    ctx.term()


def test_strided_memoryview_blob_is_sent_whole(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/strided.sock"
    ctx, sock = pull_socket(endpoint)
    data = bytes(range(256)) * 4
    strided = memoryview(data)[::2]
    with Client(endpoint, strict=True) as c:
        assert c.emit("s3.put", {"bucket": "b", "key": "k"}, blob=strided)
        assert c.emit("webhook.post", {"after": True})
        messages = receive_messages(sock, 2)
    assert messages[0][1:] == [strided.tobytes()]
    assert len(messages[1]) == 1 and wire.decode(messages[1][0]).payload == {"after": True}
    sock.close()
    ctx.term()
