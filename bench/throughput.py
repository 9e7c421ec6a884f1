"""Throughput: sustained durable ingest into the journal, the sidecar's CPU
per event, and where that CPU goes.

    python bench/throughput.py                  # ring and zmq, 1 and 4 producers, pinned and not, 1,000,000 events a run
    python bench/throughput.py --events 300000 --placements pinned --transports ring
    python bench/throughput.py --smoke          # a few seconds, for CI

The sidecar runs without a Notion token, so its lane is paused and every
event stays in the journal (synchronous=FULL, the default: each group commit
is fsynced). Producer processes emit their share as fast as `emit` allows,
through the shared-memory ring (ring: the default for the sidecar's
``ipc://`` endpoint, the compiled emit when built; ring-pure: the same with
the pure-Python emit) or `Client(endpoint, transport="zmq")` (zmq); the
backlog waits in the rings or the ZeroMQ queues, so the sidecar always has
work (a full ring or queue refuses an emit, and the producer retries it
1 ms later). Ingest
is read from the sidecar's /metrics (`sidecar_events_journaled_total`,
counted after each commit) every 0.2 s; the sustained rate is the slope
between 10% and 90% of the events, and the journal's row count is checked
at the end. Pinned, the sidecar runs on CPU 1 (`[process] cpu_affinity`)
and the producers on CPU 0; unpinned, the scheduler places everything.

The profile runs `Ingest.process` in this process, under cProfile, on the
same recorded frames in batches of `batch_max`, against a journal in a
temporary directory, and times the receive of those frames apart: from a
ZeroMQ PULL socket, and from a ring with the sidecar's reader
(`sidecar.ingest.rings`, acknowledging after each batch as ingest does);
then the same events as a `Client` writes them into a ring (binary v1
records with the compiled emit), read as ingest reads them and processed.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    CPUS,
    LOOP_CPU,
    OTHER_CPUS,
    bench_args,
    bench_sidecar,
    cpu_seconds,
    tempdir,
    update_body,
    write_json,
)

FULL_EVENTS = 1_000_000
SMOKE_EVENTS = 20_000
PROFILE_EVENTS = 200_000
SAMPLE_SECONDS = 0.2
PAGE_ID = "3f1c2a64-6b7e-4c1d-9a55-0c6f2b9d8e71"
RING_BYTES = 128 << 20


def _produce(endpoint: str, transport: str, count: int, cpus: list[int] | None, go: Any, done: Any) -> None:
    """One producer process: `count` page updates, as fast as emit takes them."""
    if cpus is not None:
        os.sched_setaffinity(0, set(cpus))
    from client import Client

    # A ring that holds the whole run (as the 128 MiB default did before issue 19; README "Sizing a
    # ring"): with the 8 MiB default a producer outran the sidecar, slept 1 ms a refusal, and the
    # sidecar then waited on it, so the figure was partly the producer's back-off.
    client = Client(endpoint, transport="ring" if transport == "ring-pure" else transport, ring_bytes=RING_BYTES)
    bodies = [update_body(PAGE_ID, n) for n in range(1000)]
    # ring-pure: the pure-Python emit (the class's method), beside the compiled one in the same run.
    emit = Client.emit.__get__(client) if transport == "ring-pure" else client.emit
    go.wait()
    n = 0
    while n < count:
        if emit("notion.page.update", bodies[n % 1000]):
            n += 1
        else:
            time.sleep(0.001)  # queue full: back off rather than lose events
    done.put(client.stats()["dropped"])
    client.close(60)


def run(transport: str, producers: int, events: int, cpus: list[int] | None,
        sidecar_cpus: list[int] | None) -> dict[str, Any]:
    """One measurement: `events` in total from `producers` processes."""
    mp = multiprocessing.get_context("fork")
    with tempdir() as d, bench_sidecar(d, cpus=sidecar_cpus) as sidecar:
        go, done = mp.Event(), mp.Queue()
        share = [events // producers + (i < events % producers) for i in range(producers)]
        procs = [mp.Process(target=_produce, args=(sidecar.endpoint, transport, n, cpus, go, done)) for n in share]
        for p in procs:
            p.start()
        time.sleep(0.5)  # let every producer connect
        cpu0 = cpu_seconds(sidecar.pid)
        threads0 = thread_cpu(sidecar.pid)
        t0 = time.monotonic()
        go.set()
        samples: list[tuple[float, float]] = []
        deadline = t0 + max(120.0, events / 5_000)
        while True:
            journaled = sidecar.scrape().get("sidecar_events_journaled_total", 0.0)
            samples.append((time.monotonic() - t0, journaled))
            if journaled >= events or time.monotonic() > deadline:
                break
            time.sleep(SAMPLE_SECONDS)
        cpu = cpu_seconds(sidecar.pid) - cpu0
        elapsed = time.monotonic() - t0
        threads = sorted(((name, (cpu_s - threads0.get(tid, (name, 0.0))[1]) / elapsed)
                          for tid, (name, cpu_s) in thread_cpu(sidecar.pid).items()), key=lambda t: -t[1])
        drops: dict[str, int] = {}
        for _ in procs:
            for reason, n in done.get(timeout=60).items():
                drops[reason] = drops.get(reason, 0) + n
        for p in procs:
            p.join(60)
        rows = sidecar.journal_count()
        # One group commit stamps its rows with one received_ns: the mean batch, to see per-batch costs.
        batches = int(sidecar.query("SELECT COUNT(DISTINCT received_ns) FROM events")[0][0])
    return {"transport": transport, "producers": producers, "events": events, "samples": samples, "cpu": cpu, "rows": rows,
            "batch": rows / max(1, batches),
            "drops": drops, "rate": sustained(samples, events), "elapsed": samples[-1][0], "threads": threads}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of `pid`, with its name: libzmq names its
    own (ZMQbg/...), Python's show as "python" (ingest is the busy one), and
    the main thread, which runs the event loop and the lanes, as "main"."""
    import psutil

    out = {}
    for t in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            continue
        out[t.id] = ("main" if t.id == pid else name, t.user_time + t.system_time)
    return out


def sustained(samples: list[tuple[float, float]], events: int) -> float:
    """Events per second between the samples nearest 10% and 90% of `events`."""
    lo = next((s for s in samples if s[1] >= 0.1 * events), samples[0])
    hi = next((s for s in samples if s[1] >= 0.9 * events), samples[-1])
    return (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else 0.0


def ring_receive(directory: Path, frames: list[bytes], batch: int) -> float:
    """Seconds per frame for the sidecar's ring reader to take `frames` out of
    a ring, `batch` at a time, acknowledging each batch (the journal's part
    left out); the producer writes between reads when the ring is full."""
    from client.ring import RingWriter
    from client.transport import QueueFull
    from sidecar.ingest.rings import Rings
    from sidecar.ops.metrics import Metrics

    writer = RingWriter.create(str(directory), "bench-1")
    rings = Rings(str(directory), Metrics())
    rings.open()
    got = i = 0
    elapsed = 0.0
    try:
        while got < len(frames):
            try:
                while i < len(frames):
                    writer.send(frames[i])
                    i += 1
            except QueueFull:
                pass
            t = time.perf_counter()
            while True:
                n = len(rings.read(batch))
                rings.ack()
                got += n
                if n == 0:
                    break
            elapsed += time.perf_counter() - t
    finally:
        writer.close()
        rings.close()
    return elapsed / len(frames)


def ring_receive_binary(directory: Path, events: int, batch: int) -> tuple[list[list[bytes]], float]:
    """The messages ingest takes from a ring of `events` page updates written by a `Client`
    (binary v1 records where the compiled emit is built), read `batch` at a time as ingest
    reads them (`read_by_ring`, acknowledged after each batch), and the seconds per message."""
    from client import Client
    from sidecar.ingest.rings import Rings
    from sidecar.ops.metrics import Metrics

    rings_dir = directory / "ingest.rings"
    rings_dir.mkdir(mode=0o2770, parents=True)
    client = Client(f"ipc://{directory}/ingest.sock", ring_bytes=1 << 28)
    bodies = [update_body(PAGE_ID, n) for n in range(1000)]
    for n in range(events):
        client.emit("notion.page.update", bodies[n % 1000])
    rings = Rings(str(rings_dir), Metrics())
    rings.open()
    rings.maintain(time.monotonic(), force=True)
    got: list[list[bytes]] = []
    t = time.perf_counter()
    while True:
        messages = [m for _ring, ms in rings.read_by_ring(batch) for m in ms]
        rings.ack()
        if not messages:
            break
        got += messages
    elapsed = time.perf_counter() - t
    client.close(0)
    rings.close()
    return got, elapsed / max(1, len(got))


def profile(events: int, top: int = 12) -> tuple[str, dict[str, float]]:
    """cProfile of Ingest.process on recorded frames; the receive timed apart."""
    import zmq

    from client import wire
    from sidecar.config import Config, IngestConfig
    from sidecar.connectors import build_lanes
    from sidecar.ingest.core import Ingest
    from sidecar.journal.store import Journal
    from sidecar.ops.metrics import Metrics

    frames = [wire.encode("bench-1", n + 1, "notion.page.update", None, None, time.time_ns(),
                          update_body(PAGE_ID, n)) for n in range(events)]
    batch = IngestConfig().batch_max
    env_token = os.environ.pop("NOTION_TOKEN", None)  # a paused lane, as in the measured runs
    try:
        connectors = {name: spec.connector for name, spec in build_lanes(Config()).items()}
    finally:
        if env_token is not None:
            os.environ["NOTION_TOKEN"] = env_token
    timings: dict[str, float] = {}
    with tempdir() as d:
        # The receive half: the same frames through a PUSH/PULL pair, drained as ingest drains.
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, 0)
        pull.bind(f"ipc://{d}/p.sock")
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(f"ipc://{d}/p.sock")
        for f in frames:
            push.send(f)
        got: list[list[bytes]] = []
        t = time.perf_counter()
        while len(got) < events:
            if pull.poll(1000):
                try:
                    while True:
                        got.append(pull.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    pass
        timings["receive (recv_multipart)"] = (time.perf_counter() - t) / events
        push.close(0)
        pull.close(0)
        ctx.term()
        timings["receive (ring read + ack)"] = ring_receive(Path(d) / "bench.rings", frames, batch)
        binary, per = ring_receive_binary(Path(d) / "binary", events, batch)
        timings["receive (ring read + ack), the Client's records (binary v1 if compiled)"] = per
        journal = Journal.open(Path(d) / "binary" / "journal", synchronous="FULL")
        ingest = Ingest(Config().ingest, journal, connectors, Metrics())
        t = time.perf_counter()
        for i in range(0, len(binary), batch):
            ingest.process(binary[i:i + batch])
        timings["process those records, synchronous=FULL"] = (time.perf_counter() - t) / len(binary)
        journal.close()
        batches = [got[i:i + batch] for i in range(0, events, batch)]
        for name, sync in (("process, synchronous=FULL", "FULL"), ("process, synchronous=NORMAL", "NORMAL")):
            journal = Journal.open(Path(d) / sync, synchronous=sync)
            ingest = Ingest(Config().ingest, journal, connectors, Metrics())
            t = time.perf_counter()
            for b in batches:
                ingest.process(b)
            timings[name] = (time.perf_counter() - t) / events
            journal.close()
        journal = Journal.open(Path(d) / "profiled")
        ingest = Ingest(Config().ingest, journal, connectors, Metrics())
        prof = cProfile.Profile()
        prof.enable()
        for b in batches:
            ingest.process(b)
        prof.disable()
        journal.close()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    lines = ["| function (own time) | % of process | µs per event |", "|---|---|---|"]
    for (file, line, func), (_, _calls, tottime, _, _) in rows:
        where = f"{Path(file).name}:{line} {func}" if line else func
        lines.append(f"| `{where}` | {100 * tottime / total:.1f}% | {1e6 * tottime / events:.2f} |")
    return "\n".join(lines), timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, help=f"events per run (default {FULL_EVENTS:,})")
    parser.add_argument("--producers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--transports", nargs="+", choices=["ring", "ring-pure", "zmq"],
                        default=["ring", "ring-pure", "zmq"],
                        help="ring: the default for an ipc:// endpoint (the compiled emit, if built); ring-pure: "
                             "the same with the pure-Python emit; zmq: Client(..., transport='zmq')")
    parser.add_argument("--placements", nargs="+", choices=["pinned", "unpinned"], default=["pinned", "unpinned"],
                        help="pinned: sidecar on CPU 1, producers on CPU 0; unpinned: no affinity")
    bench_args(parser)
    args = parser.parse_args()
    events = SMOKE_EVENTS if args.smoke else args.events or FULL_EVENTS
    placements = args.placements if len(CPUS) > 1 else ["unpinned"]
    if args.smoke:
        placements = placements[:1]  # does it run: one placement is enough, and keeps CI short
    results = []
    for placement in placements:
        cpus, sidecar_cpus = ([LOOP_CPU], OTHER_CPUS) if placement == "pinned" else (None, None)
        results += [{"placement": placement, **run(t, p, events, cpus, sidecar_cpus)}
                    for t in args.transports for p in args.producers]
    table, timings = profile(SMOKE_EVENTS if args.smoke else PROFILE_EVENTS)

    print(f"## Throughput\n\n{time.strftime('%Y-%m-%d %H:%M')}. Durable ingest (synchronous=FULL, lane paused), "
          f"{events:,} events a run. Pinned: sidecar on CPU {OTHER_CPUS} (`[process] cpu_affinity`), producers "
          f"on CPU {LOOP_CPU}; unpinned: no affinity.\n")
    print("| placement | transport | producers | sustained events/s (10%–90%) | all journaled after | sidecar CPU s "
          "per 100k events | sidecar threads, % of one core | journal rows | mean batch (events a commit) "
          "| emits refused (queue full, then retried) |")
    print("|---" * 10 + "|")
    doc: dict[str, Any] = {"events": events, "runs": {}, "profile_us": {}}
    for r in results:
        per_100k = r["cpu"] / max(1, r["rows"]) * 100_000
        busy = ", ".join(f"{name} {100 * share:.0f}%" for name, share in r["threads"][:3])
        print(f"| {r['placement']} | {r['transport']} | {r['producers']} | {r['rate']:,.0f} | {r['elapsed']:.1f} s "
              f"| {per_100k:.2f} "
              f"| {busy} | {r['rows']:,} | {r['batch']:,.0f} | {r['drops'].get('queue_full', 0):,} |")
        doc["runs"][f"{r['placement']}, {r['transport']}, {r['producers']}"] = {
            "transport": r["transport"], "producers": r["producers"], "rate": r["rate"], "cpu_per_100k": per_100k,
            "rows": r["rows"], "elapsed": r["elapsed"], "mean_batch": r["batch"],
            "busiest_thread": r["threads"][0][1]}
    print("\nIngest in one thread, in-process, on the same frames (µs per event; "
          "events/s if nothing else ran):\n")
    print("| stage | µs per event | events/s |\n|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds * 1e6:.2f} | {1 / seconds:,.0f} |")
        doc["profile_us"][name] = seconds * 1e6
    print("\nWhere `Ingest.process` spends its time (cProfile, synchronous=FULL; profiling inflates "
          "Python-level calls):\n")
    print(table)
    write_json(args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
