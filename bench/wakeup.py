"""Wake-up: how soon an idle sidecar reads a ring, and what the doorbell costs the loop.

    python bench/wakeup.py            # 200 lone events, then 1k/s and 10k/s for 5 s each
    python bench/wakeup.py --smoke

Lone events: one event every 0.3-0.5 s, so the sidecar has gone from polling
(every millisecond for 0.25 s after the last event) to sleeping on the
doorbell each time. The delay is the sidecar's own record of it: each
journal row holds the emit time and the time ingest took the event in
(`received_ns - emitted_ns`, both from the one clock of this host).

Paced rates: events at 1,000 and 10,000 a second; the producer counts the
doorbells it rang (each is one `sendto`, the only syscall emit can make) and
the delay is measured the same way.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_sidecar, parse_args, tempdir, write_json
from client import Client


def delays_us(journal: Path, client_id: str) -> list[float]:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT received_ns - emitted_ns FROM events WHERE client_id=? ORDER BY seq",
                            (client_id,)).fetchall()
    finally:
        conn.close()
    return sorted(r[0] / 1000 for r in rows)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def wait_journaled(journal: Path, client_id: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(delays_us(journal, client_id)) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(delays_us(journal, client_id))} of {n} events journaled")
        time.sleep(0.05)


def run(smoke: bool) -> dict[str, Any]:
    lone = 10 if smoke else 200
    seconds = 0.5 if smoke else 5.0
    out: dict[str, Any] = {}
    with tempdir() as d, bench_sidecar(d, synchronous="NORMAL") as sc:
        journal = d / "journal" / "journal.db"
        body = {"parent": {"database_id": "db"}, "properties": {}}
        with Client(sc.endpoint, strict=True) as c:
            ring = c._transport
            for n in range(lone):
                time.sleep(random.uniform(0.3, 0.5))
                c.emit("notion.page.create", body, key=f"lone-{n}")
            wait_journaled(journal, c.client_id, lone)
            lone_delays = delays_us(journal, c.client_id)
            out["lone"] = {"events": lone, "doorbells": ring.doorbells, "p50_us": pct(lone_delays, 50),
                           "p99_us": pct(lone_delays, 99), "max_us": lone_delays[-1]}
        for rate in (1_000, 10_000):
            time.sleep(0.5)  # idle first: the sidecar is asleep when the run starts
            with Client(sc.endpoint, strict=True) as c:
                ring = c._transport
                count = int(rate * seconds)
                start = time.perf_counter()
                for n in range(count):
                    due = start + n / rate
                    while time.perf_counter() < due:
                        pass
                    c.emit("notion.page.create", body, key=f"r{rate}-{n}")
                doorbells = ring.doorbells
                wait_journaled(journal, c.client_id, count)
                paced = delays_us(journal, c.client_id)
            out[f"{rate}/s"] = {"events": count, "doorbells": doorbells, "p50_us": pct(paced, 50),
                                "p99_us": pct(paced, 99), "max_us": paced[-1]}
    return out


def main() -> int:
    args = parse_args(__doc__)
    result = run(args.smoke)
    print("## Wake-up\n")
    print("From emit to ingest taking the event (the journal row's `received_ns - emitted_ns`), and the "
          "doorbells (one `sendto` each) the producer rang. Lone events come 0.3-0.5 s apart, after the "
          "sidecar has gone to sleep on its doorbell.\n")
    print("| events | count | doorbells | emit→ingest p50 µs | p99 µs | max µs |\n|---|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['events']:,} | {r['doorbells']:,} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | "
              f"{r['max_us']:,.0f} |")
    write_json(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
