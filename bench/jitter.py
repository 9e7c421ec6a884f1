"""Hot-loop jitter: the trading loop's own tick-to-tick time, with and without
events flowing, with the sidecar pinned away from the loop's core and not.

    python bench/jitter.py                 # 8 configurations, ~10 s each, interleaved
    python bench/jitter.py --rate 20000    # events per second while they flow
    python bench/jitter.py --smoke         # a few seconds, for CI

The loop runs free: each tick is ~10 µs of pure-Python "strategy" work
(two moving averages over 128 prices), and the time between tick starts is
recorded. Loads:

- none: no events at all (the sidecar runs, idle);
- emit: `Client.emit` of a page update every 1/rate s, through the
  shared-memory ring (the default for the sidecar's ``ipc://`` endpoint); the
  sidecar journals them and delivers them, coalesced, to the Notion simulator;
- emit (pure): the same on the pure-Python path, beside the compiled one
  (`client._fastemit`, when built) that "emit" runs;
- emit (zmq): the same with `Client(endpoint, transport="zmq")`, the ZeroMQ
  PUSH socket, for comparison;
- queue + thread: the same events put on a `queue.Queue`, with a thread of
  this process making one HTTP call per event (the usual first fix; it
  competes with the loop for the GIL).

Placements:

- pinned: the loop's thread alone on CPU 0; the loop's other threads
  (libzmq's IO thread, the queue worker), the sidecar and the simulator on
  the other CPUs;
- unpinned: no affinity anywhere; the scheduler decides.

One sidecar serves every configuration: placement is switched between
blocks by setting the affinity of every thread (what `taskset -a -p` does;
`[process] cpu_affinity = [1]` in the sidecar's config gives the same
placement from the start). Blocks of 2 s rotate through the eight
configurations, so each sees the same stretch of machine noise.
"""

from __future__ import annotations

import argparse
import array
import gc
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    CPUS,
    LOOP_CPU,
    OTHER_CPUS,
    NotionProcess,
    bench_args,
    bench_sidecar,
    histogram,
    out_dir,
    percentile_header,
    percentile_row,
    plot_percentiles,
    set_affinity,
    summary,
    tempdir,
    update_body,
    write_json,
)
from client import Client
from client.compiled import PATH

LOADS = ("none", "emit", "emit (pure)", "emit (zmq)", "queue + thread")
PLACEMENTS = ("pinned", "unpinned")
BLOCK_SECONDS = 2.0
FULL_SECONDS = 10.0  # per configuration
RING_BYTES = 128 << 20  # the Clients' rings, prefaulted, as the latency benchmark's (README: a long-running loop)
SMOKE_SECONDS = 0.3
STALL_NS = 100_000  # a tick this long is a stall worth counting
PRICES = 128
MIN_TICK_NS = 2_000  # no tick is shorter: sizes the sample buffer


def preemptions() -> int:
    """Involuntary context switches of this thread so far: how often the
    scheduler took the CPU away from the loop."""
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches"):
            return int(line.split()[1])
    return 0


def place(placement: str, pids: list[int]) -> None:
    """Apply a placement to this process's threads and to `pids` (all their threads)."""
    others = OTHER_CPUS if placement == "pinned" else CPUS
    me = threading.get_native_id()
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        if tid != me:
            try:
                os.sched_setaffinity(tid, set(others))
            except ProcessLookupError:
                pass
    os.sched_setaffinity(0, {LOOP_CPU} if placement == "pinned" else set(CPUS))
    for pid in pids:
        set_affinity(pid, others)


class Worker(threading.Thread):
    """queue + thread: one HTTP call per event, from a thread of this process."""

    def __init__(self, http: Any, page_id: str) -> None:
        super().__init__(name="queue-worker", daemon=True)
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.http = http
        self.path = f"pages/{page_id}"
        self.calls = 0

    def run(self) -> None:
        while (body := self.q.get()) is not None:
            try:
                self.http.patch(self.path, content=orjson.dumps({"properties": body["properties"]}))
            except Exception:  # noqa: BLE001 - the benchmark only needs the load
                pass
            self.calls += 1


def run_block(load: str, seconds: float, rate: int, emits: dict[str, Any], put: Any, bodies: list[dict[str, Any]],
              samples: array.array[int]) -> int:
    """Run the loop for `seconds`; add its tick-to-tick times to `samples`; return events sent."""
    clock = time.perf_counter_ns
    prices = [1.0 + i * 1e-4 for i in range(PRICES)]
    # Allocated up front: a growing array would copy itself mid-run, and that
    # copy would show up as a stall of the loop.
    buf = array.array("q", bytes(8 * int(seconds * 1e9 / MIN_TICK_NS)))
    ticks = 0
    every = int(1e9 / rate)
    send = emits.get(load) or (put if load == "queue + thread" else None)
    emitting = load in emits
    sent = 0
    prev = clock()
    end = prev + int(seconds * 1e9)
    next_event = prev + every
    signal = 0.0
    while prev < end and ticks < len(buf):
        now = clock()
        buf[ticks] = now - prev
        ticks += 1
        prev = now
        # The tick's work: two moving averages over the last prices.
        prices.append(1.0 + (now % 1000) * 1e-6)
        prices.pop(0)
        fast = slow = prices[0]
        for p in prices:
            fast += 0.2 * (p - fast)
            slow += 0.05 * (p - slow)
        signal += fast - slow
        if send is not None and now >= next_event:
            next_event += every
            if emitting:
                send("notion.page.update", bodies[sent % len(bodies)])
            else:
                send(bodies[sent % len(bodies)])
            sent += 1
    samples.extend(buf[1:ticks])  # the first is the block's set-up, not a tick
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=10_000, help="events per second while events flow")
    parser.add_argument("--seconds", type=float, help=f"seconds per configuration (default {FULL_SECONDS:g})")
    bench_args(parser)
    args = parser.parse_args()
    out = out_dir(args)
    seconds = SMOKE_SECONDS if args.smoke else args.seconds or FULL_SECONDS
    block = min(BLOCK_SECONDS, seconds / 2 if args.smoke else BLOCK_SECONDS)
    import httpx

    # With one CPU there is nothing to pin away from the loop.
    placements = PLACEMENTS if len(CPUS) > 1 else ("unpinned",)
    configs = [(p, load) for p in placements for load in LOADS]
    samples = {c: array.array("q") for c in configs}
    sent = dict.fromkeys(configs, 0)
    preempted = dict.fromkeys(configs, 0)
    with tempdir() as d, NotionProcess(rate=0) as sim, \
            bench_sidecar(d, notion_url=sim.api_url, token=sim.token, rate=3.0) as sidecar:
        headers = {"Authorization": f"Bearer {sim.token}", "Notion-Version": "2022-06-28",
                   "Content-Type": "application/json"}
        worker = Worker(httpx.Client(base_url=sim.api_url + "/", headers=headers, timeout=10), sim.page_id)
        worker.start()
        client = Client(sidecar.endpoint, ring_bytes=RING_BYTES, prefault=True)  # an ipc:// endpoint: the ring
        zclient = Client(sidecar.endpoint, transport="zmq")
        pclient = Client(sidecar.endpoint, ring_bytes=RING_BYTES, prefault=True)  # emit called on the pure path
        emits = {"emit": client.emit, "emit (pure)": Client.emit.__get__(pclient), "emit (zmq)": zclient.emit}
        bodies = [update_body(sim.page_id, n) for n in range(1000)]
        client.emit("notion.page.update", bodies[0])
        zclient.emit("notion.page.update", bodies[0])  # starts libzmq's IO thread
        pids = [sidecar.pid, sim.pid]
        try:
            rounds = max(1, round(seconds / block))
            for r in range(rounds):
                # Rotate the starting configuration each round.
                for placement, load in configs[r % len(configs):] + configs[:r % len(configs)]:
                    place(placement, pids)
                    gc.collect()
                    gc.disable()
                    switches = preemptions()
                    try:
                        sent[(placement, load)] += run_block(load, block, args.rate, emits, worker.q.put,
                                                             bodies, samples[(placement, load)])
                    finally:
                        gc.enable()
                    preempted[(placement, load)] += preemptions() - switches
                    # Let the worker's backlog go: each block starts from the same state.
                    with worker.q.mutex:
                        worker.q.queue.clear()
            journaled = sidecar.scrape().get("sidecar_events_journaled_total", 0)
            delivered = sidecar.scrape().get("sidecar_events_delivered_total", 0)
        finally:
            place("unpinned", [])
            worker.q.put(None)
            transport = client.transport_name
            drops = {"emit": client.stats()["dropped"], "emit (pure)": pclient.stats()["dropped"],
                     "emit (zmq)": zclient.stats()["dropped"]}
            client.close(1.0)
            zclient.close(1.0)
            pclient.close(1.0)

    hists = {}
    for c in configs:
        h = histogram()
        for v in samples[c]:
            h.record_value(max(1, v))
        hists[c] = h
    print(f"## Hot-loop jitter\n\n{time.strftime('%Y-%m-%d %H:%M')}. Tick-to-tick time of a free-running loop "
          f"(~10 µs of work a tick), µs; events at {args.rate:,}/s while they flow; {seconds:g} s per "
          f"configuration in {block:g} s blocks. Pinned: loop thread on CPU {LOOP_CPU}, everything else on "
          f"{OTHER_CPUS}. The sidecar journaled {journaled:,.0f} events and delivered {delivered:,.0f}; "
          f"the queue worker made {worker.calls:,} HTTP calls. emit goes through the {transport}, emit (zmq) "
          f"through ZeroMQ; drops: " + "; ".join(f"{k} {v or 'none'}" for k, v in drops.items()) + ".\n")
    print(percentile_header("placement, events", ["ticks", f"ticks > {STALL_NS // 1000} µs per s",
                                                  "loop preempted per s", "events/s"]))
    doc: dict[str, Any] = {"rate": args.rate, "transport": transport, "configs": {}, "p99_ratio": {}}
    for (placement, load), h in hists.items():
        stalls = sum(1 for v in samples[(placement, load)] if v > STALL_NS)
        print(percentile_row(f"{placement}, {load}", h, [f"{h.get_total_count():,}", f"{stalls / seconds:,.1f}",
                                                          f"{preempted[(placement, load)] / seconds:,.1f}",
                                                          f"{sent[(placement, load)] / seconds:,.0f}"]))
        doc["configs"][f"{placement}, {load}"] = {**summary(h), "stalls_per_s": stalls / seconds,
                                                  "preempted_per_s": preempted[(placement, load)] / seconds}
    print(f"\np99 tick with events flowing against none (goal for emit: ≤ 1.15×); emit runs the {PATH}:\n")
    print("| placement | " + " | ".join(f"{load} / none" for load in LOADS[1:]) + " |")
    print("|---" * len(LOADS) + "|")
    for p in placements:
        base = max(1, hists[(p, "none")].get_value_at_percentile(99))
        ratios = {load: hists[(p, load)].get_value_at_percentile(99) / base for load in LOADS[1:]}
        print(f"| {p} | " + " | ".join(f"{r:.2f}×" for r in ratios.values()) + " |")
        doc["p99_ratio"][p] = ratios
    plot = out / "jitter.png"
    plot_percentiles({p: {load: hists[(p, load)] for load in LOADS} for p in placements}, plot,
                     "Trading loop tick-to-tick time (µs)")
    print(f"\nPlot: {plot}")
    write_json(args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
