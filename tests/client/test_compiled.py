"""The compiled emit (client._fastemit) and the pure-Python one, held to the
same behaviour. `./scripts/test` runs this folder twice, once with
SIDECAR_PURE_PYTHON=1, so every test here runs on both paths; the ones that
compare the two need the extension built."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from client import Client, EmitError, ring, wire
from client.compiled import PURE_ENV, fastemit
from client.ring import FILE_HEADER, FORMAT_BINARY_V1, MIN_RING_BYTES, RECORD
from sidecar.ingest import decode
from sidecar.ingest.rings import Rings
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(120)
needs_c = pytest.mark.skipif(fastemit is None, reason="client._fastemit not built (or SIDECAR_PURE_PYTHON set)")


def reader(directory: Path) -> Rings:
    rings = Rings(str(directory), Metrics())
    rings.open()
    return rings


def read_all(rings: Rings) -> list[wire.Envelope]:
    rings.maintain(time.monotonic(), force=True)
    got = rings.read(1_000_000)
    rings.ack()
    return [wire.decode(m[0]) for m in got]


def record_formats(path: str, n: int) -> list[int]:
    """The body formats of a ring's first `n` records."""
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], FILE_HEADER
    for _ in range(n):
        size, _nparts, flags, _crc, _ = RECORD.unpack_from(data, at)
        out.append(flags & ring.REC_FORMAT)
        at += ring.record_bytes(size)
    return out


def test_the_path_chosen_at_import_follows_the_environment() -> None:
    if os.environ.get(PURE_ENV):
        assert fastemit is None
    elif os.environ.get("SIDECAR_EXPECT_COMPILED"):  # set by scripts/test, which builds it
        assert fastemit is not None


def test_every_kind_has_a_binary_code_and_codes_never_move() -> None:
    assert set(ring.BINARY_KINDS) == wire.KINDS
    # Append only: these indices are in rings written by running producers.
    assert ring.BINARY_KINDS[:7] == ("notion.page.create", "notion.page.update", "notion.blocks.append", "s3.put",
                                     "naver.product.update", "naver.images.upload", "webhook.post")


KEYS = [None, "", "trade-1", "ключ-é", 'q"uote\\back\nline\x01\x1f\x7f', "x" * 300]


def test_events_come_back_as_the_envelope_the_sidecar_reads_across_laps(tmp_path: Path) -> None:
    rings = reader(tmp_path / "e.rings")
    c = Client(f"ipc://{tmp_path}/e.sock", ring_bytes=MIN_RING_BYTES, strict=True)
    sent, got = [], []
    for n in range(3000):  # a 64 KiB ring: many laps, every wrap taken by the Python path
        key, ref = KEYS[n % len(KEYS)], KEYS[(n + 1) % len(KEYS)]
        payload = {"n": n, "text": "é\u2028" * (n % 5), "list": [1.5, None, True]}
        assert c.emit("webhook.post" if n % 2 else "notion.page.update", payload, key=key, ref=ref)
        sent.append((n + 1, key, ref, payload))
        if n % 50 == 49:
            got += read_all(rings)
    got += read_all(rings)
    assert [(e.seq, e.key, e.ref, e.payload) for e in got if e.seq] == sent
    assert {e.client_id for e in got} == {c.client_id}
    assert c.stats()["sent"] == 3000 and c.stats()["dropped"] == {}
    c.close()
    rings.close()


def test_the_compiled_path_writes_binary_records_and_the_pure_one_json(tmp_path: Path) -> None:
    (tmp_path / "f.rings").mkdir()
    c = Client(f"ipc://{tmp_path}/f.sock", ring_bytes=MIN_RING_BYTES)
    assert c.emit("webhook.post", {"a": 1}) and c.emit("webhook.post", {"a": 2})
    assert c._transport is not None
    # The first emit is always Python's: it also sends the first stats report.
    binary = FORMAT_BINARY_V1 if fastemit is not None else 0
    assert record_formats(c._transport.path, 3) == [0, 0, binary]  # type: ignore[attr-defined]
    c.close()


def test_drops_are_counted_by_reason_and_strict_mode_raises(tmp_path: Path) -> None:
    (tmp_path / "d.rings").mkdir()
    c = Client(f"ipc://{tmp_path}/d.sock", ring_bytes=MIN_RING_BYTES)
    assert c.emit("no.such.kind", {}) is False
    assert c.emit("webhook.post", {"x": object()}) is False
    assert c.emit("webhook.post", {"x": "y" * 40_000}) is False  # over the ring's largest record
    n = 0
    while c.emit("webhook.post", {"n": n}):  # nobody reads: the ring fills
        n += 1
    assert c.stats()["dropped"] == {"unknown_kind": 1, "unserializable": 1, "too_large": 1, "queue_full": 1}
    assert c.stats()["sent"] == n
    c.close()
    assert c.emit("webhook.post", {}) is False and c.stats()["dropped"]["closed"] == 1
    strict = Client(f"ipc://{tmp_path}/d.sock", ring_bytes=MIN_RING_BYTES, strict=True)
    for kind, payload, reason in [("no.such.kind", {}, "unknown_kind"), ("webhook.post", {1j}, "unserializable")]:
        with pytest.raises(EmitError) as info:
            strict.emit(kind, payload)
        assert info.value.reason == reason
    strict.close()


def test_a_threadsafe_client_shared_by_four_threads_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rings = reader(tmp_path / "t.rings")
    c = Client(f"ipc://{tmp_path}/t.sock", threadsafe=True, ring_bytes=1 << 22)

    def emit(t: int) -> None:
        for n in range(2000):
            assert c.emit("webhook.post", {"t": t, "n": n}, key=f"{t}-{n}")

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [e for e in read_all(rings) if e.seq]
    assert [e.seq for e in got] == list(range(1, 8001))
    for t in range(4):
        assert [e.payload["n"] for e in got if e.payload["t"] == t] == list(range(2000))
    c.close()
    rings.close()


def test_a_forked_child_emits_into_its_own_ring(tmp_path: Path) -> None:
    rings = reader(tmp_path / "k.rings")
    c = Client(f"ipc://{tmp_path}/k.sock", ring_bytes=MIN_RING_BYTES)
    assert c.emit("webhook.post", {"who": "parent"})
    pid = os.fork()
    if pid == 0:  # the child: its own identity, ring and sequence
        ok = c.emit("webhook.post", {"who": "child"}) and c.stats()["sent"] == 1
        c.close()
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert c.emit("webhook.post", {"who": "parent"})
    got = [e for e in read_all(rings) if e.seq]
    by_client: dict[str, list[tuple[int, str]]] = {}
    for e in got:
        by_client.setdefault(e.client_id, []).append((e.seq, e.payload["who"]))
    assert sorted(by_client.values()) == [[(1, "child")], [(1, "parent"), (2, "parent")]]
    c.close()
    rings.close()


def test_a_previous_format_producer_and_a_compiled_one_feed_one_reader(tmp_path: Path) -> None:
    rings = reader(tmp_path / "m.rings")
    old = ring.RingWriter.create(str(tmp_path / "m.rings"), "old-client", capacity=MIN_RING_BYTES, make_dir=False)
    new = Client(f"ipc://{tmp_path}/m.sock", ring_bytes=MIN_RING_BYTES)
    for n in range(1, 201):  # the previous client: the JSON envelope as the record's body (format 0)
        old.send(wire.encode("old-client", n, "webhook.post", None, None, n, {"n": n}))
        assert new.emit("webhook.post", {"n": n}, ref="r")
    got = read_all(rings)
    assert [e.payload for e in got if e.client_id == "old-client"] == [{"n": n} for n in range(1, 201)]
    assert [(e.seq, e.payload, e.ref) for e in got if e.client_id == new.client_id and e.seq] == [
        (n, {"n": n}, "r") for n in range(1, 201)]
    assert rings.metrics.total("sidecar_rings_quarantined_total") == 0
    old.close()
    new.close()
    rings.close()


def bodies() -> list[bytes]:
    pack = ring.BINARY_V1.pack
    out = []
    for i, key in enumerate(KEYS):
        for ref in (None, "ref", "é\t"):
            k = b"" if key is None else key.encode()
            r = b"" if ref is None else ref.encode()
            out.append(pack(i, 2**63 - i, ring.NO_STRING if key is None else len(k),
                            ring.NO_STRING if ref is None else len(r), i % 7) + k + r + orjson.dumps({"i": i}))
    # Broken ones: short, lengths past the end, an unknown kind code, bad UTF-8 in a key.
    out += [b"", b"\0" * 23, pack(1, 1, 50, 0, 0) + b"abc", pack(1, 1, 0, 0, 200) + b"{}",
            pack(1, 1, 2, ring.NO_STRING, 0) + b"\xff\xfe{}"]
    return out


@needs_c
def test_the_c_and_python_decoders_agree_byte_for_byte() -> None:
    assert fastemit is not None
    cid = decode.client_id_json("c-1")
    for body in bodies():
        py = decode.binary_frame_py(body, cid)
        c = fastemit.binary_frame(body, cid, decode.KINDS_JSON)
        if py == b"":  # broken: the C path may copy bad UTF-8, which orjson then refuses
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(c)
        else:
            assert c == py
            assert orjson.loads(py)[1] == "c-1"


def test_the_size_limit_is_the_envelopes_to_the_byte_on_either_path(tmp_path: Path) -> None:
    rings = reader(tmp_path / "s.rings")
    c = Client(f"ipc://{tmp_path}/s.sock", ring_bytes=MIN_RING_BYTES, max_event_bytes=1000)
    key = 'k"\n' * 10  # escapes: the envelope is longer than the key's bytes
    assert c.emit("webhook.post", {"warm": 1})  # the first emit is always Python's (stats)
    base = len(wire.encode(c.client_id, 2, "webhook.post", key, None, time.time_ns(), {"t": ""}))
    fits = "x" * (1000 - base)
    assert c.emit("webhook.post", {"t": fits}, key=key)
    assert c.emit("webhook.post", {"t": fits + "x"}, key=key) is False
    assert c.stats()["dropped"] == {"too_large": 1}
    got = [e for e in read_all(rings) if e.seq]
    assert [(e.seq, e.key) for e in got] == [(1, None), (2, key)]
    c.close()
    rings.close()
