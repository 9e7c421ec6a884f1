"""Floors: what each part of emit and of durable ingest costs on its own, in this process.

    python bench/floors.py            # 200,000 calls a part, best of 5; ~30 s
    python bench/floors.py --smoke    # a few thousand calls, for CI

The goals of the shared-memory hand-off (issue 8) ask emit to cost no more
than a bare ZeroMQ send of the same payload, and ingest to journal 200,000
events a second on 2 cores (5 µs an event for everything). This measures
the parts those figures are made of, each in a tight loop (mean ns per
call, best of 5 runs; the "(call)" row is a loop calling a function that
does nothing, the overhead every other row includes):

- emit's parts: serialising the payload alone (what a bare send serialises),
  serialising emit's envelope (version, client id, seq, kind, key, ref,
  time, payload), reading the clock, a ring write of a ready frame, a bare
  `send(NOBLOCK)` of a ready frame on a PUSH socket, and the whole
  `Client.emit` through a ring nobody reads (so no reader competes), on the
  compiled path (`client._fastemit`, when built) and on the pure-Python one;
- ingest's parts, per event, in batches of 4,096 as ingest commits them:
  `orjson.loads` of a frame, `wire.decode` (parse and check the envelope),
  a binary v1 body turned into its envelope (`sidecar.ingest.decode`, C and Python),
  `Ingest.process` whole (decode, route, validate, the journal write) of
  those frames and of the same events as ring records in binary v1 (what
  the compiled client writes: no envelope to parse, `decode.ring_event`), the
  journal write alone (`Journal.write_batch` of the same rows, with the
  events table's two indexes), and the same rows into a table without
  indexes, in WAL mode with synchronous=FULL as the sidecar runs by
  default (an fsync a commit; no checkpoints, which the sidecar's main
  thread runs, not ingest), then both again with NORMAL, and the
  table without indexes in memory: what binding and storing 11 columns a
  row costs with no file at all.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_args, tempdir, update_body, write_json
from client import Client, wire
from client.compiled import fastemit
from client.ring import BINARY_V1, NO_STRING, RingWriter
from sidecar.ingest import batch as batch_module
from sidecar.ingest.decode import (
    KINDS_JSON,
    RingContext,
    RingMessage,
    binary_frame_py,
    client_id_json,
    ring_context,
    ring_event,
    ring_event_py,
)

CALLS, SMOKE_CALLS, REPEATS = 200_000, 5_000, 5
MAX_CALLS = 500_000  # what a 128 MiB ring holds of this frame (~590,000), with no reader
RING_BYTES = 128 << 20  # not the default ring (8 MiB since issue 19): it would fill after ~30,000 calls
BATCH = 4096
PAGE_ID = "59833787-2cf9-4fdf-8782-e53db20768a5"


def best_ns(make: Callable[[], Callable[[int], object]], calls: int, repeats: int,
            done: Callable[[], None] = lambda: None) -> float:
    """Mean ns per call of the function `make()` returns, called with 0..calls-1; best of `repeats`,
    each run with a fresh function (a fresh ring or socket), `done()` after each run (closing it)."""
    best = float("inf")
    for _ in range(repeats):
        call = make()
        t = time.perf_counter_ns()
        for n in range(calls):
            call(n)
        best = min(best, (time.perf_counter_ns() - t) / calls)
        done()
    return best


def emit_parts(d: Path, calls: int, repeats: int) -> dict[str, float]:
    bodies = [update_body(PAGE_ID, n) for n in range(64)]
    frame = wire.encode("bench-1", 1, "notion.page.update", None, None, time.time_ns(), bodies[0])
    dumps, time_ns = orjson.dumps, time.time_ns
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)
    pull.bind(f"ipc://{d}/bare.sock")
    sockets: list[zmq.Socket[bytes]] = []
    rings: list[Any] = []

    def noop() -> Callable[[int], object]:
        def call(n: int) -> None:
            bodies[n & 63]
        return call

    def payload() -> Callable[[int], object]:
        return lambda n: dumps(bodies[n & 63])

    def envelope() -> Callable[[int], object]:
        return lambda n: dumps([1, "4242-0123456789ab", n, "notion.page.update", None, None, n,
                                bodies[n & 63]])

    def clock() -> Callable[[int], object]:
        return lambda n: time_ns()

    def ring_write() -> Callable[[int], object]:
        writer = RingWriter.create(str(d), f"w{len(rings)}", capacity=RING_BYTES, prefault=True)
        rings.append(writer)
        send = writer.send
        return lambda n: send(frame)

    def bare_send() -> Callable[[int], object]:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"ipc://{d}/bare.sock")
        sockets.append(push)
        send, noblock = push.send, zmq.NOBLOCK
        return lambda n: send(frame, noblock)

    def emit(pure: bool = False) -> Callable[[int], object]:
        (d / "ingest.rings").mkdir(exist_ok=True, mode=0o2770)
        client = Client(f"ipc://{d}/ingest.sock", prefault=True, ring_bytes=RING_BYTES)
        rings.append(client)
        # pure: the class's method, the pure-Python path, even where the compiled one is bound.
        em = Client.emit.__get__(client) if pure else client.emit

        def call(n: int) -> None:
            em("notion.page.update", bodies[n & 63])
        return call

    def close_all() -> None:
        for r in rings:
            r.close(0) if isinstance(r, Client) else r.close()
        for sock in sockets:
            sock.close(0)
        rings.clear()
        sockets.clear()

    parts = {"(call)": noop, "orjson.dumps(payload)": payload, "orjson.dumps(emit's envelope)": envelope,
             "time.time_ns()": clock, "ring write of a ready frame": ring_write,
             "bare send(NOBLOCK) of a ready frame": bare_send,
             f"Client.emit (ring, no reader), {'compiled' if fastemit else 'pure-Python'} path": emit,
             "Client.emit (ring, no reader), pure-Python path": lambda: emit(pure=True)}
    try:
        return {name: best_ns(make, calls, repeats, close_all) for name, make in parts.items()}
    finally:
        close_all()
        pull.close(0)
        ctx.term()


def ingest_parts(d: Path, events: int, repeats: int) -> dict[str, float]:
    from sidecar.config import Config
    from sidecar.connectors import build_lanes
    from sidecar.ingest.core import Ingest
    from sidecar.journal.store import INSERT_EVENT, EventRow, Journal
    from sidecar.ops.metrics import Metrics

    frames = [wire.encode("bench-1", n + 1, "notion.page.update", None, None, time.time_ns(),
                          update_body(PAGE_ID, n)) for n in range(events)]
    batches = [[[f] for f in frames[i:i + BATCH]] for i in range(0, events, BATCH)]
    rows = [EventRow("notion", "notion.page.update", f"update:{PAGE_ID}", None, None, "bench-1", n + 1, 0, 0,
                     f, None) for n, f in enumerate(frames)]
    row_batches = [rows[i:i + BATCH] for i in range(0, events, BATCH)]
    token = os.environ.pop("NOTION_TOKEN", None)  # a paused lane: routing only
    try:
        connectors = {name: spec.connector for name, spec in build_lanes(Config()).items()}
    finally:
        if token is not None:
            os.environ["NOTION_TOKEN"] = token
    made = 0

    def per_event(setup: Callable[[], tuple[Callable[[], None], Callable[[], None]]]) -> float:
        """`setup()` gives (the timed run, what closes after it): opening and closing are not timed."""
        best = float("inf")
        for _ in range(repeats):
            run, close = setup()
            t = time.perf_counter_ns()
            run()
            best = min(best, (time.perf_counter_ns() - t) / events)
            close()
        return best

    def fresh(sync: str = "FULL") -> Journal:
        nonlocal made
        made += 1
        # As the sidecar's ingest journal: it never checkpoints (the main thread does).
        return Journal.open(d / f"j{made}", synchronous=sync, checkpoints=False)

    def process(ring: Callable[[bytes, RingContext], tuple[bytes, Any]] | None = None,
                ) -> tuple[Callable[[], None], Callable[[], None]]:
        """`ring`: the ring's messages (binary v1 bodies, as the compiled client writes them), settled
        by this `ring_event` (C or Python); else the frames, as the socket or a format-0 record gives them."""
        journal = fresh()
        ingest = Ingest(Config().ingest, journal, connectors, Metrics())
        todo: list[list[list[bytes]]] = batches
        if ring is not None:  # fresh messages a run: ingest settles each in place
            ctx = ring_context("bench-1")
            todo = [[RingMessage([body], "bench-1", ctx) for body in bodies[i:i + BATCH]]
                    for i in range(0, events, BATCH)]

        def run() -> None:
            batch_module.ring_event = ring or ring_event  # type: ignore[assignment]
            try:
                for b in todo:
                    ingest.process(b)
            finally:
                batch_module.ring_event = ring_event

        def close() -> None:
            ingest.stop()
            journal.close()
        return run, close

    def write_batch(sync: str) -> Callable[[], tuple[Callable[[], None], Callable[[], None]]]:
        def setup() -> tuple[Callable[[], None], Callable[[], None]]:
            journal = fresh(sync)

            def run() -> None:
                for b in row_batches:
                    journal.write_batch(b)
            return run, journal.close
        return setup

    def no_index(sync: str) -> Callable[[], tuple[Callable[[], None], Callable[[], None]]]:
        """`sync` "memory": a database in memory, so no file and no WAL: the sqlite3 module and SQLite alone."""
        def setup() -> tuple[Callable[[], None], Callable[[], None]]:
            nonlocal made
            made += 1
            conn = sqlite3.connect(":memory:" if sync == "memory" else d / f"bare{made}.db", isolation_level=None)
            if sync != "memory":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={sync}")
                conn.execute("PRAGMA wal_autocheckpoint=0")  # as ingest's journal
            conn.execute(f"CREATE TABLE events (id INTEGER PRIMARY KEY, {', '.join(EventRow._fields)})")

            def run() -> None:
                for b in row_batches:
                    conn.execute("BEGIN")
                    conn.executemany(INSERT_EVENT, map(tuple, b))  # as the journal binds them
                    conn.execute("COMMIT")
            return run, conn.close
        return setup

    loads, decode = orjson.loads, wire.decode
    cid = client_id_json("bench-1")
    bodies = [BINARY_V1.pack(n + 1, 0, NO_STRING, NO_STRING, 1) + orjson.dumps(update_body(PAGE_ID, n))
              for n in range(events)]

    def binary(to_frame: Callable[..., bytes]) -> Callable[[], tuple[Callable[[], None], Callable[[], None]]]:
        def run() -> None:
            for b in bodies:
                to_frame(b, cid, KINDS_JSON)
        return lambda: (run, lambda: None)

    compiled = {"binary v1 body → envelope, compiled (client._fastemit)": per_event(binary(fastemit.binary_frame))
                } if fastemit is not None else {}

    def each(parse: Callable[[bytes], Any]) -> Callable[[], tuple[Callable[[], None], Callable[[], None]]]:
        def run() -> None:
            for f in frames:  # nothing kept: a list of 100,000 results would time the garbage collector
                parse(f)
        return lambda: (run, lambda: None)

    return {
        "orjson.loads(frame)": per_event(each(loads)),
        "wire.decode(frame)": per_event(each(decode)),
        **compiled,
        "binary v1 body → envelope, pure Python": per_event(binary(binary_frame_py)),
        "Ingest.process (decode, route, validate, journal)": per_event(process),
        **({"Ingest.process of ring records (binary v1, compiled ring_event)":
            per_event(lambda: process(fastemit.ring_event))} if fastemit is not None else {}),
        "Ingest.process of ring records (binary v1, pure-Python ring_event)":
            per_event(lambda: process(ring_event_py)),
        "Journal.write_batch of the rows (two indexes)": per_event(write_batch("FULL")),
        "the same rows into a table without indexes": per_event(no_index("FULL")),
        "Journal.write_batch, synchronous=NORMAL (no fsync a commit)": per_event(write_batch("NORMAL")),
        "no indexes, synchronous=NORMAL": per_event(no_index("NORMAL")),
        "no indexes, a database in memory (no file)": per_event(no_index("memory")),
    }


def table(rows: dict[str, float], unit: str, budget: float | None = None) -> list[str]:
    out = [f"| part | {unit} |" + (" share of the budget |" if budget else ""),
           "|---|---|" + ("---|" if budget else "")]
    for name, value in rows.items():
        out.append(f"| {name} | {value:,.0f} |" + (f" {100 * value / budget:.0f}% |" if budget else ""))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=CALLS, help=f"calls per part (default {CALLS:,})")
    bench_args(parser)
    args = parser.parse_args(argv)
    calls, repeats = (SMOKE_CALLS, 2) if args.smoke else (min(args.calls, MAX_CALLS), REPEATS)
    with tempdir() as d:
        emit = emit_parts(d, calls, repeats)
        ingest = ingest_parts(d, min(calls, 100_000), repeats)
    print(f"## Floors\n\n{time.strftime('%Y-%m-%d %H:%M')}. Each part alone in this process, mean of "
          f"{calls:,} calls, best of {repeats} runs (ingest: {min(calls, 100_000):,} events in batches of "
          f"{BATCH:,}). Load average {os.getloadavg()[0]:.2f}.\n")
    print("Emit's parts, ns per call (each row includes the \"(call)\" overhead):\n")
    print("\n".join(table(emit, "ns per call")))
    print("\nIngest's parts, ns per event, against the 5,000 ns an event that 200,000 events/s leave "
          "(with nothing else on the core):\n")
    print("\n".join(table(ingest, "ns per event", budget=5_000)))
    write_json(args, {"calls": calls, "repeats": repeats, "emit_ns": emit, "ingest_ns": ingest})
    return 0


if __name__ == "__main__":
    sys.exit(main())
