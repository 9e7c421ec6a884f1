"""A frozen sidecar: SIGSTOP it for 60 s while the loop emits 10,000 events/s.

    python bench/frozen.py                  # 10 s before, 60 s stopped, then until caught up + 10 s
    python bench/frozen.py --smoke          # 2,000 events/s, 3 s stopped

The sidecar runs with its Notion lane paused (no token), so every event
stays in the journal and can be counted there: after SIGCONT it must hold
each event the loop emitted exactly once (rows, distinct sequence numbers,
no gaps). Emit cost is measured call by call and split by phase: before the
stop, while the sidecar is stopped, and after SIGCONT (catching up).

Runs twice: with the ring's default size, and with a ring large enough for
60 s at this rate. The default (128 MiB) holds capacity / record size
events: for this ~200-byte event (232 bytes a record) that is ~578,000, or
~58 s at 10,000 events/s; beyond it emit drops and counts `queue_full`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    SidecarProcess,
    bench_args,
    bench_sidecar,
    histogram,
    percentile_header,
    percentile_row,
    summary,
    tempdir,
    update_body,
    write_json,
)
from client import Client, wire
from client.ring import DEFAULT_RING_BYTES, record_bytes

PAGE = "0123456789abcdef0123456789abcdef"
PHASES = ("before", "stopped", "after")


@dataclass(frozen=True, kw_only=True)
class Plan:
    rate: int
    before: float
    stopped: float
    after: float  # seconds emitting after the sidecar has caught up


FULL = Plan(rate=10_000, before=10.0, stopped=60.0, after=10.0)
SMOKE = Plan(rate=2_000, before=1.0, stopped=3.0, after=1.0)


def journaled(sc: SidecarProcess, client_id: str) -> tuple[int, int, int, int]:
    """(rows, distinct seqs, last_seq, gaps) of one client in the journal."""
    conn = sqlite3.connect(f"file:{sc.journal_path}?mode=ro", uri=True, timeout=30)
    try:
        rows, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM events WHERE client_id=?",
                                      (client_id,)).fetchone()
        last = conn.execute("SELECT last_seq, gaps FROM clients WHERE client_id=?", (client_id,)).fetchone()
        return int(rows), int(distinct), *(tuple(last) if last else (0, 0))
    finally:
        conn.close()


def last_seq(sc: SidecarProcess, client_id: str) -> int:
    conn = sqlite3.connect(f"file:{sc.journal_path}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT last_seq FROM clients WHERE client_id=?", (client_id,)).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def run(plan: Plan, ring_bytes: int) -> dict[str, Any]:
    hists = {phase: histogram() for phase in PHASES}
    with tempdir() as d, bench_sidecar(d, token=None, synchronous="NORMAL") as sc:
        client = Client(sc.endpoint, ring_bytes=ring_bytes)
        n = 0
        t0 = time.monotonic()

        def emit_for(seconds: float, phase: str, until: Any = None) -> None:
            nonlocal n
            h = hists[phase]
            start = time.monotonic()
            while time.monotonic() - start < seconds and not (until and n % 1000 == 0 and until()):
                body = update_body(PAGE, n)
                t = time.perf_counter_ns()
                client.emit("notion.page.update", body)
                h.record_value(max(1, time.perf_counter_ns() - t))
                n += 1
                if n % 10 == 0:  # pace in steps of 10 events
                    time.sleep(max(0.0, t0 + n / plan.rate - time.monotonic()))

        emit_for(plan.before, "before")
        os.kill(sc.pid, signal.SIGSTOP)
        try:
            emit_for(plan.stopped, "stopped")
            backlog = client.stats()["sent"] - last_seq(sc, client.client_id)
        finally:
            os.kill(sc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        target = client.stats()["sent"]
        # Keep emitting while it catches up: the loop never waits for the sidecar.
        emit_for(600.0, "after", until=lambda: last_seq(sc, client.client_id) >= target)
        caught_up = time.monotonic() - resumed
        emit_for(plan.after, "after")
        client.close(5)
        stats = client.stats()
        deadline = time.monotonic() + 120
        while journaled(sc, client.client_id)[2] < stats["sent"] and time.monotonic() < deadline:
            time.sleep(0.2)
        rows, distinct, last, gaps = journaled(sc, client.client_id)
    return {"ring_bytes": ring_bytes, "sent": stats["sent"], "dropped": stats["dropped"], "rows": rows,
            "distinct": distinct, "last_seq": last, "gaps": gaps, "backlog_at_sigcont": backlog,
            "caught_up_s": caught_up, "emit_us": {p: summary(h) for p, h in hists.items()}, "hists": hists}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_args(parser)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    frame = wire.encode("x" * 16, 10**6, "notion.page.update", None, None, time.time_ns(), update_body(PAGE, 1))
    per_event = record_bytes(len(frame))
    needed = int(plan.rate * plan.stopped * per_event)
    big = 1 << max(needed, DEFAULT_RING_BYTES).bit_length()  # the next power of two above what 60 s needs
    load = os.getloadavg()[0]
    runs = {f"default ring ({DEFAULT_RING_BYTES >> 20} MiB)": run(plan, DEFAULT_RING_BYTES),
            f"ring of {big >> 20} MiB": run(plan, big)}
    print(f"## Frozen sidecar\n\n{time.strftime('%Y-%m-%d %H:%M')}. The loop emits {plan.rate:,} events/s "
          f"(a {len(frame)}-byte event, {per_event} bytes a ring record); the sidecar is SIGSTOPped for "
          f"{plan.stopped:g} s after {plan.before:g} s, then SIGCONTed while the loop goes on. {plan.stopped:g} s "
          f"need {needed / 2**20:.0f} MiB of ring; the default {DEFAULT_RING_BYTES >> 20} MiB holds "
          f"{DEFAULT_RING_BYTES // per_event:,} such events ({DEFAULT_RING_BYTES / per_event / plan.rate:.0f} s). "
          f"Load average at start {load:.2f} (2 cores, shared).\n")
    print("| ring | sent | dropped | journaled rows / distinct / gaps | backlog at SIGCONT | caught up after |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        dropped = ", ".join(f"{v:,} {k}" for k, v in r["dropped"].items()) or "0"
        print(f"| {name} | {r['sent']:,} | {dropped} | {r['rows']:,} / {r['distinct']:,} / {r['gaps']} "
              f"| {r['backlog_at_sigcont']:,} events | {r['caught_up_s']:.1f} s |")
    print("\nEmit cost by phase (µs):\n")
    print(percentile_header("ring, phase", ["calls"]))
    for name, r in runs.items():
        for phase, h in r["hists"].items():
            print(percentile_row(f"{name.split(' (')[0]}, {phase}", h, [f"{h.get_total_count():,}"]))
    for r in runs.values():
        del r["hists"]
    write_json(args, {"plan": vars(plan), "record_bytes": per_event, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
