"""Crash safety: what survives a sidecar killed with SIGKILL, and a sidecar
that is down while a short-lived producer emits and exits.

    python bench/crash.py              # ~2 minutes: 20,000 events/s through two kills; 50,000 events, 30 s down
    python bench/crash.py --smoke      # a few seconds, for CI

Two scenarios, each run with the default transport for an ``ipc://``
endpoint (the shared-memory ring) and with ``Client(..., transport="zmq")``
(the ZeroMQ PUSH socket) as the comparison:

- kill: one producer process emits `notion.page.create` events, each with a
  unique key, paced at --rate events/s. The sidecar is killed with SIGKILL
  twice while it does, each time started again --down seconds later. Once
  the producer has closed and the sidecar has journaled everything it is
  going to (the count stops changing), the journal is counted.
- down: the sidecar is killed, then a producer process emits --events events
  as fast as emit takes them, calls close() (timed) and exits; then a second
  producer does the same over ZeroMQ. The sidecar starts again --outage
  seconds after it went down, and the journal is counted.

Counting: the sidecar runs without a Notion token, so the lane stays paused
and every event it journals stays in the `events` table (or `dead_letters`).
Per producer (client id), each sequence number 1..N (N = the events emit
accepted, which is also the last number used) is present once, missing
(lost) or present more than once (duplicated). "gaps" is the sidecar's own
sequence-gap counter for that client, from the journal's `clients` table
(what `sidecar_client_sequence_gaps_total` counts, kept across restarts).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import SidecarProcess, bench_args, bench_sidecar, tempdir, write_json

TRANSPORTS = ("ring", "zmq")
# Full mode, then --smoke.
RATE = 20_000
SECONDS = (12.0, 2.0)          # the kill scenario's producer runs this long
KILLS_AT = ((3.0, 7.0), (0.4, 1.1))  # seconds after the producer starts
DOWN = (1.0, 0.3)              # each kill: restarted this long after
EVENTS = (50_000, 5_000)       # the down scenario's producer
OUTAGE = (30.0, 1.5)           # the down scenario: the sidecar is down this long
LINGER = (5.0, 0.5)            # close()'s linger (the Client's default in full mode)
SETTLE = (3.0, 1.0)            # the journal count unchanged this long: nothing more is coming
DRAIN_TIMEOUT = 120.0
DATABASE = {"database_id": "0b6f1f5e-3a9d-4a42-9f0e-6c1d2b3a4f50"}


def _producer(endpoint: str, transport: str, count: int, rate: float, linger: float, tag: str,
              go: Any, out: Any) -> None:
    """One producer process: `count` creates at `rate`/s (0: as fast as emit
    takes them), then close(), timed. Reports its counters on `out`."""
    from client import Client

    client = Client(endpoint, transport=transport, linger=linger)
    emit = client.emit
    bodies = [{"parent": DATABASE, "properties": {"Name": {"title": [{"text": {"content": f"trade {n}"}}]}}}
              for n in range(100)]
    go.wait()
    clock, sleep = time.perf_counter, time.sleep
    t0 = clock()
    n = 0
    while n < count:
        due = count if rate <= 0 else min(count, int((clock() - t0) * rate) + 1)
        while n < due:
            emit("notion.page.create", bodies[n % 100], key=f"{tag}-{n}")  # a refusal is counted by the client
            n += 1
        if rate > 0:
            sleep(0.0005)
    emitted = clock() - t0
    before = client.stats()
    t = clock()
    client.close()
    close_s = clock() - t
    after = client.stats()
    out.put({"client_id": before["client_id"], "sent": before["sent"], "attempted": count,
             "dropped": before["dropped"], "dropped_after_close": after["dropped"], "close_s": close_s,
             "emit_s": emitted})


def start_producer(sidecar: SidecarProcess, transport: str, count: int, rate: float, linger: float,
                   tag: str) -> tuple[Any, Any, Any]:
    mp = multiprocessing.get_context("fork")
    go, out = mp.Event(), mp.Queue()
    proc = mp.Process(target=_producer, args=(sidecar.endpoint, transport, count, rate, linger, tag, go, out))
    proc.start()
    return proc, go, out


def kill(sidecar: SidecarProcess, logs: list[Path]) -> None:
    """SIGKILL, then keep its log (the next start truncates it)."""
    assert sidecar.proc is not None
    sidecar.proc.kill()
    sidecar.proc.wait(10)
    kept = sidecar.workdir / f"sidecar.{len(logs)}.log"
    shutil.copy(sidecar.log_path, kept)
    logs.append(kept)


def count(sidecar: SidecarProcess, client_id: str, n: int) -> dict[str, Any]:
    """Sequence numbers 1..n of one client in the journal: once, missing, more than once."""
    conn = sqlite3.connect(f"file:{sidecar.workdir}/journal/journal.db?mode=ro", uri=True, timeout=10)
    try:
        seen: dict[int, int] = {}
        for table in ("events", "dead_letters"):
            for seq, times in conn.execute(f"SELECT seq, COUNT(*) FROM {table} WHERE client_id = ? GROUP BY seq",
                                           (client_id,)):
                seen[seq] = seen.get(seq, 0) + times
        row = conn.execute("SELECT last_seq, gaps, closed FROM clients WHERE client_id = ?", (client_id,)).fetchone()
    finally:
        conn.close()
    present = sum(1 for s in range(1, n + 1) if s in seen)
    return {"journaled": sum(seen.values()), "once": sum(1 for s in range(1, n + 1) if seen.get(s) == 1),
            "lost": n - present, "duplicated": sum(t - 1 for t in seen.values() if t > 1),
            "out_of_range": sum(t for s, t in seen.items() if not 1 <= s <= n),
            "gaps": None if row is None else row[1], "last_seq": None if row is None else row[0],
            "closed": None if row is None else bool(row[2])}


def settle(sidecar: SidecarProcess, client_ids: list[str], expected: int, quiet: float) -> float:
    """Wait until the journal holds `expected` rows of these clients, or its
    count has not changed for `quiet` seconds; returns the seconds until its
    last change."""
    t0 = time.monotonic()
    last, since = -1, t0
    marks = ",".join("?" * len(client_ids))
    while time.monotonic() - t0 < DRAIN_TIMEOUT:
        conn = sqlite3.connect(f"file:{sidecar.workdir}/journal/journal.db?mode=ro", uri=True, timeout=10)
        try:
            rows = sum(conn.execute(f"SELECT COUNT(*) FROM {t} WHERE client_id IN ({marks})", client_ids).fetchone()[0]
                       for t in ("events", "dead_letters"))
        finally:
            conn.close()
        now = time.monotonic()
        if rows >= expected:
            return now - t0
        if rows != last:
            last, since = rows, now
        elif now - since >= quiet:
            return since - t0
        time.sleep(0.1)
    return time.monotonic() - t0


def ring_problems(logs: list[Path]) -> list[str]:
    """Lines of the sidecar's logs about rings set aside or events lost."""
    return [line.strip() for log in logs if log.exists() for line in log.read_text().splitlines()
            if "quarantined" in line or "lost before" in line or "never arrived" in line
            or "Traceback" in line]


def kill_scenario(transport: str, smoke: bool, rate: int, seconds: float, kills_at: list[float],
                  producers: int) -> dict[str, Any]:
    """`producers` processes share `rate`; the sidecar is killed at each of `kills_at`."""
    m = int(smoke)
    share = [int(rate * seconds) // producers] * producers
    logs: list[Path] = []
    with tempdir() as d, bench_sidecar(d) as sidecar:
        started = [start_producer(sidecar, transport, n, rate / producers, LINGER[m], f"kill-{transport}-{i}")
                   for i, n in enumerate(share)]
        time.sleep(0.3)  # the producers have made their rings or sockets
        t0 = time.monotonic()
        for _, go, _ in started:
            go.set()
        downs = []
        for at in kills_at:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            t = time.monotonic()
            kill(sidecar, logs)
            time.sleep(DOWN[m])
            sidecar.__enter__()  # the same config, journal and ring directory: a restart
            downs.append(time.monotonic() - t)
        reports = [out.get(timeout=seconds + 120) for _, _, out in started]
        for proc, _, _ in started:
            proc.join(30)
        drain = settle(sidecar, [r["client_id"] for r in reports], sum(r["sent"] for r in reports), SETTLE[m])
        per_client = [{**r, **count(sidecar, r["client_id"], r["sent"])} for r in reports]
        shutil.copy(sidecar.log_path, d / "sidecar.final.log")
        logs.append(d / "sidecar.final.log")
        problems = ring_problems(logs)
    total: dict[str, Any] = {k: sum(c[k] for c in per_client)
                             for k in ("sent", "journaled", "once", "lost", "duplicated", "out_of_range")}
    gaps = [c["gaps"] for c in per_client]
    dropped: dict[str, int] = {}
    for c in per_client:
        for reason, k in c["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + k
    return {"transport": transport, "rate": rate, "producers": producers, "kills": len(downs), "down_s": downs,
            "drain_s": drain, **total, "gaps": None if None in gaps else sum(gaps), "dropped": dropped,
            "clients": per_client, "log_problems": problems[:20]}


def down_scenario(smoke: bool) -> dict[str, dict[str, Any]]:
    m = int(smoke)
    events, outage = EVENTS[m], OUTAGE[m]
    logs: list[Path] = []
    results = {}
    with tempdir() as d, bench_sidecar(d) as sidecar:
        kill(sidecar, logs)
        t_down = time.monotonic()
        for transport in TRANSPORTS:
            proc, go, out = start_producer(sidecar, transport, events, 0, LINGER[m], f"down-{transport}")
            go.set()
            results[transport] = out.get(timeout=120)
            proc.join(30)
            results[transport]["exit_code"] = proc.exitcode
        time.sleep(max(0.0, t_down + outage - time.monotonic()))
        sidecar.__enter__()
        outage_s = time.monotonic() - t_down
        ids = [r["client_id"] for r in results.values()]
        drain = settle(sidecar, ids, sum(r["sent"] for r in results.values()), SETTLE[m])
        for transport, r in results.items():
            r.update(count(sidecar, r["client_id"], r["sent"]), transport=transport, outage_s=outage_s,
                     drain_s=drain, linger=LINGER[m])
        shutil.copy(sidecar.log_path, d / "sidecar.final.log")
        logs.append(d / "sidecar.final.log")
        problems = ring_problems(logs)
    for r in results.values():
        r["log_problems"] = problems[:20]
    return results


def drops(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=RATE, help="events per second in the kill scenario")
    parser.add_argument("--scenarios", nargs="+", choices=["kill", "down"], default=["kill", "down"])
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS),
                        help="the kill scenario's transports")
    parser.add_argument("--seconds", type=float, help=f"the kill scenario's length (default {SECONDS[0]:g} s)")
    parser.add_argument("--kills", type=int, help="kills spread evenly over the run (default: 2, at "
                                                  f"{' and '.join(f'{t:g}' for t in KILLS_AT[0])} s)")
    parser.add_argument("--producers", type=int, default=1, help="producer processes sharing --rate")
    bench_args(parser)
    args = parser.parse_args()
    m = int(args.smoke)
    seconds = args.seconds or SECONDS[m]
    kills_at = list(KILLS_AT[m]) if args.kills is None else [seconds * (i + 1) / (args.kills + 1)
                                                             for i in range(args.kills)]
    kills = [kill_scenario(t, args.smoke, args.rate, seconds, kills_at, args.producers)
             for t in args.transports] if "kill" in args.scenarios else []
    down = down_scenario(args.smoke) if "down" in args.scenarios else {}

    print(f"## Crash safety\n\n{time.strftime('%Y-%m-%d %H:%M')}. The sidecar runs with its Notion lane paused, "
          "so every event it journals stays in the journal; counted per producer by sequence number. "
          "gaps: the sidecar's own sequence-gap counter for that client (journal `clients` table).\n")
    doc: dict[str, Any] = {"kill": {}, "down": {}}
    if kills:
        who = "One producer process" if args.producers == 1 else f"{args.producers} producer processes"
        print(f"### SIGKILL while emitting\n\n{who} paced at {args.rate:,} events/s in all for "
              f"{seconds:g} s; the sidecar killed with SIGKILL at {', '.join(f'{t:.1f}' for t in kills_at)} s "
              f"and started again {DOWN[m]:g} s later each time (down: from the kill until it answered again).\n")
        print("| transport | events emitted | kills | down each time (s) | journaled once | lost | duplicated "
              "| gaps (sidecar) | emit drops | settled after (s) |")
        print("|---" * 10 + "|")
        for r in kills:
            gaps = "client unknown" if r["gaps"] is None else f"{r['gaps']:,}"
            print(f"| {r['transport']} | {r['sent']:,} | {r['kills']} | "
                  f"{', '.join(f'{s:.1f}' for s in r['down_s'])} | {r['once']:,} | {r['lost']:,} | "
                  f"{r['duplicated']:,} | {gaps} | {drops(r['dropped'])} | {r['drain_s']:.1f} |")
            doc["kill"][r["transport"]] = r
    if down:
        first = next(iter(down.values()))
        print(f"\n### Producer emits and exits while the sidecar is down\n\nThe sidecar killed; a producer "
              f"process emits {EVENTS[m]:,} events as fast as emit takes them, calls close() (linger "
              f"{LINGER[m]:g} s) and exits; then the same over ZeroMQ. The sidecar starts again "
              f"{first['outage_s']:.1f} s after it went down.\n")
        print("| transport | events emitted | close() took | journaled once | lost | duplicated | gaps (sidecar) "
              "| client drops after close | producer exit code |")
        print("|---" * 9 + "|")
        for transport, r in down.items():
            gaps = "client unknown" if r["gaps"] is None else f"{r['gaps']:,}"
            took = f"{r['close_s'] * 1e3:.2f} ms" if r["close_s"] < 1 else f"{r['close_s']:.2f} s"
            print(f"| {transport} | {r['sent']:,} | {took} | {r['once']:,} | {r['lost']:,} | {r['duplicated']:,} "
                  f"| {gaps} | {drops(r['dropped_after_close'])} | {r['exit_code']} |")
            doc["down"][transport] = r
    problems = sorted({p for r in [*kills, *down.values()] for p in r["log_problems"]})
    if problems:
        print("\nSidecar log lines about lost events or rings set aside:\n")
        for p in problems[:20]:
            print(f"    {p[:300]}")
    write_json(args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
