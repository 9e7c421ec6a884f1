"""Emit latency: the project's `emit` side by side with a bare pyzmq send.

    python bench/latency.py                 # 200k events of each, interleaved
    python bench/latency.py --events 20000  # shorter

Both run in the same loop, alternating call by call, with the same ~150-byte
event; `emit` goes to a real sidecar delivering to the Notion simulator, the
bare send to a PULL socket drained by another process. Each call is timed
with perf_counter_ns, whose own cost is in both columns alike.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import sys
import time
from pathlib import Path

import orjson
import zmq
from hdrh.histogram import HdrHistogram

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Stack, machine  # noqa: E402
from client import Client  # noqa: E402

PERCENTILES = (50, 90, 99, 99.9, 99.99)


def _drain(endpoint: str, ready: "multiprocessing.synchronize.Event") -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    ready.set()
    while True:
        sock.recv()


def event(n: int) -> dict:
    return {"symbol": "EURUSD", "side": "BUY", "price": 1.08345 + n * 1e-5, "qty": 100000,
            "ticket": 4_000_000 + n, "strategy": "mean-revert-3", "ts": 1_764_000_000.123 + n}


def run(events: int) -> dict[str, HdrHistogram]:
    hist = {name: HdrHistogram(1, 10_000_000, 3) for name in ("bare send", "emit")}
    with Stack(rate=3.0) as stack:
        sink = f"ipc://{stack.dir}/bare.sock"
        ready = multiprocessing.Event()
        drain = multiprocessing.Process(target=_drain, args=(sink, ready), daemon=True)
        drain.start()
        ready.wait(10)
        ctx = zmq.Context()
        bare = ctx.socket(zmq.PUSH)
        bare.setsockopt(zmq.SNDHWM, 300_000)
        bare.setsockopt(zmq.LINGER, 0)
        bare.connect(sink)
        client = Client(stack.endpoint)
        # A page to update, so the sidecar coalesces and delivers for real.
        client.emit("notion.page.create", {"parent": {"database_id": stack.db}, "properties": {}}, key="bench")
        send, dumps, clock, NOBLOCK = bare.send, orjson.dumps, time.perf_counter_ns, zmq.NOBLOCK
        emit = client.emit
        record_bare, record_emit = hist["bare send"].record_value, hist["emit"].record_value
        payloads = [event(n) for n in range(1000)]
        update = {"properties": {"Price": {"number": 1.0}}}
        gc.disable()
        try:
            for n in range(events):
                p = payloads[n % 1000]
                update["properties"]["Price"]["number"] = p["price"]
                if n & 1:  # alternate which goes first, so neither always follows the other
                    t0 = clock(); send(dumps(p), NOBLOCK); t1 = clock()
                    emit("notion.page.update", update, ref="bench"); t2 = clock()
                    record_bare(t1 - t0); record_emit(t2 - t1)
                else:
                    t0 = clock(); emit("notion.page.update", update, ref="bench"); t1 = clock()
                    send(dumps(p), NOBLOCK); t2 = clock()
                    record_emit(t1 - t0); record_bare(t2 - t1)
        finally:
            gc.enable()
        client.close()
        bare.close()
        ctx.term()
        drain.terminate()
    return hist


def table(hist: dict[str, HdrHistogram]) -> str:
    head = "| | " + " | ".join(f"p{p}" for p in PERCENTILES) + " | max |"
    rows = [head, "|---" * (len(PERCENTILES) + 2) + "|"]
    for name, h in hist.items():
        cells = [f"{h.get_value_at_percentile(p) / 1000:.2f} µs" for p in PERCENTILES]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {h.get_max_value() / 1000:.1f} µs |")
    base, ours = hist["bare send"], hist["emit"]
    ratio = [ours.get_value_at_percentile(p) / max(1, base.get_value_at_percentile(p)) for p in PERCENTILES]
    rows.append("| emit / bare | " + " | ".join(f"{r:.2f}×" for r in ratio) + " | |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="calls of each kind")
    args = parser.parse_args()
    hist = run(args.events)
    print(f"# emit latency, {args.events} calls each, {time.strftime('%Y-%m-%d')}, {machine()}")
    print(table(hist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
