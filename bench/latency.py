"""Emit latency: what one event costs the trading loop, for `emit` and the
patterns it replaces, at fixed rates, while a real sidecar delivers.

    python bench/latency.py                       # 1k/s for 60 s, 10k/s for 20 s, 100k/s for 10 s, then 200,000 back to back
    python bench/latency.py --rates 1000 --seconds 10 --calls 50000
    python bench/latency.py --placement process   # the whole loop process on CPU 0 (taskset -c 0)
    python bench/latency.py --smoke               # a few seconds, for CI

Methods, each sending the same ~150-byte page update, serialised by itself:

- bare send: `sock.send(orjson.dumps(body), zmq.NOBLOCK)` on a PUSH socket,
  drained by another process (the floor);
- emit: `Client.emit` with the default transport for the sidecar's
  ``ipc://`` endpoint, the shared-memory ring (`client/ring.py`), to the real
  sidecar, which journals the events and delivers them (coalesced) to the
  Notion simulator;
- emit (pure): the same ring emit on the pure-Python path (`Client.emit`
  called as the class's method, not the compiled one `client._fastemit`
  binds to the instance), so both paths are measured side by side; "emit"
  is the compiled path when the extension is built (the report says which);
- emit (zmq): the same with `Client(endpoint, transport="zmq")`, the
  ZeroMQ PUSH socket the ring replaced, for comparison;
- unix datagram: a non-blocking `send` on a Unix datagram socket (DogStatsD);
  a full receiver queue means a drop;
- redis LPUSH: `r.lpush(queue, json)` (a Celery/RQ-style enqueue, whose real
  enqueue does more) against a real redis-server, when one is installed;
- httpx blocking: a keep-alive `PATCH /v1/pages/{id}` to the simulator,
  waiting for the answer (what the project replaces);
- queue + thread: `queue.Queue.put`, with a thread of this process making the
  HTTP calls (the usual first fix).

The loop keeps a fixed schedule: it sleeps until about 120 µs before each
tick, spins for the rest, then calls each method once, taking every order of
the methods in turn, so that each goes first, and before each other, equally
often (the first send after a pause pays for waking the other core).

Three kinds of chunk alternate, 0.5 s each, in the cycle interleaved, queue,
interleaved, round trips, so all see the same stretch of machine noise:

- interleaved: bare send, emit, emit (zmq) and unix datagram, call by call;
- queue: queue + thread alone, its worker thread running (parked in the
  other chunks: it competes for the GIL with everything in the process);
- round trips: redis LPUSH and httpx blocking, each called every k-th tick
  only, k chosen so the loop keeps its schedule on average; their calls/s
  column shows the rate they actually ran at.

After the paced rates, the interleaved methods run once more back to back,
unpaced, --calls times each (200,000 by default), in the same rotation of
orders: the cost when the loop emits as fast as it can. Then emit and the
bare send run back to back alone (with the empty call), the comparison the
goal names: with the other hand-offs in the rotation, their receivers and
libzmq's IO thread keep the other core busy and every row's tail grows.

Each call is timed with perf_counter_ns into a preallocated array, recorded
into HdrHistograms after the run (recording costs about 1 µs a value). The
"(empty call)" row is the timing and call overhead present in every row.
By default only the loop's thread runs on CPU 0: libzmq's IO threads, the
queue worker, the sidecar, the simulator, the receivers and redis-server run
on the other CPUs (with the IO thread on the loop's core, a paced send costs
about twice as much).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import gc
import itertools
import math
import multiprocessing
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    LOOP_CPU,
    OTHER_CPUS,
    PERCENTILES,
    NotionProcess,
    RedisProcess,
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

FULL_SECONDS = {1_000: 60.0, 10_000: 20.0, 100_000: 10.0}
SMOKE_SECONDS = 0.4
BURST_CALLS = 200_000
SMOKE_CALLS = 5_000
CHUNK_SECONDS = 0.5
SMOKE_CHUNK = 0.1
SLEEP_UNTIL_NS = 120_000  # sleep while more than this remains before a tick, then spin
LOOP_BUDGET = 0.6  # fraction of each tick the slow methods may take together
REDIS_KEY = "bench:queue"
RING_BYTES = 128 << 20  # the Clients' rings (200,000 back-to-back calls outrun the default 8 MiB), prefaulted as
                        # the README advises for a long-running loop (else each 4 KiB of the first lap faults, ~2 µs)
BODIES = 1000  # distinct events, reused round-robin so no allocation grows with the run


def _drain_zmq(endpoint: str, cpus: list[int] | None, ready: Any) -> None:
    """Receiver of the bare sends, in its own process."""
    if cpus is not None:
        set_affinity(os.getpid(), cpus)
    pull = zmq.Context().socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)  # like the sidecar: never push back on the sender
    pull.bind(endpoint)
    ready.set()
    while True:
        pull.recv()


def _drain_dgram(path: str, cpus: list[int] | None, ready: Any) -> None:
    """Receiver of the datagrams (the DogStatsD agent's part), in its own
    process so that a burst of bare sends never holds it up."""
    if cpus is not None:
        set_affinity(os.getpid(), cpus)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    ready.set()
    while True:
        sock.recv(65536)


class QueueWorker:
    """The usual first fix: `queue.put` in the loop, HTTP calls on a thread.

    `resume()` and `pause()` switch the thread on and off between chunks;
    paused, it waits on an Event and never takes the GIL.
    """

    def __init__(self, http: Any, page_id: str) -> None:
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.http = http
        self.path = f"pages/{page_id}"
        self.active = threading.Event()
        self.parked = threading.Event()
        self.stopping = False
        self.calls = self.errors = 0
        self.thread = threading.Thread(target=self._run, name="queue-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            if not self.active.is_set():
                self.parked.set()
                self.active.wait(0.1)
                continue
            try:
                body = self.q.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                body_json = orjson.dumps({"properties": body["properties"]})
                status = self.http.patch(self.path, content=body_json).status_code
            except Exception:  # noqa: BLE001 - a failed call is counted, the thread goes on
                status = 0
            self.calls += 1
            self.errors += not 200 <= status < 300

    def resume(self) -> None:
        self.parked.clear()
        self.active.set()

    def pause(self) -> None:
        self.parked.clear()
        self.active.clear()
        self.parked.wait(10)

    def backlog(self) -> int:
        return self.q.qsize()

    def clear(self) -> None:
        with self.q.mutex:
            self.q.queue.clear()

    def stop(self) -> None:
        self.stopping = True
        self.active.set()
        self.thread.join(5)


class Method:
    """One way of handing off an event: `call(n)` sends event n; failures counted."""

    def __init__(self, name: str, call: Callable[[int], Any]) -> None:
        self.name = name
        self.call = call
        self.samples = array.array("q")
        self.dropped = 0
        self.seconds = 0.0  # time of the chunks it ran in, for calls/s

    def reset(self) -> None:
        self.samples = array.array("q")
        self.dropped = 0
        self.seconds = 0.0


PAIR = {"(empty call)", "bare send", "emit", "emit (pure)"}


def build_methods(stack: dict[str, Any], page_id: str) -> dict[str, list[Method]]:
    """The methods by chunk kind: interleaved hand-offs, queue + thread, round trips."""
    bodies = [update_body(page_id, n) for n in range(BODIES)]
    dumps, NOBLOCK = orjson.dumps, zmq.NOBLOCK

    def empty(n: int) -> None:
        bodies[n % BODIES]

    send = stack["bare"].send

    def bare(n: int) -> None:
        send(dumps(bodies[n % BODIES]), NOBLOCK)

    emit = stack["client"].emit

    def emit_one(n: int) -> None:
        if not emit("notion.page.update", bodies[n % BODIES]):
            emit_method.dropped += 1

    # The pure-Python path: the class's method, not the compiled one bound to the instance.
    pemit = Client.emit.__get__(stack["pclient"])

    def pemit_one(n: int) -> None:
        if not pemit("notion.page.update", bodies[n % BODIES]):
            pemit_method.dropped += 1

    dsend = stack["dgram"].send

    def dgram(n: int) -> None:
        try:
            dsend(dumps(bodies[n % BODIES]))
        except BlockingIOError:  # receiver's queue full: DogStatsD drops and counts
            dgram_method.dropped += 1

    zemit = stack["zclient"].emit

    def zemit_one(n: int) -> None:
        if not zemit("notion.page.update", bodies[n % BODIES]):
            zemit_method.dropped += 1

    emit_method, dgram_method = Method("emit", emit_one), Method("unix datagram", dgram)
    zemit_method, pemit_method = Method("emit (zmq)", zemit_one), Method("emit (pure)", pemit_one)
    handoffs = [Method("(empty call)", empty), Method("bare send", bare), emit_method, pemit_method, zemit_method,
                dgram_method]

    put = stack["worker"].q.put

    def queue_put(n: int) -> None:
        put(bodies[n % BODIES])

    round_trips = []
    if stack.get("redis") is not None:
        lpush = stack["redis"].lpush

        def redis_push(n: int) -> None:
            lpush(REDIS_KEY, dumps(bodies[n % BODIES]))

        round_trips.append(Method("redis LPUSH", redis_push))

    patch = stack["http"].patch
    path = f"pages/{page_id}"

    def http_call(n: int) -> None:
        status = patch(path, content=dumps({"properties": bodies[n % BODIES]["properties"]})).status_code
        if not 200 <= status < 300:
            http_method.dropped += 1

    http_method = Method("httpx blocking", http_call)
    round_trips.append(http_method)
    return {"interleaved": handoffs, "queue": [Method("queue + thread", queue_put)], "round trips": round_trips}


def calibrate(methods: list[Method], calls: int = 300) -> dict[str, float]:
    """Median cost of each method in ns, back to back (warms connections too)."""
    clock = time.perf_counter_ns
    medians = {}
    for m in methods:
        times = []
        for n in range(calls):
            t0 = clock()
            m.call(n)
            times.append(clock() - t0)
        times.sort()
        medians[m.name] = float(times[len(times) // 2])
        m.dropped = 0
    return medians


def strides(methods: list[Method], medians: dict[str, float], rate: int) -> list[int]:
    """Call each round trip every k-th tick, so that together they stay within
    LOOP_BUDGET of the loop's time and the schedule holds on average."""
    interval = 1e9 / rate
    share = LOOP_BUDGET / len(methods)
    return [max(1, math.ceil(medians[m.name] / interval / share)) for m in methods]


def run_chunk(methods: list[Method], every: list[int], rate: int, first: int, ticks: int) -> tuple[int, float]:
    """One paced stretch of `ticks` ticks; returns how many ticks started
    late, and the seconds it took (longer than planned if the loop fell behind)."""
    clock, sleep = time.perf_counter_ns, time.sleep
    interval = 1e9 / rate
    calls = [m.call for m in methods]
    # Allocated up front and copied out after the chunk, so no array grows mid-run.
    bufs = [array.array("q", bytes(8 * ticks)) for _ in methods]
    counts = [0] * len(methods)
    # Every order of the methods in turn: each goes first, and before each
    # other, equally often (whoever sends first after a pause pays for waking
    # the other core, so a fixed rotation would favour the second).
    orders = list(itertools.permutations(range(len(methods))))
    late = 0
    start = clock() + 50_000
    for i in range(ticks):
        target = start + int(i * interval)
        now = clock()
        if target - now > SLEEP_UNTIL_NS:
            sleep((target - now - SLEEP_UNTIL_NS) / 1e9)
        while clock() < target:
            pass
        if clock() - target > interval:
            late += 1
        n = first + i
        for k in orders[n % len(orders)]:
            if n % every[k]:
                continue
            t0 = clock()
            calls[k](n)
            t1 = clock()
            bufs[k][counts[k]] = t1 - t0
            counts[k] += 1
    took = max(clock() - start, ticks * interval) / 1e9
    for m, buf, count in zip(methods, bufs, counts, strict=True):
        m.samples.extend(buf[:count])
    return late, took


def run_burst(methods: list[Method], calls: int) -> dict[str, Any]:
    """`calls` calls of each method back to back, unpaced, call by call in
    every order in turn (as run_chunk does)."""
    clock = time.perf_counter_ns
    fns = [m.call for m in methods]
    bufs = [array.array("q", bytes(8 * calls)) for _ in methods]
    orders = list(itertools.permutations(range(len(methods))))
    for m in methods:
        m.reset()
    gc.collect()
    gc.disable()
    start = clock()
    try:
        for n in range(calls):
            for k in orders[n % len(orders)]:
                t0 = clock()
                fns[k](n)
                t1 = clock()
                bufs[k][n] = t1 - t0
    finally:
        gc.enable()
    took = (clock() - start) / 1e9
    rows = {}
    for m, buf in zip(methods, bufs, strict=True):
        h = histogram()
        for v in buf:
            h.record_value(max(1, v))
        rows[m.name] = {"hist": h, "dropped": m.dropped, "per_second": calls / took}
    return {"rows": rows, "seconds": took}


def run_rate(groups: dict[str, list[Method]], worker: QueueWorker, medians: dict[str, float], rate: int,
             seconds: float, chunk: float, cleanup: Callable[[], None]) -> dict[str, Any]:
    """Chunks in the cycle interleaved, queue, interleaved, round trips: the
    main comparison gets half the time, and every kind sees the same stretch
    of machine noise."""
    ticks = max(1, int(rate * chunk))
    every = {kind: strides(ms, medians, rate) if kind == "round trips" else [1] * len(ms)
             for kind, ms in groups.items()}
    cycle = ["interleaved", "queue", "interleaved", "round trips"]
    late = dict.fromkeys(groups, 0)
    for ms in groups.values():
        for m in ms:
            m.reset()
    first = 0
    gc.collect()
    gc.disable()  # a trading loop keeps the collector out of its hot path too
    try:
        for c in range(max(len(cycle), round(seconds / chunk))):
            kind = cycle[c % len(cycle)]
            if kind == "queue":
                worker.resume()
            missed, took = run_chunk(groups[kind], every[kind], rate, first, ticks)
            if kind == "queue":
                worker.pause()
            late[kind] += missed
            first += ticks
            for m in groups[kind]:
                m.seconds += took
            cleanup()  # between chunks, outside the timed calls
    finally:
        gc.enable()
    backlog = worker.backlog()
    worker.clear()
    rows = {}
    for ms in groups.values():
        for m in ms:
            h = histogram()
            for v in m.samples:
                h.record_value(max(1, v))
            rows[m.name] = {"hist": h, "dropped": m.dropped, "per_second": len(m.samples) / max(m.seconds, 1e-9)}
    return {"rows": rows, "late": late, "worker_backlog": backlog}


def render(rate: int | None, result: dict[str, Any]) -> str:
    """One table; `rate` None for the back-to-back run."""
    if rate is None:
        calls = next(iter(result["rows"].values()))["hist"].get_total_count()
        which = ("emit and bare send alone" if set(result["rows"]) <= PAIR
                 else "the interleaved methods")
        lines = [f"### Back to back, {calls:,} calls each, {which}", "",
                 (f"µs per call, unpaced, {which} call by call; {result['seconds']:.1f} s in all "
                  "(calls/s: rounds of every method per second)."), ""]
    else:
        late = result["late"]
        lines = [f"### {rate:,} events/s", "",
                 (f"µs per call. Ticks that started more than one interval late: {late['interleaved']:,} "
                  f"interleaved, {late['queue']:,} queue + thread, {late['round trips']:,} round trips. "
                  f"The queue's worker thread ended {result['worker_backlog']:,} calls behind."), ""]
    lines.append(percentile_header("method", ["calls", "calls/s", "dropped"]))
    rows = result["rows"]
    for name, row in rows.items():
        h = row["hist"]
        lines.append(percentile_row(name, h, [f"{h.get_total_count():,}", f"{row['per_second']:,.0f}",
                                              f"{row['dropped']:,}"]))
    bare = rows["bare send"]["hist"]
    for name in ("emit", "emit (pure)", "emit (zmq)"):
        if name not in rows:
            continue
        emit = rows[name]["hist"]
        ratios = [emit.get_value_at_percentile(p) / max(1, bare.get_value_at_percentile(p)) for p in PERCENTILES]
        ratios.append(emit.get_max_value() / max(1, bare.get_max_value()))
        lines.append(f"| **{name} / bare send** | " + " | ".join(f"{r:.2f}×" for r in ratios) + " | | | |")
    return "\n".join(lines)


def place_threads(placement: str) -> None:
    """Before this process starts any thread: where its threads will run.

    thread: helper threads (libzmq's IO threads, the queue worker) start on
    the other CPUs and only the loop's own thread moves to CPU 0 afterwards;
    process: everything on CPU 0, as `taskset -c 0 python loop.py` does."""
    if placement == "thread":
        os.sched_setaffinity(0, set(OTHER_CPUS))
    elif placement == "process":
        os.sched_setaffinity(0, {LOOP_CPU})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=sorted(FULL_SECONDS), help="events per second")
    parser.add_argument("--seconds", type=float, help="seconds per rate (default: 60, 20, 10)")
    parser.add_argument("--rings-on-disk", action="store_true",
                        help="the ingest socket and the rings in the (disk-backed) work directory instead of "
                             "tmpfs, as the default endpoint outside systemd puts them where /tmp is a disk")
    parser.add_argument("--calls", type=int, default=BURST_CALLS,
                        help=f"back-to-back calls of each method after the paced rates (default {BURST_CALLS:,}; "
                             "0: none)")
    parser.add_argument("--placement", choices=["thread", "process", "none"], default="thread",
                        help="thread: loop thread on CPU 0, the rest elsewhere (default); process: the whole "
                             "loop process on CPU 0; none: no affinity anywhere")
    bench_args(parser)
    args = parser.parse_args()
    out = out_dir(args)
    chunk = SMOKE_CHUNK if args.smoke else CHUNK_SECONDS
    other = None if args.placement == "none" else OTHER_CPUS
    import httpx

    try:
        import redis
    except ImportError:  # redis-py is a [bench] extra; without it, no Redis row
        redis = None  # type: ignore[assignment]
    with contextlib.ExitStack() as resources:
        d = resources.enter_context(tempdir())
        sim = resources.enter_context(NotionProcess(rate=0, cpus=other))
        sidecar = resources.enter_context(
            bench_sidecar(d, notion_url=sim.api_url, token=sim.token, rate=3.0, cpus=other,
                           socket_dir=d if args.rings_on_disk else None))
        # Fork the receivers before this process owns any ZeroMQ context or thread.
        mp = multiprocessing.get_context("fork")
        sink, dgram_path = f"ipc://{d}/bare.sock", f"{d}/dgram.sock"
        for target, where in ((_drain_zmq, sink), (_drain_dgram, dgram_path)):
            ready = mp.Event()
            drain = mp.Process(target=target, args=(where, other, ready), daemon=True)
            drain.start()
            resources.callback(drain.terminate)
            if not ready.wait(10):
                raise RuntimeError("a receiver process did not start")
        rconn = None
        if redis is not None and RedisProcess.available():
            rconn = redis.Redis(port=resources.enter_context(RedisProcess(cpus=other)).port)
        place_threads(args.placement)
        ctx = zmq.Context()
        resources.callback(ctx.term)
        bare = ctx.socket(zmq.PUSH)
        resources.callback(bare.close)
        bare.setsockopt(zmq.SNDHWM, 1_000_000)
        bare.setsockopt(zmq.LINGER, 0)
        bare.connect(sink)
        dgram = resources.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        dgram.connect(dgram_path)
        dgram.setblocking(False)
        headers = {"Authorization": f"Bearer {sim.token}", "Notion-Version": "2022-06-28",
                   "Content-Type": "application/json"}
        http = resources.enter_context(httpx.Client(base_url=sim.api_url + "/", headers=headers, timeout=10))
        worker = QueueWorker(httpx.Client(base_url=sim.api_url + "/", headers=headers, timeout=10), sim.page_id)
        resources.callback(worker.stop)
        client = Client(sidecar.endpoint, ring_bytes=RING_BYTES, prefault=True)  # an ipc:// endpoint: the ring
        resources.callback(client.close, 1.0)
        zclient = Client(sidecar.endpoint, transport="zmq")
        resources.callback(zclient.close, 1.0)
        pclient = Client(sidecar.endpoint, ring_bytes=RING_BYTES, prefault=True)  # its emit called on the pure-Python path
        resources.callback(pclient.close, 1.0)
        stack = {"bare": bare, "client": client, "pclient": pclient, "zclient": zclient, "dgram": dgram, "http": http,
                 "worker": worker, "redis": rconn}
        groups = build_methods(stack, sim.page_id)
        # libzmq starts its IO thread with the first socket; every helper thread exists now.
        bare.send(b"{}")
        client.emit("notion.page.update", update_body(sim.page_id, 0))
        zclient.emit("notion.page.update", update_body(sim.page_id, 0))
        if args.placement == "thread":
            os.sched_setaffinity(0, {LOOP_CPU})
        medians = calibrate([m for ms in groups.values() for m in ms])
        worker.clear()

        def cleanup() -> None:
            if rconn is not None:
                rconn.delete(REDIS_KEY)  # a worker would pop these; keep redis small

        def drained() -> float:
            """Wait (untimed) until the sidecar has journaled every event both
            clients handed over, so no run starts against a backlog (a full
            ring refuses emits); returns the seconds waited."""
            t0 = time.monotonic()
            sent = client.stats()["sent"] + zclient.stats()["sent"]
            while time.monotonic() - t0 < 120:
                if sidecar.scrape().get("sidecar_events_journaled_total", 0) >= sent:
                    break
                time.sleep(0.05)
            return time.monotonic() - t0

        results: dict[int, dict[str, Any]] = {}
        waits = []
        for rate in args.rates:
            seconds = SMOKE_SECONDS if args.smoke else args.seconds or FULL_SECONDS.get(rate, 10.0)
            waits.append(drained())
            results[rate] = run_rate(groups, worker, medians, rate, seconds, chunk, cleanup)
        calls = SMOKE_CALLS if args.smoke else args.calls
        waits.append(drained())
        burst = run_burst(groups["interleaved"], calls) if calls else None
        # The goal's own comparison: emit and the bare send alone, so neither
        # pays for the other hand-offs' threads and receivers.
        pair = run_burst([m for m in groups["interleaved"] if m.name in PAIR], calls) if calls else None
        emit_drops = {"emit": client.stats()["dropped"], "emit (pure)": pclient.stats()["dropped"],
                      "emit (zmq)": zclient.stats()["dropped"]}
        transport = client.transport_name
        journaled = sidecar.scrape().get("sidecar_events_journaled_total", 0)

    rings = Path(sidecar.endpoint.removeprefix("ipc://")).parent
    where = (f"the rings in {rings} (" + ("disk-backed work directory" if args.rings_on_disk
                                                      else "tmpfs, as under systemd") + ")")
    placement = {"thread": f"the loop's thread on CPU {LOOP_CPU}, its helper threads on {OTHER_CPUS}",
                 "process": f"the whole loop process on CPU {LOOP_CPU}", "none": "no CPU affinity"}[args.placement]
    print(f"## Emit latency\n\n{time.strftime('%Y-%m-%d %H:%M')}. Placement: {placement}; "
          f"sidecar, simulator, receivers and redis-server on {'any CPU' if other is None else other}. "
          "Medians back to back, µs: " + ", ".join(f"{k} {v / 1000:.2f}" for k, v in medians.items()) + ".")
    print(f"emit runs the {PATH}; emit (pure) the pure-Python path in the same run.")
    print("queue + thread's put is cheap; its cost to the loop is the worker thread taking the GIL between "
          "calls: see the late ticks below and the jitter benchmark.")
    qlen = Path("/proc/sys/net/unix/max_dgram_qlen")
    if qlen.exists():
        print(f"unix datagram drops: the receiver's queue holds net.unix.max_dgram_qlen = "
              f"{qlen.read_text().strip()} datagrams here.")
    if rconn is None:
        print("No redis LPUSH row: redis-server or redis-py is not installed (apt-get install redis-server; "
              "pip install redis).")
    print(f"emit goes through the {transport} (the default for an ipc:// endpoint; {where}); emit (zmq) "
          "through ZeroMQ. Before each rate and the back-to-back run the sidecar caught up with every event "
          f"handed over (waits, s: {', '.join(f'{w:.1f}' for w in waits)}). Drops: "
          + "; ".join(f"{k} {v or 'none'}" for k, v in emit_drops.items())
          + f". The sidecar journaled {journaled:,.0f} events while delivering them, coalesced, to the "
          "Notion simulator.\n")
    doc: dict[str, Any] = {"placement": args.placement, "transport": transport, "rings_on_disk": args.rings_on_disk,
                           "rates": {}, "burst": {}}
    for rate, result in results.items():
        print(render(rate, result))
        print()
        rows = result["rows"]
        doc["rates"][str(rate)] = {name: {**summary(row["hist"]), "per_second": row["per_second"],
                                          "dropped": row["dropped"]} for name, row in rows.items()}
    for name, run in (("burst", burst), ("pair", pair)):
        if run is not None:
            print(render(None, run))
            print()
            doc[name] = {method: {**summary(row["hist"]), "per_second": row["per_second"], "dropped": row["dropped"]}
                         for method, row in run["rows"].items()}
    plot = out / "latency.png"
    panels = {f"{rate:,} events/s": {k: row["hist"] for k, row in r["rows"].items() if k != "(empty call)"}
              for rate, r in results.items()}
    if burst is not None:
        panels["back to back"] = {k: row["hist"] for k, row in burst["rows"].items() if k != "(empty call)"}
    plot_percentiles(panels, plot, "Cost of handing off one event (µs)")
    print(f"Plot: {plot}")
    write_json(args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
