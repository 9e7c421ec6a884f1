"""Footprint: the sidecar's CPU on the trading host, idle and at paced rates, split by thread.

    python bench/footprint.py            # idle, 100, 1,000, 10,000 events/s, 10 s each
    python bench/footprint.py --smoke    # 1 s each, for CI
    python bench/footprint.py --loads 10000 --seconds 30   # one load, longer (to profile it: py-spy)

A real sidecar delivers to the Notion stand-in at 3 requests/s (its own
process); one producer creates a page (`key=`) and then updates it (`ref=`)
at a paced rate, the demo's hot-key pattern. For each load the sidecar's CPU
(user + system, all threads, from /proc through psutil) is read before and
after the window, and split by thread (`comm`, which the ingest thread sets to
"ingest"; libzmq names its own). After the last load the journal must drain
and the page hold exactly the last price emitted: a footprint bought by
dropping or reordering updates would fail here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import NotionProcess, bench_args, bench_sidecar, tempdir, write_json
from client import Client
from sidecar.journal.store import read_ref

LOADS = (0, 100, 1_000, 10_000)   # events/s; 0 is idle with the producer's ring open
KEY = "fp-page"
TICK = 0.001                      # the producer's pacing step


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (name, user + system seconds) for every thread of a process."""
    out = {}
    for t in psutil.Process(pid).threads():
        try:
            with open(f"/proc/{pid}/task/{t.id}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
        out[t.id] = ("main" if t.id == pid else name, t.user_time + t.system_time)
    return out


def price(n: int) -> float:
    return round(1.0 + n * 1e-6, 6)


def paced(client: Client, rate: int, seconds: float, start: int) -> int:
    """Emit updates at `rate` a second for `seconds`; returns the next update's number."""
    n, t0 = start, time.perf_counter()
    end = t0 + seconds
    while (now := time.perf_counter()) < end:
        due = start + int((now - t0) * rate)
        while n < due:
            client.emit("notion.page.update", {"properties": {"Price": {"number": price(n)}}}, ref=KEY)
            n += 1
        time.sleep(TICK)
    return n


def measure(pid: int, client: Client, rate: int, seconds: float, start: int) -> tuple[dict[str, Any], int]:
    before, t0 = thread_times(pid), time.perf_counter()
    n = paced(client, rate, seconds, start) if rate else (time.sleep(seconds), start)[1]
    after, wall = thread_times(pid), time.perf_counter() - t0
    by_thread: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        by_thread[name] = by_thread.get(name, 0.0) + used
    total = sum(by_thread.values())
    return {"rate": rate, "events": n - start, "seconds": round(wall, 2), "cpu_pct": round(100 * total / wall, 2),
            "threads": {k: round(100 * v / wall, 2) for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])}}, n


def page(sim: NotionProcess, page_id: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{sim.url}/v1/pages/{page_id}", headers={
        "Authorization": f"Bearer {sim.token}", "Notion-Version": "2022-06-28"})
    for _ in range(50):  # the stand-in rate-limits reads too
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            if exc.code != 429:
                raise
            time.sleep(0.4)
    raise SystemExit("the Notion stand-in kept answering 429")


def drained(sc: Any, client: Client, timeout: float) -> None:
    """Every event emitted journaled (a flow's last batch waits up to `commit_window_max`), then delivered."""
    deadline = time.monotonic() + timeout
    sent = client.stats()["sent"]
    while (sc.query("SELECT last_seq FROM clients WHERE client_id=?", client.client_id) or [(0,)])[0][0] < sent \
            or sc.journal_count() > 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"the journal still holds {sc.journal_count()} events after {timeout:.0f} s")
        time.sleep(0.1)


def run(seconds: float, loads: tuple[int, ...] = LOADS) -> dict[str, Any]:
    rows = []
    with tempdir() as d, NotionProcess(rate=3, burst=1) as sim, \
            bench_sidecar(d, notion_url=sim.api_url, token=sim.token, rate=3) as sc, Client(sc.endpoint) as client:
        client.emit("notion.page.create", {"parent": {"database_id": sim.database_id},
                                           "properties": {"Name": {"title": [{"text": {"content": "EURUSD"}}]}}},
                    key=KEY)
        drained(sc, client, 30)
        time.sleep(1.0)  # past the ingest's and the lanes' after-work lingering: idle is measured idle
        n = 0
        print(f"sidecar pid {sc.pid}", file=sys.stderr, flush=True)  # for py-spy
        for rate in loads:
            row, n = measure(sc.pid, client, rate, seconds, n)
            rows.append(row)
            drained(sc, client, 60)
        page_id = read_ref(d / "journal" / "journal.db", "notion", KEY)
        assert page_id, "the page was never created"
        got = page(sim, page_id)["properties"]["Price"]["number"]
        exact = n == 0 or got == price(n - 1)
        dropped = client.stats()["dropped"]
    if not exact:
        raise SystemExit(f"the page's price is {got}, the last one emitted {price(n - 1)}")
    return {"loads": rows, "events": n, "final_state_exact": exact, "dropped": dropped}


def table(result: dict[str, Any]) -> str:
    lines = ["## Footprint", "",
             "A real sidecar delivering to the Notion stand-in at 3 requests/s; one producer updating one page "
             "(`ref=`) at a paced rate; sidecar CPU (user + system, all threads) over the window, by thread.", "",
             "| load | events | sidecar CPU, % of one core | by thread (%) |", "|---|---|---|---|"]
    for r in result["loads"]:
        load = "idle, a producer's ring open" if r["rate"] == 0 else f"{r['rate']:,} events/s"
        split = ", ".join(f"{k} {v}" for k, v in r["threads"].items() if v >= 0.05) or "-"
        lines.append(f"| {load} | {r['events']:,} | {r['cpu_pct']:.1f}% | {split} |")
    lines.append(f"\nfinal state exact: {result['final_state_exact']} ({result['events']:,} updates; "
                 f"dropped: {result['dropped']}); load average {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_args(parser)
    parser.add_argument("--loads", type=int, nargs="+", default=list(LOADS), help="events/s; 0 is idle")
    parser.add_argument("--seconds", type=float, help="each load's window (default 10; 1 with --smoke)")
    args = parser.parse_args()
    result = run(args.seconds or (1.0 if args.smoke else 10.0), tuple(args.loads))
    print(table(result))
    write_json(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
