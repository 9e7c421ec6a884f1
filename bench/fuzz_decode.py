"""Fuzz: the C ring record decoder against the Python one and against `wire.decode`.

    python bench/fuzz_decode.py                      # 1,000,000 cases, a seed from the clock
    python bench/fuzz_decode.py --cases 20000 --seed 7

Each case is a binary v1 body (client/ring.py's docstring): a valid one
(keys and refs absent, empty, escaped, non-ASCII, not UTF-8; payloads of
every JSON type, nested near orjson's depth limit, integers and times
around 2**63), then as often as not mutated (bytes flipped, cut, extended,
the length fields and the kind code set at random), or plain random bytes.
What must hold (decode.py's docstring says why):

- `client._fastemit.ring_event` returns, never crashes, and leaks nothing
  (resident memory is compared between the first tenth of the cases and the end);
- its frame is `ring_event_py`'s, byte for byte, except where the Python
  path makes no frame (a key or ref that is not UTF-8: the C path copies
  the bytes, and `orjson.loads` refuses the frame: bad_json either way);
- its envelope is `ring_event_py`'s (both None, or equal field by field, types included);
- an envelope it gives is exactly what `wire.decode(frame)` gives: it never
  accepts what the Python path refuses, nor reads a frame otherwise.

With `--records`, the reader's compiled loops instead (`scan_run`,
`parse_run`, under `Ring._scan` and `Ring._parse`): random runs of records
(binary, JSON, checksummed, with blob references, wraps, unknown flags,
oversized, torn trailers; then mutated) read with them and without, which
must give the same result, the same exception and the same messages.

Exit status 1 and the first failing body (hex) if anything does not hold.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client import wire
from client.compiled import fastemit
from client.ring import BINARY_KINDS, BINARY_V1, FILE_HEADER, NO_STRING, RECORD
from sidecar.ingest.decode import FAST_PAYLOAD_MAX, ring_context, ring_event_py

CASES = 1_000_000
STRINGS = ["", "k", "key-1", "é\t", 'q"uote\\', "\x00\x1f\x7f", "日本語", "a" * 300, "\u2028"]
RAW_STRINGS = [b"\xff\xfe", b"\xed\xa0\x80", b"ok\xc3", b"\xc0\xaf"]  # not UTF-8 (the last two: overlong, surrogate)


def payloads(rng: random.Random) -> bytes:
    """A payload's bytes: mostly what orjson writes, sometimes not JSON, sometimes JSON orjson reads otherwise."""
    pick = rng.randrange(14)
    if pick == 0:
        depth = rng.choice([1, 500, 1022, 1023, 1024, 1025])
        return b"[" * depth + b"]" * depth
    if pick == 1:
        return rng.choice([b"", b" ", b"{", b'{"a":1}]', b"1,2", b"nul", b"\xef\xbb\xbf{}", b'"\xff"', b"NaN",
                           b"1e400", b"18446744073709551616", b"-9223372036854775809", b"[1,]", b"{} {}"])
    if pick == 2:
        return rng.choice([b" {} ", b"\n[1, 2]\t", b'{"a":1,"a":2}', b"1E5", b"-0", b"0.10", b'"\\u00e9\\/"',
                           b"18446744073709551615", b"true", b"null", b'"x"', b"9223372036854775808"])
    if pick == 3:
        return b'{"children":[' + b",".join([b'{"t":"x"}'] * rng.randrange(200)) + b"]}"
    if pick == 4:
        return b'{"s":"' + b"x" * rng.randrange(FAST_PAYLOAD_MAX - 16, FAST_PAYLOAD_MAX + 16) + b'"}'
    value: object = {"page_id": "59833787-2cf9-4fdf-8782-e53db20768a5",
                     "properties": {"Price": {"number": rng.random()}, "Side": {"select": {"name": "BUY"}}}}
    if pick == 5:
        value = [rng.randrange(-2**63, 2**64), rng.random() * 10 ** rng.randrange(-30, 30), rng.choice(STRINGS)]
    elif pick == 6:
        value = {rng.choice(STRINGS): rng.choice(STRINGS) for _ in range(rng.randrange(4))}
    return orjson.dumps(value)


def string_field(rng: random.Random) -> tuple[int, bytes]:
    """(length field, bytes) of a key or ref."""
    pick = rng.randrange(6)
    if pick == 0:
        return NO_STRING, b""
    if pick == 1:
        return 0, b""
    if pick == 2:
        raw = rng.choice(RAW_STRINGS)
        return len(raw), raw
    raw = rng.choice(STRINGS).encode()
    return len(raw), raw


def valid_body(rng: random.Random) -> bytes:
    edges = [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
    seq = rng.choice(edges) if rng.random() < 0.1 else rng.randrange(1, 1 << 40)
    ns = rng.choice(edges) if rng.random() < 0.1 else rng.randrange(1 << 61)
    kn, key = string_field(rng)
    rn, ref = string_field(rng)
    code = rng.randrange(len(BINARY_KINDS) + 1) if rng.random() < 0.05 else rng.randrange(len(BINARY_KINDS))
    return BINARY_V1.pack(seq, ns, kn, rn, code) + key + ref + payloads(rng)


def mutate(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    for _ in range(rng.randrange(1, 4)):
        pick = rng.randrange(6)
        if pick == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif pick == 1:
            del b[rng.randrange(len(b) + 1):]
        elif pick == 2:
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif pick == 3 and len(b) >= 20:
            b[16 + 2 * rng.randrange(2):18 + 2 * rng.randrange(2)] = rng.randrange(65536).to_bytes(2, "little")
        elif pick == 4 and len(b) >= 21:
            b[20] = rng.randrange(256)
        elif pick == 5:
            at = rng.randrange(len(b) + 1)
            b[at:at] = rng.choice([b'"', b"\\", b",", b"]", b"\x00", b"\xff", b"{"])
    return bytes(b)


def check(body: bytes, ctx: tuple, c_event) -> str | None:  # type: ignore[no-untyped-def]
    """None, or what went wrong with this body."""
    frame, env = c_event(body, ctx)
    py_frame, py_env = ring_event_py(body, ctx)
    if py_frame:
        if frame != py_frame:
            return f"frames differ: {frame[:80]!r} vs {py_frame[:80]!r}"
    elif frame:
        try:
            orjson.loads(frame)
            return "the C path made a readable frame where the Python path made none"
        except orjson.JSONDecodeError:
            pass
    if (env is None) != (py_env is None):
        return f"one path decoded, the other did not: C {env is not None}, Python {py_env is not None}"
    if env is not None:
        if env != py_env or [type(x) for x in env] != [type(x) for x in py_env]:
            return f"envelopes differ: {env!r} vs {py_env!r}"
        try:
            decoded = wire.decode(frame)
        except wire.WireError as exc:
            return f"decoded an envelope wire.decode refuses ({exc.reason})"
        if decoded != env or [type(x) for x in decoded] != [type(x) for x in env]:
            return f"decoded otherwise than wire.decode: {env!r} vs {decoded!r}"
    return None


def run(cases: int, seed: int) -> int:
    if fastemit is None:
        print("client._fastemit is not built (or SIDECAR_PURE_PYTHON is set): nothing to fuzz")
        return 0
    sys.setrecursionlimit(10_000)  # comparing payloads nested 1,023 deep
    rng = random.Random(seed)
    ctx = ring_context("fuzz-1")
    c_event = fastemit.ring_event
    seeds = [valid_body(rng) for _ in range(2000)]
    rss_at = 0
    t = time.monotonic()
    decoded = 0
    for n in range(cases):
        if n == cases // 10:
            rss_at = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pick = rng.random()
        if pick < 0.45:
            body = valid_body(rng)
        elif pick < 0.95:
            body = mutate(rng, rng.choice(seeds) if rng.random() < 0.5 else valid_body(rng))
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        problem = check(body, ctx, c_event)
        if problem is not None:
            print(f"case {n} (seed {seed}): {problem}\nbody: {body.hex()}")
            return 1
        decoded += c_event(body, ctx)[1] is not None
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_at
    print(f"{cases:,} cases (seed {seed}) in {time.monotonic() - t:.0f} s: C and Python agree, "
          f"{decoded:,} decoded at once and each as wire.decode reads it; peak RSS grew {grew} KiB after the first tenth")
    return 1 if grew > 16 * 1024 else 0


def record(rng: random.Random, pos: int) -> bytes:
    """One record at position `pos`, mostly well made."""
    pick = rng.randrange(40)
    flags = [0x00, 0x12, 0x110, 0x01, rng.randrange(65536)][pick] if pick < 5 else 0x10
    size = rng.choice([0, 1, 23, 24, 40, 200, rng.randrange(600)])
    body = valid_body(rng)[:size].ljust(size, b"x") if flags == 0x10 else rng.randbytes(size)
    nparts = 1 if rng.random() < 0.98 else rng.randrange(4)
    rec = (size + RECORD.size + 8 + 7) & ~7
    end = pos + rec if rng.random() < 0.99 else pos + rec + rng.choice([-8, 8, 1 << 40])
    return RECORD.pack(size, nparts, flags, rng.randrange(1 << 32), 0) + body + bytes(rec - RECORD.size - size - 8) \
        + end.to_bytes(8, "little")


def records_case(rng: random.Random, fd: int) -> tuple[Any, Any]:
    """The outcome of `Ring._scan` and `Ring._parse` over one random buffer, as comparable values."""
    from sidecar.ingest import ring_reader

    cap = 1 << 14
    off = rng.randrange(cap // 8) * 8
    pos = rng.randrange(1 << 20) * cap + off
    buf = b""
    want = rng.randrange(64, 8192)
    while len(buf) < want and off + len(buf) < cap:
        buf += record(rng, pos + len(buf))
    if rng.random() < 0.3:
        b = bytearray(buf)
        for _ in range(rng.randrange(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        buf = bytes(b[:rng.randrange(len(b) + 1)] if rng.random() < 0.3 else b)
    os.ftruncate(fd, 0)  # the file behind the copy: _trailer_ok reads a trailer beyond it from there
    os.pwrite(fd, buf, FILE_HEADER + off)
    ring = ring_reader.Ring.__new__(ring_reader.Ring)
    ring.fd, ring.pos, ring.largest = fd, pos, rng.choice([100, 300, 1 << 20])
    ring.header = SimpleNamespace(capacity=cap, checksum=rng.random() < 0.2, client_id="f-1")
    ring._ctx = ring_context("f-1")
    ring.blobs = SimpleNamespace(resolve=lambda parts, at: True)
    budget, limit = rng.choice([1 << 30, rng.randrange(1, 4096)]), rng.choice([1 << 30, rng.randrange(1, 20)])

    def outcome(call: Any) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 -- compared, whatever it is
            return (type(exc).__name__, str(exc))

    out: list[Any] = []
    scanned = outcome(lambda: ring._scan(buf, off, budget, limit))
    parsed = outcome(lambda: ring._parse(buf, off, limit, out))
    return (scanned, parsed), [(list(m), m.client_id, m.ctx) for m in out]


def run_records(cases: int, seed: int) -> int:
    from sidecar.ingest import ring_reader

    if ring_reader._scan_run is None:
        print("client._fastemit is not built (or SIDECAR_PURE_PYTHON is set): nothing to fuzz")
        return 0
    compiled = ring_reader._scan_run, ring_reader._parse_run
    rng_seed = random.Random(seed)
    t = time.monotonic()
    taken = 0
    with tempfile.TemporaryDirectory() as d:
        fd = os.open(f"{d}/ring", os.O_RDWR | os.O_CREAT, 0o600)
        for n in range(cases):
            case_seed = rng_seed.randrange(1 << 62)
            results = []
            for loops in (compiled, (None, None)):
                ring_reader._scan_run, ring_reader._parse_run = loops
                results.append(records_case(random.Random(case_seed), fd))
            ring_reader._scan_run, ring_reader._parse_run = compiled
            if results[0] != results[1]:
                print(f"case {n} (seed {seed}, case seed {case_seed}): C {results[0][0]} vs Python {results[1][0]}")
                return 1
            taken += len(results[0][1])
        os.close(fd)
    print(f"{cases:,} record runs (seed {seed}) in {time.monotonic() - t:.0f} s: the compiled loops read as "
          f"Python's ({taken:,} messages)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=CASES)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    parser.add_argument("--records", action="store_true", help="the reader's loops over records instead")
    args = parser.parse_args()
    return run_records(args.cases, args.seed) if args.records else run(args.cases, args.seed)


if __name__ == "__main__":
    sys.exit(main())
