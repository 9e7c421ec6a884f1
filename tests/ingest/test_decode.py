"""Binary v1 ring records decoded from their fields (decode.py's `ring_event`, C and Python):
the same frames, envelopes, journal rows and rejects as parsing the envelope made from them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from client import wire
from client.compiled import fastemit
from client.ring import BINARY_V1, NO_STRING
from sidecar.config import Config, from_dict
from sidecar.connectors import build_lanes
from sidecar.connectors.base import Connector
from sidecar.ingest import batch as batch_module
from sidecar.ingest.core import Ingest
from sidecar.ingest.decode import (
    FAST_PAYLOAD_MAX,
    RingMessage,
    binary_frame,
    binary_frame_py,
    ring_context,
    ring_event_py,
)
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

PAGE = "59833787-2cf9-4fdf-8782-e53db20768a5"
# Each ring_event, and the binary_frame the reader used before on the same path.
PATHS: list[tuple[str, Callable[..., Any]]] = [("python", ring_event_py)]
FRAMES: dict[Callable[..., Any], Callable[..., bytes]] = {ring_event_py: binary_frame_py}
if fastemit is not None:
    PATHS.append(("c", fastemit.ring_event))
    FRAMES[fastemit.ring_event] = fastemit.binary_frame


def body(seq: int = 1, payload: bytes = b'{"page_id":"%s"}' % PAGE.encode(), *, key: bytes | None = None,
         ref: bytes | None = None, code: int = 1, ns: int = 5) -> bytes:
    """A binary v1 body (code 1: notion.page.update)."""
    return (BINARY_V1.pack(seq, ns, NO_STRING if key is None else len(key), NO_STRING if ref is None else len(ref),
                           code) + (key or b"") + (ref or b"") + payload)


# (what it is, the body, whether it is decoded at once; else wire.decode reads its frame)
CASES = [
    ("an update", body(), True),
    ("key and ref, escaped and not ASCII", body(key=b'k"\n\x01', ref="é日\u2028".encode()), True),
    ("empty key and ref", body(key=b"", ref=b""), True),
    ("seq 2**63-1", body(seq=2**63 - 1), True),
    ("seq 2**63", body(seq=2**63), False),
    ("emitted_ns 2**64-1", body(ns=2**64 - 1), False),
    ("a key that is not UTF-8", body(key=b"\xff"), False),
    ("a ref that is a lone surrogate", body(ref=b"\xed\xa0\x80"), False),
    ("a payload that is not JSON", body(payload=b'{"a":'), False),
    ("two JSON values", body(payload=b"1,2"), False),
    ("a BOM", body(payload=b"\xef\xbb\xbf{}"), False),
    ("an empty payload", body(payload=b""), False),
    ("whitespace around the payload", body(payload=b' \n{"page_id":"p"}\t'), True),
    ("a payload of FAST_PAYLOAD_MAX bytes", body(payload=b'{"s":"' + b"x" * (FAST_PAYLOAD_MAX - 8) + b'"}'), False),
    ("nested 1,023 deep", body(payload=b"[" * 1023 + b"]" * 1023), True),
    ("nested 1,024 deep (orjson takes it alone, not in the envelope)", body(payload=b"[" * 1024 + b"]" * 1024), False),
    ("an unknown kind code", body(code=200), False),
    ("lengths past the end", body(key=b"abc")[:-20], False),
    ("too short", b"\0" * 23, False),
]


@pytest.mark.parametrize("path", [p for _, p in PATHS], ids=[n for n, _ in PATHS])
@pytest.mark.parametrize(("what", "raw", "at_once"), CASES, ids=[c[0] for c in CASES])
def test_an_envelope_decoded_from_the_fields_is_what_wire_decode_reads_in_the_frame(
        path: Callable[..., Any], what: str, raw: bytes, at_once: bool) -> None:
    ctx = ring_context("c-1")
    frame, env = path(raw, ctx)
    assert (env is not None) == at_once
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # comparing payloads nested 1,023 deep
    try:
        same_as_wire_decode(raw, frame, env, ctx)
    finally:
        sys.setrecursionlimit(limit)


def same_as_wire_decode(raw: bytes, frame: bytes, env: Any, ctx: Any) -> None:
    if env is not None:
        assert frame == binary_frame(raw, ctx[0], ctx[2])
        assert env == wire.decode(frame)
        assert [type(x) for x in env] == [type(x) for x in wire.decode(frame)]
    elif frame:  # a frame that ingest reads as before: wire.decode decides
        assert frame == binary_frame(raw, ctx[0], ctx[2]) or not ring_event_py(raw, ctx)[0]


@pytest.mark.skipif(fastemit is None, reason="client._fastemit is not built")
def test_the_c_and_python_decoders_agree_on_a_fuzzed_sample() -> None:
    from bench.fuzz_decode import run  # the full run (1,000,000 cases) is `python bench/fuzz_decode.py`

    assert run(20_000, seed=20) == 0


@pytest.mark.skipif(fastemit is None, reason="client._fastemit is not built")
def test_the_readers_compiled_loops_read_fuzzed_records_as_its_python_loops() -> None:
    from bench.fuzz_decode import run_records  # the long run: python bench/fuzz_decode.py --records

    assert run_records(2_000, seed=5) == 0


def test_a_ring_message_settles_once_into_its_frame() -> None:
    ctx = ring_context("c-1")
    message = RingMessage([body()], "c-1", ctx)
    env = message.settle()
    assert env is not None and env.seq == 1
    assert message == [binary_frame(body(), ctx[0], ctx[2])] and message.ctx is None
    assert message.settle() is None  # already a frame


# -- the same rows and rejects as the envelope's path ------------------------------------


@pytest.fixture
def connectors() -> Iterator[dict[str, Connector]]:
    token = os.environ.pop("NOTION_TOKEN", None)  # a paused lane: routing only
    try:
        yield {name: spec.connector for name, spec in build_lanes(Config()).items()}
    finally:
        if token is not None:
            os.environ["NOTION_TOKEN"] = token


def journaled(tmp: Path, connectors: dict[str, Connector], batches: list[list[list[bytes]]]) -> dict[str, list]:
    cfg = from_dict({"ingest": {"max_message_bytes": 4096}})
    journal = Journal.open(tmp, synchronous="OFF")
    ingest = Ingest(cfg.ingest, journal, connectors, Metrics())
    for messages in batches:
        ingest.process(messages)
    q = journal.conn.execute
    out = {"events": q("SELECT lane, kind, target, key, ref, client_id, seq, emitted_ns, frame, blob_path"
                       " FROM events ORDER BY id").fetchall(),
           "rejects": q("SELECT reason, detail, frame FROM rejects ORDER BY id").fetchall(),
           "counts": q("SELECT reason, total FROM reject_counts ORDER BY reason").fetchall(),
           "clients": q("SELECT client_id, last_seq, gaps, ring FROM clients").fetchall()}
    ingest.stop()
    journal.close()
    return out


@pytest.mark.parametrize("path", [p for _, p in PATHS], ids=[n for n, _ in PATHS])
def test_binary_records_journal_the_rows_and_rejects_their_envelopes_would(
        tmp_path: Path, connectors: dict[str, Connector], path: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = [
        body(1), body(2, key=b"k", ref=b"r"), body(3, b"[1]"), body(4, b"{}"), body(5, b'{"properties":[]}'),
        body(6, b'{"a":'), body(7, key=b"\xff"), body(2**63), body(8, b'{"page_id":"%s","s":"%s"}' % (
            PAGE.encode(), b"x" * 5000)), body(9, b'{"page_id":"p","s":"%s"}' % (b"y" * 3000)),
        body(10, code=6), body(11, code=99), body(12, ns=2**63), b"\0" * 30, body(13, b'{"page_id":1}', ref=b"x"),
        body(13), body(12), body(14, b'{"page_id":"p"}', code=0), body(15, b'{"children":[]}', code=2),
        body(16, b'[%s]' % b",".join([b"[]"] * 3)), body(17, b'{"children":[%s]}' % b",".join(
            [b'{"paragraph":{}}'] * 101), code=2), body(18, b" {\"page_id\" : \"q\"} "),
    ]
    ctx = ring_context("c-1")
    monkeypatch.setattr(batch_module, "ring_event", path)
    # As the reader made them before: the envelope (binary_frame), parsed again by wire.decode.
    made = FRAMES[path]
    before = journaled(tmp_path / "before", connectors, [[RingMessage([made(b, ctx[0], ctx[2])], "c-1")
                                                          for b in bodies[:12]],
                                                         [RingMessage([made(b, ctx[0], ctx[2])], "c-1")
                                                          for b in bodies[12:]]])
    now = journaled(tmp_path / "now", connectors, [[RingMessage([b], "c-1", ctx) for b in bodies[:12]],
                                                   [RingMessage([b], "c-1", ctx) for b in bodies[12:]]])
    assert now == before
    assert {reason for reason, _ in now["counts"]} >= {"bad_json", "bad_envelope", "bad_payload", "too_large",
                                                      "unknown_kind"}
    assert len(now["events"]) >= 5


def test_a_retried_batch_of_binary_records_journals_each_once(tmp_path: Path,
                                                             connectors: dict[str, Connector]) -> None:
    """A batch the journal refused is processed again: its messages, settled the first time, are frames then."""
    ctx = ring_context("c-1")
    messages: list[list[bytes]] = [RingMessage([body(n)], "c-1", ctx) for n in range(1, 4)]
    journal = Journal.open(tmp_path, synchronous="OFF")
    ingest = Ingest(Config().ingest, journal, connectors, Metrics())
    ingest.process(messages)
    assert all(type(m) is RingMessage and m.ctx is None and orjson.loads(m[0])[2] == n
               for n, m in enumerate(messages, 1))
    journal.conn.execute("DELETE FROM events")
    journal.conn.execute("DELETE FROM clients")
    ingest.sequences.restore()
    ingest.process(messages)
    assert [r[0] for r in journal.conn.execute("SELECT seq FROM events ORDER BY id")] == [1, 2, 3]
    ingest.stop()
    journal.close()
