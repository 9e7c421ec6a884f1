"""Delivery: quota use, 429s, coalescing and idle latency against the Notion
simulator with its rate limit.

    python bench/delivery.py                # Notion's 3 requests/s; ~80 s
    python bench/delivery.py --rate 10      # another quota (simulator and sidecar alike)
    python bench/delivery.py --smoke        # a few seconds, for CI

The simulator runs in this process (its request log carries arrival times on
the same monotonic clock as the emits) and allows `rate` requests a second
per token with a burst of 3; the sidecar is configured with the same rate
and its default burst of 1. Three phases, one sidecar:

1. idle: one page update at a time, each after the lane has been quiet for
   two token intervals; emit-to-delivery is emit() to the simulator's
   receiving the PATCH;
2. quota: a backlog of page creates with distinct keys (one call each, no
   coalescing possible); quota use is accepted calls per second over a
   window in the middle of the backlog, divided by `rate`;
3. hot keys: page updates at 1,000 events/s spread over 4 pages, then wait
   until the journal is empty; API calls per event shows coalescing, and
   each page must end with the last price emitted for it.

429s are counted over the whole run, from the simulator's log.

4. shared quota: `PER_SIDECAR` creates into each of 1 or 3 sidecar processes
   using one token against a fresh simulator (same rate, burst 3): one
   sidecar with all the creates, three sidecars each alone (no `[redis]`),
   three sidecars sharing the quota through a real redis-server (skipped,
   and said so, when redis-server is not installed). Quota use is accepted
   calls over `rate` × the busy period (first to last accepted call).

    python bench/delivery.py --shared-only  # only phase 4 (~2 minutes at 3 requests/s)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    PROPERTIES,
    RedisProcess,
    SidecarProcess,
    bench_args,
    bench_sidecar,
    histogram,
    tempdir,
    update_body,
    write_json,
)
from client import Client
from standins.notion import NotionSimulator, property_value

SIM_BURST = 3
HOT_PAGES = 4
HOT_RATE = 1_000
SMOKE_RATE = 20.0


@dataclass(frozen=True, kw_only=True)
class Plan:
    idle: int             # events timed one at a time
    warm: float           # seconds of the backlog before the quota window opens
    window: float         # seconds over which quota use is measured
    hot_seconds: float    # seconds of hot-key updates at HOT_RATE


    per_sidecar: int      # creates per sidecar in the shared-quota phase (x3 for the single sidecar)


FULL = Plan(idle=30, warm=2.0, window=30.0, hot_seconds=20.0, per_sidecar=40)
SMOKE = Plan(idle=3, warm=0.5, window=1.0, hot_seconds=1.0, per_sidecar=10)


def create_pages(sim: NotionSimulator, db: str, names: list[str]) -> list[str]:
    """Pages made directly on the simulator, before anything is measured."""
    import httpx

    ids = []
    with httpx.Client(base_url=sim.url + "/v1/", headers={"Authorization": f"Bearer {sim.token}",
                                                          "Notion-Version": "2022-06-28"}) as http:
        for name in names:
            while True:
                r = http.post("pages", json={"parent": {"database_id": db},
                                             "properties": {"Name": {"title": [{"text": {"content": name}}]}}})
                if r.status_code != 429:
                    r.raise_for_status()
                    ids.append(r.json()["id"])
                    break
                time.sleep(float(r.headers.get("Retry-After", "1")))
    return ids


def ms(ns: float) -> str:
    return f"{ns / 1e6:.1f}"


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def idle_latency(sim: NotionSimulator, client: Client, page: str, count: int, rate: float) -> Any:
    """emit() to the simulator's receipt of the PATCH, one event at a time."""
    h = histogram()
    for n in range(-1, count):  # the first one opens the sidecar's HTTP connection: not counted
        time.sleep(2.0 / rate)  # the lane is idle and its bucket has a token again
        before = len(sim.requests)
        t0 = time.monotonic()
        client.emit("notion.page.update", update_body(page, n))

        def answered(start: int = before) -> bool:
            return any(r.method == "PATCH" and r.status for r in sim.requests[start:])

        sim.wait_until(answered, timeout=30)
        arrival = next(r.time for r in sim.requests[before:] if r.method == "PATCH")
        if n >= 0:
            h.record_value(max(1, int((arrival - t0) * 1e9)))
    return h


def quota(sim: NotionSimulator, sidecar: SidecarProcess, client: Client, db: str, rate: float,
          warm: float, window: float) -> dict[str, Any]:
    """A backlog of creates that outlasts warm + window; accepted calls per second in the window."""
    creates = int(rate * (warm + window + 2)) + 1
    before = len(sim.requests)
    for n in range(creates):
        client.emit("notion.page.create", {"parent": {"database_id": db},
                                           "properties": {"Name": {"title": [{"text": {"content": f"q{n}"}}]}}},
                    key=f"quota-{n}")
    wait_for(lambda: len(sim.requests) > before, 30, "the first create")
    start = sim.requests[before].time + warm
    time.sleep(max(0.0, start + window - time.monotonic()) + 0.2)
    log = sim.requests[before:]
    inside = [r for r in log if start <= r.time < start + window]
    accepted = sum(1 for r in inside if 200 <= r.status < 300)
    wait_for(lambda: sidecar.journal_count() == 0, creates / rate + 30, "the rest of the creates")
    return {"calls_per_s": accepted / window, "utilisation": accepted / window / rate, "creates": creates,
            "in_window": len(inside), "rate_limited_in_window": sum(1 for r in inside if r.status == 429)}


def hot_keys(sim: NotionSimulator, sidecar: SidecarProcess, client: Client, pages: list[str],
             seconds: float) -> dict[str, Any]:
    """Updates at HOT_RATE spread over a few pages; API calls per event once all are delivered."""
    before = len(sim.requests)
    events = int(HOT_RATE * seconds)
    last: dict[str, float] = {}
    t0 = time.monotonic()
    for n in range(events):
        if n % 10 == 0:  # pace in steps of 10 events
            time.sleep(max(0.0, t0 + n / HOT_RATE - time.monotonic()))
        page = pages[n % len(pages)]
        body = update_body(page, n)
        client.emit("notion.page.update", body)
        last[page] = body["properties"]["Price"]["number"]
    emitted = time.monotonic() - t0
    wait_for(lambda: sidecar.journal_count() == 0, 120, "the hot-key events to be delivered")
    drained = time.monotonic() - t0
    calls = [r for r in sim.requests[before:] if r.method == "PATCH"]
    correct = all(property_value(sim.page(p), "Price") == price for p, price in last.items())
    return {"events": events, "calls": len(calls), "accepted": sum(1 for r in calls if 200 <= r.status < 300),
            "rate_limited": sum(1 for r in calls if r.status == 429), "emit_seconds": emitted,
            "drained_after": drained, "last_values_ok": correct}


def shared_quota(rate: float, sidecars: int, per_sidecar: int, redis_url: str | None) -> dict[str, Any]:
    """`per_sidecar` creates into each of `sidecars` processes with one token; the simulator's verdict."""
    sim = NotionSimulator(rate_per_second=rate, burst=SIM_BURST).start()
    try:
        db = sim.create_database(title="Shared", properties=PROPERTIES)
        with contextlib.ExitStack() as stack:
            procs = []
            for _ in range(sidecars):
                d = stack.enter_context(tempdir())
                procs.append(stack.enter_context(bench_sidecar(d, notion_url=sim.url + "/v1", token=sim.token,
                                                                rate=rate, burst=1.0, redis_url=redis_url)))
            t0 = time.monotonic()
            for i, sc in enumerate(procs):
                with Client(sc.endpoint) as client:
                    for n in range(per_sidecar):
                        client.emit("notion.page.create", {"parent": {"database_id": db}, "properties": {
                            "Name": {"title": [{"text": {"content": f"s{i}-{n}"}}]}}}, key=f"s{i}-{n}")
            total = sidecars * per_sidecar
            wait_for(lambda: len(sim.pages()) >= total, total / rate * 3 + 60, f"{total} pages")
            elapsed = time.monotonic() - t0
        stats = sim.stats()
        served = [r.time for r in sim.requests if 200 <= r.status < 300]
        pages = len(sim.pages())
    finally:
        sim.stop()
    busy = max(served) - min(served) if len(served) > 1 else 0.0
    return {"sidecars": sidecars, "shared": redis_url is not None, "creates": total, "pages": pages,
            "rate_limited": stats["rate_limited"], "peak_1s": stats["max_in_1s"],
            "use": len(served) / (rate * busy) if busy else 0.0, "seconds": elapsed}


def shared_rows(rate: float, per_sidecar: int) -> list[dict[str, Any]]:
    rows = [shared_quota(rate, 1, per_sidecar * 3, None), shared_quota(rate, 3, per_sidecar, None)]
    if RedisProcess.available():
        with RedisProcess() as redis:
            rows.append(shared_quota(rate, 3, per_sidecar, redis.url))
    return rows


def print_shared(rate: float, rows: list[dict[str, Any]]) -> None:
    print(f"\n### Several sidecars, one token\n\nNotion simulator: {rate:g} requests/s per token, burst {SIM_BURST}; "
          f"each sidecar: rate_per_second = {rate:g}, burst = 1. Quota use: accepted calls / ({rate:g}/s × the "
          "busy period).\n")
    print("| sidecars | quota | creates | pages | 429s | peak in 1 s | quota use while busy | took |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        how = "shared in Redis" if r["shared"] else ("its own" if r["sidecars"] == 1 else "each its own (no Redis)")
        print(f"| {r['sidecars']} | {how} | {r['creates']} | {r['pages']} | **{r['rate_limited']}** | {r['peak_1s']} "
              f"| **{100 * r['use']:.0f}%** | {r['seconds']:.1f} s |")
    if not any(r["shared"] for r in rows):
        print("\nNo shared row: redis-server is not installed (apt-get install redis-server).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, help="requests per second allowed (default 3, Notion's; smoke 20)")
    parser.add_argument("--shared-only", action="store_true", help="only the several-sidecars phase")
    bench_args(parser)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    rate = args.rate or (SMOKE_RATE if args.smoke else 3.0)
    if args.shared_only:
        print_shared(rate, shared_rows(rate, plan.per_sidecar))
        return 0
    sim = NotionSimulator(rate_per_second=rate, burst=SIM_BURST).start()
    try:
        db = sim.create_database(title="Bench", properties=PROPERTIES)
        pages = create_pages(sim, db, ["idle"] + [f"hot-{i}" for i in range(HOT_PAGES)])
        sim.reset_faults_and_log()  # count from here, with full buckets
        with tempdir() as d, bench_sidecar(d, notion_url=sim.url + "/v1", token=sim.token, rate=rate,
                                            burst=1.0) as sidecar:
            client = Client(sidecar.endpoint)
            idle = idle_latency(sim, client, pages[0], plan.idle, rate)
            q = quota(sim, sidecar, client, db, rate, plan.warm, plan.window)
            hot = hot_keys(sim, sidecar, client, pages[1:], plan.hot_seconds)
            client.close(5)
            metrics = sidecar.scrape()
        stats = sim.stats()
    finally:
        sim.stop()
    shared = shared_rows(rate, plan.per_sidecar)

    print(f"## Delivery\n\n{time.strftime('%Y-%m-%d %H:%M')}. Notion simulator: {rate:g} requests/s per token, "
          f"burst {SIM_BURST}; sidecar: rate_per_second = {rate:g}, burst = 1.\n")
    print("| measure | value |\n|---|---|")
    print(f"| emit-to-delivery, idle ({idle.get_total_count()} events): p50 / p90 / max "
          f"| {ms(idle.get_value_at_percentile(50))} / {ms(idle.get_value_at_percentile(90))} / "
          f"{ms(idle.get_max_value())} ms |")
    print(f"| quota use, backlog of {q['creates']} creates ({plan.window:g} s window) "
          f"| {q['calls_per_s']:.2f} calls/s of {rate:g} allowed = **{100 * q['utilisation']:.1f}%** |")
    hot_rate = hot["accepted"] / max(hot["drained_after"], 1e-9)
    print(f"| hot keys: {hot['events']:,} updates to {HOT_PAGES} pages at {HOT_RATE:,}/s | {hot['calls']} API calls "
          f"= {hot['calls'] / hot['events']:.4f} calls per event (**{hot['events'] / max(1, hot['calls']):,.0f}× "
          f"fewer**); last value on every page: {'yes' if hot['last_values_ok'] else 'NO'} |")
    print(f"| hot keys: quota use while draining | {hot_rate:.2f} calls/s over {hot['drained_after']:.1f} s "
          f"(emitting took {hot['emit_seconds']:.1f} s) |")
    print(f"| 429 responses, whole run | **{stats['rate_limited']}** of {stats['requests']} requests "
          f"(peak {stats['max_in_1s']} in any 1 s) |")
    print(f"| sidecar retries / dead letters | {metrics.get('sidecar_delivery_retries_total', 0):.0f} / "
          f"{metrics.get('sidecar_events_dead_lettered_total', 0):.0f} |")
    print_shared(rate, shared)
    write_json(args, {"rate": rate, "shared": shared, "idle_p50_ms": idle.get_value_at_percentile(50) / 1e6,
                      "idle_max_ms": idle.get_max_value() / 1e6, "utilisation": q["utilisation"],
                      "rate_limited": stats["rate_limited"], "hot_events": hot["events"],
                      "hot_calls": hot["calls"], "hot_last_values_ok": hot["last_values_ok"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
