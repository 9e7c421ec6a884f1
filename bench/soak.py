"""Soak: hours of steady load with faults on; does anything grow?

    python bench/soak.py --minutes 60       # the real run (results in bench/RESULTS.md)
    python bench/soak.py --minutes 0.33 --interval 2 --refs-keep-minutes 0.1   # 20 s; what --smoke runs

A loop emits 5,000 events/s of the demo's mix (each tick a hot-key Notion
price and a hot-key Naver price/stock; every 100th tick a Notion trade page,
a line in that minute's trade-log page and a webhook alert; every second a
small S3 report) into a real sidecar delivering to all four APIs' stand-ins:
the Notion, Naver and webhook simulators and moto's S3 behind the fault proxy,
in this process. Every sampling interval each API gets one fault, in turn:
a 500 after applying, a 429, a slow drip, a 200 that is not JSON, a reset
mid-body, a huge body (S3: 503 SlowDown, drip, reset, huge). No redirects:
those dead-letter by design (a configuration error, not a transient fault).

Every interval (10 s) it samples the sidecar process: RSS, open fds,
threads, journal and WAL size, queue depth (all lanes) and emit→delivery
p99 (the sidecar's histogram, all lanes, interpolated within buckets as
Prometheus' histogram_quantile does). At the end it stops emitting, waits
for the journal to drain and checks the final state of every API against
what was emitted. Writes soak.png and --json; prints a markdown section.

The sidecar keeps refs (what each keyed event created or that it was
delivered) at least `--refs-keep-minutes` after their last use and at most
1.5 times that, 10 minutes by default, where production keeps them a week
(`[journal] refs_keep_hours`): the run must outlast 1.5 windows to show
where the journal levels off. Its size then is the backlog plus up to 1.5
windows of refs, about 100 bytes each.

Verdicts (the issue's): RSS growth from minute 5 to the end under 5%; fds
and threads flat; journal size bounded (journal.db grows by under 10%, or
under 1 MB, from a minute after 1.5 refs windows to the end, and the backlog
drains); p99 of every later 5-minute window within 2× the first 5 minutes'.
Runs shorter than 20 minutes scale "minute 5" and the window to a quarter
of the run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import SidecarProcess, bench_args, bench_sidecar, out_dir, tempdir, write_json
from client import Client
from sidecar.demo import PRODUCTS, SYMBOLS
from standins.base import Fault
from standins.moto_s3 import moto_s3
from standins.naver import NaverSimulator
from standins.notion import NotionSimulator, property_value
from standins.s3proxy import S3FaultProxy
from standins.webhook import WebhookReceiver

RATE = 5_000
EVENTS_PER_TICK = 2 + 3 / 100  # two hot keys every tick, three events every 100th
TIMEOUT = 2.0  # every lane's call timeout: a drip costs a lane this long
DRAIN_SECONDS = 180.0
HTTP_FAULTS = (  # one per interval per API, in turn
    Fault(when="after", status=500), Fault(status=429, headers={"Retry-After": "1"}),
    Fault(when="after", drip=0.2), Fault(when="after", status=200, raw="<html>not json</html>"),
    Fault(when="after", cut=True), Fault(when="after", huge=10 * 2**20),
)
S3_FAULTS = (Fault(when="after", drip=0.2), Fault(when="after", cut=True), Fault(when="after", huge=10 * 2**20))


@dataclass
class Sample:
    t: float              # seconds since the loop started
    rss_mb: float
    fds: int
    threads: int
    journal_mb: float     # journal.db
    wal_mb: float         # journal.db-wal
    depth: int            # events waiting, all lanes
    p99_s: float          # emit→delivery over the interval, all lanes
    delivered: int        # events delivered in the interval
    emitted: int          # events emitted so far


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """histogram_quantile over cumulative (le, count) pairs: linear within the bucket.

        quantile([(1.0, 0), (2.0, 10), (float("inf"), 10)], 0.5)  # -> 1.5
    """
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower


def latency_buckets(text: str) -> dict[float, float]:
    """sidecar_emit_to_delivery_seconds_bucket summed over lanes: {le: cumulative count}."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("sidecar_emit_to_delivery_seconds_bucket{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if le == "+Inf" else float(le)
            out[key] = out.get(key, 0.0) + float(value)
    return out


def p99_between(before: dict[float, float], after: dict[float, float]) -> float:
    return quantile(sorted((le, after[le] - before.get(le, 0.0)) for le in after), 0.99)


class Apis:
    """The four stand-ins in this process, and the faults they take in turn."""

    def __init__(self, stack: ExitStack) -> None:
        self.notion = stack.enter_context(NotionSimulator(rate_per_second=200, burst=50))
        self.db = self.notion.create_database(title="Soak", properties={
            "Name": "title", "Idempotency Key": "rich_text", "Price": "number", "Side": "select"})
        self.naver = stack.enter_context(NaverSimulator(rate_per_second=50, burst=10))
        for no in PRODUCTS:
            self.naver.add_product(no, sale_price=1, stock=0)
        self.hooks = stack.enter_context(WebhookReceiver(rate_per_second=200, burst=50))
        self.s3 = stack.enter_context(moto_s3(bucket="soak-reports"))
        self.proxy = stack.enter_context(S3FaultProxy(self.s3.endpoint))
        self.turn = 0

    def sections(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        lane = {"timeout": TIMEOUT}
        sections: dict[str, dict[str, Any]] = {
            "notion": {"base_url": self.notion.url + "/v1", "rate_per_second": 100.0, "burst": 10.0, **lane},
            "naver": {"base_url": self.naver.url + "/external", "rate_per_second": 20.0, "burst": 5.0, **lane},
            "s3": {"endpoint_url": self.proxy.url, "region": self.s3.region, **lane},
            "webhooks.alerts": {"url": self.hooks.url + "/alerts", "rate_per_second": 100.0, "burst": 10.0, **lane},
            "retry": {"base": 0.1, "cap": 5.0},
            "breaker": {"failures": 20, "cooldown": 2.0},
        }
        env = {"NOTION_TOKEN": self.notion.token, "NAVER_CLIENT_ID": self.naver.client_id,
               "NAVER_CLIENT_SECRET": self.naver.client_secret, "AWS_ACCESS_KEY_ID": self.s3.access_key,
               "AWS_SECRET_ACCESS_KEY": self.s3.secret_key, "AWS_CONFIG_FILE": "/nonexistent",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
        return sections, env

    def next_faults(self) -> None:
        http = HTTP_FAULTS[self.turn % len(HTTP_FAULTS)]
        for sim, path in ((self.notion, "/v1/"), (self.naver, "/external/v1/products"), (self.hooks, "/alerts")):
            sim.inject(Fault(**{**asdict(http), "path_prefix": path}))
        self.proxy.inject(Fault(**{**asdict(S3_FAULTS[self.turn % len(S3_FAULTS)]), "method": "PUT"}))
        self.turn += 1


class Loop:
    """The demo's mix at `RATE` events/s; remembers what the final state must be."""

    def __init__(self, client: Client, apis: Apis) -> None:
        self.client, self.apis = client, apis
        self.tick = 0
        self.emitted = 0
        self.prices: dict[str, float] = {}
        self.products: dict[int, tuple[int, int]] = {}
        self.trades = 0
        self.alerts = 0
        self.reports: dict[str, bytes] = {}
        self.log_minute = -1
        for symbol in SYMBOLS:
            self._emit("notion.page.create", {"parent": {"database_id": apis.db}, "properties": {
                "Name": {"title": [{"text": {"content": f"position {symbol}"}}]}}}, key=f"position-{symbol}")

    def _emit(self, kind: str, payload: dict[str, Any], **kw: Any) -> None:
        if self.client.emit(kind, payload, **kw):
            self.emitted += 1

    def step(self, elapsed: float) -> None:
        """One tick of the trading loop."""
        n = self.tick
        symbol = SYMBOLS[n % len(SYMBOLS)]
        price = round(1.08 + (n % 997) * 1e-5, 5)
        self._emit("notion.page.update", {"properties": {"Price": {"number": price}}}, ref=f"position-{symbol}")
        self.prices[symbol] = price
        product = PRODUCTS[n % len(PRODUCTS)]
        self._emit("naver.product.update", {"originProductNo": product, "salePrice": 10_000 + n % 50_000,
                                            "stockQuantity": n % 500})
        self.products[product] = (10_000 + n % 50_000, n % 500)
        if n % 100 == 0:
            minute = int(elapsed // 60)
            log = f"log-{minute}"  # a page a minute: a check before resending reads one page's children
            if minute != self.log_minute:
                self.log_minute = minute
                self._emit("notion.page.create", {"parent": {"database_id": self.apis.db}, "properties": {
                    "Name": {"title": [{"text": {"content": log}}]}}}, key=log)
            self._emit("notion.page.create", {"parent": {"database_id": self.apis.db}, "properties": {
                "Name": {"title": [{"text": {"content": f"trade {n}"}}]}, "Price": {"number": price}}},
                key=f"trade-{n}")
            self._emit("notion.blocks.append", {"children": [{"object": "block", "type": "paragraph", "paragraph": {
                "rich_text": [{"type": "text", "text": {"content": f"tick {n} {symbol} {price}"}}]}}]}, ref=log)
            self._emit("webhook.post", {"text": f"tick {n}", "n": n}, ref="alerts", key=f"alert-{n}")
            self.trades += 1
            self.alerts += 1
        if int(elapsed) >= len(self.reports):
            key = f"reports/{len(self.reports)}.csv"
            body = f"tick,price\n{n},{price}\n".encode() * 20
            self._emit("s3.put", {"bucket": self.apis.s3.bucket, "key": key, "content_type": "text/csv"}, blob=body)
            self.reports[key] = body
        self.tick += 1

    def final_state_ok(self) -> dict[str, bool]:
        """Every API's end state against what was emitted."""
        notion, naver, hooks = self.apis.notion, self.apis.naver, self.apis.hooks
        pages = notion.pages()
        names = [property_value(p, "Name") for p in pages]
        positions = {n.split()[1]: p for n, p in zip(names, pages, strict=True) if n.startswith("position ")}
        alerts = [d.body["n"] for d in hooks.deliveries]
        return {
            "notion positions": all(property_value(positions[s], "Price") == v for s, v in self.prices.items()),
            "notion trade pages, one each": sum(n.startswith("trade ") for n in names) == self.trades,
            "naver products": all((naver.product(no)["salePrice"], naver.product(no)["stockQuantity"]) == v
                                  for no, v in self.products.items()),
            # A reset after the receiver recorded a post resends it (with the same Idempotency-Key).
            "webhook alerts, all": len(set(alerts)) == self.alerts,
            "s3 reports": all(self.apis.s3.read(k)[0] == b for k, b in self.reports.items()),
        }


def sample(sidecar: SidecarProcess, t: float, last: dict[float, float], emitted: int,
           delivered_before: float) -> tuple[Sample, dict[float, float], float]:
    proc = psutil.Process(sidecar.pid)
    text = sidecar.get("/metrics")[1].decode()
    buckets = latency_buckets(text)
    totals = sidecar.scrape()
    delivered = totals.get("sidecar_events_delivered_total", 0.0)
    journal = sidecar.journal_path

    def mb(path: Path) -> float:
        return path.stat().st_size / 2**20 if path.exists() else 0.0

    s = Sample(t=round(t, 1), rss_mb=round(proc.memory_info().rss / 2**20, 1), fds=proc.num_fds(),
               threads=proc.num_threads(), journal_mb=round(mb(journal), 2),
               wal_mb=round(mb(journal.with_name("journal.db-wal")), 2),
               depth=int(totals.get("sidecar_queue_depth", 0)), p99_s=round(p99_between(last, buckets), 4),
               delivered=int(delivered - delivered_before), emitted=emitted)
    return s, buckets, delivered


def run(minutes: float, interval: float,
        refs_keep_minutes: float) -> tuple[list[Sample], list[dict[float, float]], dict[str, Any]]:
    """Emit for `minutes`, sampling every `interval` s; samples, the latency
    buckets at each sample (cumulative), and the run's totals."""
    duration = minutes * 60
    with ExitStack() as stack:
        apis = Apis(stack)
        sections, env = apis.sections()
        sections["journal"] = {"refs_keep_hours": refs_keep_minutes / 60}
        d = stack.enter_context(tempdir())
        sidecar = stack.enter_context(bench_sidecar(d, sections=sections, env=env, synchronous="NORMAL"))
        client = Client(sidecar.endpoint)
        loop = Loop(client, apis)
        samples: list[Sample] = []
        buckets: dict[float, float] = {}
        snapshots: list[dict[float, float]] = [buckets]
        delivered = 0.0
        t0 = time.monotonic()
        next_sample = interval
        ticks_per_s = RATE / EVENTS_PER_TICK
        while (elapsed := time.monotonic() - t0) < duration:
            if elapsed >= next_sample:
                s, buckets, delivered = sample(sidecar, elapsed, buckets, loop.emitted, delivered)
                samples.append(s)
                snapshots.append(buckets)
                print(f"{s.t:7.0f} s  rss {s.rss_mb:6.1f} MB  fds {s.fds:3d}  threads {s.threads:2d}  journal "
                      f"{s.journal_mb:6.2f}+{s.wal_mb:5.2f} MB  depth {s.depth:6d}  p99 {s.p99_s:6.3f} s",
                      file=sys.stderr, flush=True)
                apis.next_faults()
                next_sample += interval
            loop.step(elapsed)
            if loop.tick % 10 == 0:  # pace in steps of 10 ticks
                time.sleep(max(0.0, t0 + loop.tick / ticks_per_s - time.monotonic()))
        emitted_for = time.monotonic() - t0
        refs_left = sidecar.journal_count("refs")
        expired = sum(float(line.rpartition(" ")[2]) for line in sidecar.get("/metrics")[1].decode().splitlines()
                      if line.startswith('sidecar_journal_expired_total{table="refs"}'))
        client.close(5)
        drain_started = time.monotonic()
        while sidecar.journal_count() and time.monotonic() - drain_started < DRAIN_SECONDS:
            time.sleep(0.5)
        time.sleep(1.0)  # answers settle after the last journal row goes
        final = loop.final_state_ok()
        info = {
            "events": loop.emitted, "rate": loop.emitted / emitted_for, "dropped": client.stats()["dropped"],
            "drained_s": time.monotonic() - drain_started, "pending_after_drain": sidecar.journal_count(),
            "dead_letters": sidecar.journal_count("dead_letters"), "final_state": final,
            "api_calls": apis.notion.stats()["requests"] + apis.naver.stats()["requests"]
            + apis.hooks.stats()["requests"] + apis.proxy.count("PUT"), "faults_injected": apis.turn * 4,
            "load_average": os.getloadavg(), "refs_expired": int(expired), "refs_left": refs_left,
        }
    return samples, snapshots, info


def verdicts(samples: list[Sample], snapshots: list[dict[float, float]], minutes: float,
             interval: float, refs_keep_minutes: float) -> dict[str, Any]:
    """The issue's four checks over the samples."""
    warm = 300.0 if minutes >= 20 else minutes * 60 / 4
    steady = [s for s in samples if s.t >= warm] or samples[-1:]
    # RSS swings by tens of MB as fault answers (10 MiB bodies) are read and freed: compare the
    # median of the minute after warm-up with the median of the last minute, not two single samples.
    per_minute = max(1, round(60 / interval))
    rss_start = statistics.median(s.rss_mb for s in steady[:per_minute])
    rss_end = statistics.median(s.rss_mb for s in steady[-per_minute:])
    rss_growth = (rss_end - rss_start) / rss_start
    # The journal levels off once refs expire (1.5 windows after they are written): from a minute
    # after that, medians as for RSS. A run too short to get there has no verdict.
    settled = [s for s in samples if s.t >= max(warm, 1.5 * refs_keep_minutes * 60 + 60)]
    journal_judged = len(settled) >= 2 * per_minute
    settled = settled if journal_judged else samples[-1:]
    journal_start = statistics.median(s.journal_mb for s in settled[:per_minute])
    journal_end = statistics.median(s.journal_mb for s in settled[-per_minute:])
    # p99 of each whole window (bucket counts at its ends), not the worst of its intervals.
    step = max(1, round(warm / interval))
    ends = list(range(0, len(snapshots), step))
    windows = [p99_between(snapshots[a], snapshots[b]) for a, b in itertools.pairwise(ends)]
    if not windows:
        windows = [p99_between(snapshots[0], snapshots[-1])]
    base = windows[0]
    later = windows[1:] or windows
    return {
        "warm_s": warm,
        "rss_growth": rss_growth, "rss_mb": (rss_start, rss_end),
        "rss_mb_range": (min(s.rss_mb for s in steady), max(s.rss_mb for s in steady)),
        "fds_range": (min(s.fds for s in steady), max(s.fds for s in steady)),
        "threads_range": (min(s.threads for s in steady), max(s.threads for s in steady)),
        "journal_mb_max": max(s.journal_mb + s.wal_mb for s in samples),
        "journal_settled_s": settled[0].t, "journal_mb": (journal_start, journal_end),
        "journal_judged": journal_judged,
        "journal_bounded": journal_end - journal_start < max(1.0, 0.1 * journal_start),
        "depth_max": max(s.depth for s in samples),
        "p99_first_s": base, "p99_worst_window_s": max(later), "p99_ratio": max(later) / base if base else 0.0,
        "p99_windows_s": windows,
    }


def plot(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display in CI
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in samples]
    panels: tuple[tuple[str, list[tuple[str, list[float]]]], ...] = (("RSS (MB)", [("rss", [s.rss_mb for s in samples])]),
              ("count", [("open fds", [s.fds for s in samples]), ("threads", [s.threads for s in samples])]),
              ("MB", [("journal", [s.journal_mb for s in samples]), ("WAL", [s.wal_mb for s in samples])]),
              ("events waiting", [("queue depth", [s.depth for s in samples])]),
              ("seconds", [("emit→delivery p99", [s.p99_s for s in samples])]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)), sharex=True)
    for ax, (label, lines) in zip(axes, panels, strict=True):
        for name, ys in lines:
            ax.plot(minutes, ys, label=name, linewidth=1.2)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the loop emits (default 60)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--refs-keep-minutes", type=float, default=10.0,
                        help="[journal] refs_keep_hours for the run, in minutes (default 10)")
    bench_args(parser)
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.interval, args.refs_keep_minutes = 20 / 60, 2.0, 0.1
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    samples, snapshots, info = run(args.minutes, args.interval, args.refs_keep_minutes)
    v = verdicts(samples, snapshots, args.minutes, args.interval, args.refs_keep_minutes)
    out = out_dir(args)
    plot(samples, out / "soak.png", f"soak: {info['events']:,} events at {RATE:,}/s, {args.minutes:g} min")

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    warm = f"{v['warm_s'] / 60:g} min" if v["warm_s"] >= 60 else f"{v['warm_s']:.0f} s"
    print(f"## Soak\n\n{started}, `--minutes {args.minutes:g}`: {info['events']:,} events at "
          f"{info['rate']:,.0f}/s (the demo's mix) into a sidecar delivering to all four stand-ins, "
          f"one fault per API every {args.interval:g} s ({info['faults_injected']} in all); sampled every "
          f"{args.interval:g} s. Load average before / after: {load_before[0]:.2f} / "
          f"{info['load_average'][0]:.2f} (2 cores, shared).\n")
    print("| measure | value | goal met |\n|---|---|---|")
    print(f"| RSS growth from {warm} to the end (medians of the minute after {warm} and of the last minute) "
          f"| {100 * v['rss_growth']:+.1f}% ({v['rss_mb'][0]:.1f} → {v['rss_mb'][1]:.1f} MB; samples "
          f"{v['rss_mb_range'][0]:.0f}–{v['rss_mb_range'][1]:.0f} MB) | {yes(v['rss_growth'] < 0.05)} (< 5%) |")
    print(f"| open fds / threads after {warm} (min–max) | {v['fds_range'][0]}–{v['fds_range'][1]} / "
          f"{v['threads_range'][0]}–{v['threads_range'][1]} | "
          f"{yes(v['fds_range'][1] - v['fds_range'][0] <= 5 and v['threads_range'][1] - v['threads_range'][0] <= 3)}"
          f" (flat) |")
    print(f"| journal.db from {v['journal_settled_s'] / 60:.1f} min (a minute after refs written at the start "
          f"expire: 1.5 × the refs window of {args.refs_keep_minutes:g} min) to the end (minute medians) | "
          f"{v['journal_mb'][0]:.2f} → "
          f"{v['journal_mb'][1]:.2f} MB; {info['refs_expired']:,} refs expired, {info['refs_left']:,} kept at the "
          f"end | {yes(v['journal_bounded']) if v['journal_judged'] else 'n/a (run too short)'} (< 10% or < 1 MB) |")
    print(f"| journal + WAL, largest / queue depth, largest | {v['journal_mb_max']:.1f} MB / {v['depth_max']:,} "
          f"events | {yes(info['pending_after_drain'] == 0)} (drained to 0 in {info['drained_s']:.0f} s) |")
    print(f"| emit→delivery p99, first {warm} / worst later {warm} window | {v['p99_first_s']:.3f} s / "
          f"{v['p99_worst_window_s']:.3f} s ({v['p99_ratio']:.2f}×) | {yes(v['p99_ratio'] <= 2.0)} (≤ 2×) |")
    exact = all(info["final_state"].values())
    print(f"| final state of every API = what was emitted | "
          f"{', '.join(f'{k}: {yes(ok)}' for k, ok in info['final_state'].items())} | {yes(exact)} |")
    print(f"| dropped by the client / dead letters / API calls | {sum(info['dropped'].values())} / "
          f"{info['dead_letters']} / {info['api_calls']:,} | |")
    write_json(args, {"minutes": args.minutes, "info": info, "verdicts": v,
                      "samples": [asdict(s) for s in samples]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
