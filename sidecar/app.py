"""The sidecar process: ingest thread, delivery lanes, orderly shutdown.

    cfg = load_config("sidecar.toml")
    exit_code = asyncio.run(Sidecar(cfg).run())

On SIGTERM or SIGINT it stops reading, journals what it already received,
lets calls in flight finish for up to `drain_timeout` seconds, says how many
events remain in the journal for next time, and returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

from .config import Config
from .connectors import build_lanes
from .ingest import Ingest
from .journal import Journal
from .lane import Lane
from .limiter import Limiter, MemoryStore
from .metrics import Metrics

log = logging.getLogger("sidecar")

HOUSEKEEPING_SECONDS = 1.0


class Sidecar:
    def __init__(self, cfg: Config, *, on_ready: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.on_ready = on_ready
        self.lanes: dict[str, Lane] = {}
        self._stop: asyncio.Event | None = None

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        specs = build_lanes(cfg)
        connectors = {name: spec.connector for name, spec in specs.items()}
        journal = Journal.open(cfg.journal.dir, synchronous=cfg.journal.synchronous)
        ingest_journal = Journal.open(cfg.journal.dir, synchronous=cfg.journal.synchronous)
        store = MemoryStore()
        for name, spec in specs.items():
            lane = Lane(spec.connector, journal, Limiter(name, spec.rule, store), cfg.retry, self.metrics,
                        concurrency=spec.concurrency)
            lane.paused_reason = spec.paused
            self.lanes[name] = lane

        def wake(lanes: set[str]) -> None:
            for name in lanes:
                self.lanes[name].notify()

        ingest = Ingest(cfg.ingest, ingest_journal, connectors, self.metrics,
                        on_written=lambda lanes: loop.call_soon_threadsafe(wake, lanes))
        ingest.bind()
        ingest.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        tasks = [asyncio.create_task(lane.run(), name=f"lane-{name}") for name, lane in self.lanes.items()]
        log.info("sidecar ready: ingest %s, journal %s, lanes %s", cfg.ingest.endpoint, journal.path,
                 ", ".join(f"{n}{' (paused)' if l.paused_reason else ''}" for n, l in self.lanes.items()))
        if self.on_ready:
            self.on_ready()
        exit_code = 0
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), HOUSEKEEPING_SECONDS)
                except asyncio.TimeoutError:
                    pass
                if ingest.error is not None:
                    log.error("ingest failed (%s); shutting down so systemd can restart", ingest.error)
                    exit_code = 1
                    break
                self._housekeeping(journal)
        finally:
            log.info("stopping: no longer reading new events")
            await loop.run_in_executor(None, ingest.stop)
            cut = 0
            for lane in self.lanes.values():
                cut += await lane.stop(cfg.drain_timeout)
            await asyncio.gather(*tasks, return_exceptions=True)
            for connector in connectors.values():
                await connector.aclose()
            left = journal.depth()
            log.info("stopped: %d event(s) left in the journal for next start%s", sum(left.values()),
                     f" ({cut} call(s) cut off mid-flight, to be checked before resending)" if cut else "")
            ingest_journal.close()
            journal.close()
        return exit_code

    def _housekeeping(self, journal: Journal) -> None:
        depth = journal.depth()
        for name in self.lanes:
            self.metrics.depth.labels(lane=name).set(depth.get(name, 0))
