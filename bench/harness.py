"""Shared bench plumbing: simulator, sidecar and Redis processes on loopback,
CPU placement, HdrHistogram tables and percentile plots.

    with tempdir() as d, NotionProcess(rate=0) as sim, \\
            bench_sidecar(d, notion_url=sim.api_url, token=sim.token, cpus=[1]) as sidecar:
        Client(sidecar.endpoint).emit("notion.page.update", {...}, ref="k")
        sidecar.scrape()["sidecar_events_journaled_total"]

Every benchmark takes `--smoke` (a few seconds: does it run at all, for CI),
`--out DIR` (where plots go; default bench/, a temporary directory with
--smoke) and `--json FILE` (the headline numbers, read by run_all.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

from standins.process import SidecarProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
TMPFS = "/dev/shm"
CPUS = sorted(os.sched_getaffinity(0))
# The trading loop's core and the one everything else gets when pinned.
LOOP_CPU = CPUS[0]
OTHER_CPUS = CPUS[1:] or CPUS[:1]

# A ~150-byte Notion page update: what a trading loop sends on every fill.
PROPERTIES = {"Name": "title", "Idempotency Key": "rich_text", "Price": "number", "Side": "select"}


def update_body(page_id: str, n: int) -> dict[str, Any]:
    """The n-th event of every benchmark: a price update for one page."""
    return {"page_id": page_id, "properties": {"Price": {"number": 1.08345 + (n % 1000) * 1e-5},
                                                "Side": {"select": {"name": "BUY" if n & 1 else "SELL"}}}}


# -- processes -----------------------------------------------------------------


@contextlib.contextmanager
def tempdir() -> Iterator[Path]:
    """A short temporary directory: ipc:// paths must stay under ~107 bytes."""
    with tempfile.TemporaryDirectory(prefix="scb-") as d:
        yield Path(d)


def set_affinity(pid: int, cpus: Sequence[int] | None) -> None:
    """Place every thread of `pid` on `cpus` (None: all CPUs), like `taskset -a -p`.

    os.sched_setaffinity(pid) moves one thread only; threads started later
    inherit their creator's mask, so moving all existing ones is enough.
    """
    mask = set(cpus) if cpus is not None else set(CPUS)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, mask)


def _wait_for(check: Any, proc: subprocess.Popen[bytes], what: str, log: Path | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> int | None:
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


class NotionProcess:
    """The Notion simulator in its own process, so its threads never take the
    measuring process's GIL. `rate=0`: unlimited.

        with NotionProcess(rate=0) as sim: sim.api_url, sim.token, sim.page_id
    """

    def __init__(self, *, rate: float = 0, burst: int = 1, cpus: Sequence[int] | None = None) -> None:
        self.rate, self.burst, self.cpus = rate, burst, cpus
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NotionProcess:
        cmd = [sys.executable, "-m", "standins.notion", "--rate", str(self.rate),
               "--burst", str(self.burst)]
        if self.cpus is not None:
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline() or b"null")
        if not info:
            raise RuntimeError("the Notion simulator did not start")
        self.url: str = info["url"]
        self.api_url = self.url + "/v1"
        self.token: str = info["token"]
        self.database_id: str = info["database_id"]
        self.page_id = self.create_page("bench")
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Notion-Version": "2022-06-28",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def create_page(self, name: str) -> str:
        body = {"parent": {"database_id": self.database_id},
                "properties": {"Name": {"title": [{"text": {"content": name}}]}}}
        return str(self._call("POST", "/v1/pages", body)["id"])

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/stats"))


def runtime_dir() -> Path | None:
    """A fresh directory on tmpfs (/dev/shm) for the ingest socket and the
    rings beside it, as the systemd unit's /run/trading-sidecar is; None
    where there is no tmpfs to use. The caller removes it."""
    if not os.path.isdir(TMPFS):
        return None
    return Path(tempfile.mkdtemp(prefix="scb-", dir=TMPFS))


def bench_sidecar(workdir: Path, *, notion_url: str = "http://127.0.0.1:9/v1", token: str | None = None,
                  rate: float = 3.0, burst: float = 1.0, cpus: Sequence[int] | None = None,
                  synchronous: str = "FULL", socket_dir: Path | None = None,
                  redis_url: str | None = None, sections: dict[str, dict[str, Any]] | None = None,
                  env: dict[str, str] | None = None) -> SidecarProcess:
    """The benchmarks' sidecar: one Notion lane, logging warnings only.

        with bench_sidecar(workdir, notion_url=sim.api_url, token=sim.token, cpus=[1]) as sc:
            sc.endpoint, sc.pid, sc.scrape(), sc.journal_count(), cpu_seconds(sc.pid)

    `token=None` leaves the Notion lane paused: events stay in the journal.
    `redis_url` shares the limiter's quotas in that Redis ([redis] url).
    `cpus` goes to `[process] cpu_affinity`, applied before any thread starts.
    The journal goes to `workdir`; the ingest socket, and so the clients'
    rings (`ingest.rings` beside it), to `socket_dir`, by default a directory
    on tmpfs made for this sidecar and removed with it (the unit's /run is
    tmpfs; a ring on a disk-backed file system pays for page writeback).
    `sections` adds config tables (`{"webhooks.alerts": {"url": ...}}`), or
    settings to the tables above (`{"journal": {"refs_keep_hours": 0.1}}`), and
    `env` variables (other APIs' credentials).
    """
    own_socket_dir = runtime_dir() if socket_dir is None else None
    socket_dir = socket_dir or own_socket_dir or workdir
    config: dict[str, Any] = {
        "ingest": {"endpoint": f"ipc://{socket_dir}/ingest.sock"},
        "journal": {"dir": str(workdir / "journal"), "synchronous": synchronous},
        "metrics": {"address": "127.0.0.1:0"},  # READY=1 names the port it got
        "notion": {"base_url": notion_url, "rate_per_second": float(rate), "burst": float(burst)},
        "process": {"cpu_affinity": list(cpus or [])},
    }
    if redis_url:
        config["redis"] = {"url": redis_url}
    for name, table in (sections or {}).items():  # "webhooks.alerts" -> config["webhooks"]["alerts"]
        *parents, last = name.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = {**node.get(last, {}), **table}  # "journal" adds to the journal's table
    env = {**(env or {}), **({"NOTION_TOKEN": token} if token else {})}
    return SidecarProcess(workdir, config=config, env=env or None,
                          args=("--log-level", "WARNING"),
                          remove_on_exit=(own_socket_dir,) if own_socket_dir else ())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class RedisProcess:
    """A throwaway redis-server on a free port, no persistence; `available()`
    is False when redis-server is not installed (apt-get install redis-server).

        if RedisProcess.available():
            with RedisProcess(cpus=[1]) as r: r.port
    """

    def __init__(self, *, cpus: Sequence[int] | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def __enter__(self) -> RedisProcess:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning"]
        if self.cpus is not None:
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        _wait_for(up, self.proc, "redis-server", None, 10)
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


# -- what the numbers were measured on ------------------------------------------


def machine() -> dict[str, str]:
    """Cores, CPU model, OS, Python and the versions of every library involved."""
    from importlib.metadata import PackageNotFoundError, version

    import zmq

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libzmq": zmq.zmq_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    for package in ("pyzmq", "orjson", "httpx", "redis", "hdrhistogram", "matplotlib", "psutil"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "absent"
    server = shutil.which("redis-server")
    if server:
        out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False).stdout
        info["redis-server"] = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
    else:
        info["redis-server"] = "absent"
    return info


# -- histograms, tables, plots ------------------------------------------------


def histogram() -> HdrHistogram:
    """Nanoseconds from 1 ns to 100 s, 3 significant digits."""
    return HdrHistogram(1, 100_000_000_000, 3)


def us(ns: float) -> str:
    """A duration in ns as µs with sensible precision."""
    v = ns / 1000
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def percentile_header(first: str, extra: Sequence[str] = ()) -> str:
    cols = [first, *(f"p{p:g}" for p in PERCENTILES), "max", *extra]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def percentile_row(name: str, h: HdrHistogram, extra: Sequence[str] = ()) -> str:
    """One markdown row in µs: p50 ... p99.99, max, then `extra` cells."""
    cells = [us(h.get_value_at_percentile(p)) for p in PERCENTILES] + [us(h.get_max_value())]
    return "| " + " | ".join([name, *cells, *extra]) + " |"


def summary(h: HdrHistogram) -> dict[str, float]:
    """Percentiles in µs, for --json."""
    out = {f"p{p:g}": h.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    out["max"] = h.get_max_value() / 1000
    out["count"] = h.get_total_count()
    return out


def plot_percentiles(panels: dict[str, dict[str, HdrHistogram]], path: Path, title: str) -> None:
    """One panel per key, one line per histogram: latency (µs, log) against
    percentile on the usual 1/(1-p) axis, so the tail gets the room."""
    import matplotlib

    matplotlib.use("Agg")  # no display in CI
    import matplotlib.pyplot as plt

    # One colour per name in every panel, so a line is the same method wherever it appears.
    names = list(dict.fromkeys(name for hists in panels.values() for name in hists))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    rows = -(-len(names) // 2)  # the legends sit under the panels, two names a row
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5 + 0.25 * rows), squeeze=False,
                             sharey=True)
    ticks = [50.0, 90.0, 99.0, 99.9, 99.99, 99.999]
    for ax, (panel, hists) in zip(axes[0], panels.items(), strict=True):
        for name, h in hists.items():
            if h.get_total_count() == 0:
                continue
            # Stop at the percentile one sample resolves; beyond it the line is the max.
            top = 100 * (1 - 1 / h.get_total_count())
            ps = [p for p in _percentile_grid() if p <= top] + [top]
            xs = [1 / (1 - p / 100) for p in ps] + [1 / (1 - top / 100)]
            ys = [max(h.get_value_at_percentile(p), 1) / 1000 for p in ps] + [h.get_max_value() / 1000]
            ax.plot(xs, ys, label=name, color=colour[name], linewidth=1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p:g}%" for p in ticks])
        ax.minorticks_off()
        ax.set_title(panel)
        ax.set_xlabel("percentile")
        ax.grid(True, which="major", alpha=0.3)
        # Every panel names all its lines; below the axes, where no line can be hidden under it.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    axes[0][0].set_ylabel("µs")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _percentile_grid() -> list[float]:
    grid, p = [], 0.0
    while p < 99.9999:
        grid.append(p)
        p = 100 - (100 - p) / 1.25
    return grid


# -- command line ---------------------------------------------------------------


def parse_args(doc: str | None) -> argparse.Namespace:
    """The common flags alone, for a benchmark that has no others."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_args(parser)
    return parser.parse_args()


def bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="a few seconds: check that it runs (CI)")
    parser.add_argument("--out", type=Path, help="directory for plots (default: bench/; a temp dir with --smoke)")
    parser.add_argument("--json", type=Path, help="also write the headline numbers here (for run_all.py)")


def out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return Path(args.out)
    # A smoke run must not overwrite the plots of the last real run.
    return Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else BENCH


def write_json(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2, default=str))
