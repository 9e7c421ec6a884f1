"""The sidecar process: ingest thread, delivery lanes, health, orderly shutdown.

    cfg = load_config("sidecar.toml")
    exit_code = asyncio.run(Sidecar(cfg, config_path="sidecar.toml").run())

Start-up: place the process on its CPUs, build the parts (`build.py`: open
the journal, bind the ingest socket and the metrics server, make the lanes),
start them, then tell systemd READY=1. A housekeeping tick on the event loop
(`housekeeping.py`) refreshes gauges and the status snapshot, and pings the
systemd watchdog, so a stalled loop is restarted.
On SIGTERM or SIGINT it stops reading, journals what it already received,
lets calls in flight finish for up to `drain_timeout` seconds, says how many
events remain in the journal for next time, and returns 0. On SIGHUP
(`sidecar reload`, systemd's ExecReload=) it reads its configuration file
again and applies what can change live, naming what needs a restart
(`reload.py`), then reads the APIs' credentials again: a lane paused on a
refused or missing credential tries again at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from sidecar.build import Parts, build
from sidecar.config import Config
from sidecar.delivery.lane import Lane
from sidecar.errors import ExitCode
from sidecar.housekeeping import Housekeeping
from sidecar.ops import systemd
from sidecar.ops.metrics import Metrics
from sidecar.ops.status import STARTING, Health, Status
from sidecar.reload import reload_config

log = logging.getLogger("sidecar")

HOUSEKEEPING_SECONDS = 2.0  # the status, metrics and disk checks; the watchdog's own interval if shorter
GIL_SWITCH_SECONDS = 0.0005


def place_process(cpus: tuple[int, ...], nice: int) -> None:
    """Apply [process] cpu_affinity and nice (no-ops when unset)."""
    proc = psutil.Process()
    if cpus:
        proc.cpu_affinity(list(cpus))
    if nice:
        proc.nice(nice)


class Sidecar:
    """The process's lifecycle over the parts `build.build` wires: start, tick, reload, stop."""

    def __init__(self, cfg: Config, *, config_path: str | os.PathLike[str] | None = None,
                 on_ready: Callable[[], None] | None = None, recover: bool = True) -> None:
        self.cfg = cfg
        # Absolute: a reload reads the same file whatever the working directory has become.
        self.config_path = Path(config_path).absolute() if config_path else None
        self.recover = recover  # False: a corrupt journal stops the start (journal/repair.py)
        self.metrics = Metrics()
        self.on_ready = on_ready
        self.lanes: dict[str, Lane] = {}
        self.started = time.time()
        self._status: Status | None = None  # None until the first housekeeping tick
        self._health = STARTING
        self._stop: asyncio.Event | None = None
        self._parts: Parts | None = None  # None while starting
        self._reload_pending = False

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def reload(self) -> None:
        """SIGHUP: read the configuration file again (`reload.py`), then every lane's credential.

        Never logs a credential's value. A lane paused for want of a credential that
        is there now resumes on its own.
        """
        if self._parts is None:
            self._reload_pending = True  # done once the parts exist: the file may have changed since it was read
            return
        self.cfg = reload_config(self.config_path, self.cfg, self._parts)
        changed = [name for name, lane in self.lanes.items() if lane.reload_credentials()]
        log.info("reload: credentials read again; changed for: %s", ", ".join(changed) or "none")

    def status(self) -> Status | None:
        return self._status

    def health(self) -> Health:
        return self._health

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # First thing: SIGHUP's default action would end the process (a reload sent during start-up).
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        place_process(cfg.process.cpu_affinity, cfg.process.nice)
        # The ingest thread wakes on a doorbell but must then take the GIL from
        # the event loop, which by default keeps it up to 5 ms: a woken ingest
        # would wait that long. 0.5 ms bounds the wait at a small cost in switches.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        parts = build(cfg, self.metrics, loop=loop, recover=self.recover, started=self.started,
                      status=self.status, health=self.health)
        self.lanes = parts.lanes
        tasks = self._start(parts)
        # What start-up built lives as long as the process: out of the collector's sight, a
        # full collection walks only what came since. Delivery allocates by the group (a
        # coalesced call of thousands of parsed events), which triggered a full collection
        # about every 2.5 s at 10,000 events/s, 43 ms each over the whole heap (gc.callbacks).
        gc.freeze()
        self._parts = parts
        if self._reload_pending:
            self.reload()
        exit_code = ExitCode.OK
        try:
            exit_code = await self._tick(parts, self._stop)
        finally:
            await self._shutdown(parts, tasks)
        return exit_code

    def _start(self, parts: Parts) -> list[asyncio.Task[None]]:
        """Start serving, ingest and the lanes; tell systemd READY=1. Returns the lanes' tasks."""
        cfg, loop = self.cfg, asyncio.get_running_loop()
        if parts.api is not None:
            parts.api.start()
        parts.ingest.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        parts.store.start()
        # A paused lane's task waits for it to resume (a reload that brings its credential).
        tasks = [asyncio.create_task(lane.run(), name=f"lane-{name}") for name, lane in parts.lanes.items()]
        for name, lane in parts.lanes.items():
            if lane.paused_reason:
                log.warning("lane %s is paused: %s; its events wait in the journal", name, lane.paused_reason)
        self._housekeeping(parts.house)
        api = parts.api
        log.info("sidecar ready: ingest %s, journal %s, metrics %s, lanes %s", cfg.ingest.endpoint, parts.journal.path,
                 api.address if api else "off", ", ".join(parts.lanes))
        # X_SIDECAR_METRICS (sd_notify's X_ prefix for a field of our own) tells a
        # supervisor other than systemd, a test harness say, where /health is.
        systemd.notify(f"READY=1\nSTATUS=ingest {cfg.ingest.endpoint}, {len(parts.lanes)} lane(s)\nMAINPID={os.getpid()}"
                       + (f"\nX_SIDECAR_METRICS={api.address}" if api else ""))
        if self.on_ready:
            self.on_ready()
        return tasks

    async def _tick(self, parts: Parts, stop: asyncio.Event) -> ExitCode:
        """Housekeeping and the watchdog until told to stop, or until ingest fails."""
        watchdog = systemd.watchdog_interval()
        tick = min(HOUSEKEEPING_SECONDS, watchdog) if watchdog else HOUSEKEEPING_SECONDS
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass
            if watchdog:
                systemd.notify("WATCHDOG=1")  # from the loop itself: a stalled loop misses it
            if parts.ingest.error is not None:
                log.error("ingest failed (%s); exiting so that systemd restarts the sidecar", parts.ingest.error)
                return ExitCode.FAILED
            self._housekeeping(parts.house)
        return ExitCode.OK

    async def _shutdown(self, parts: Parts, tasks: list[asyncio.Task[None]]) -> None:
        """Stop reading, let calls in flight finish within drain_timeout, say what is left for next time."""
        systemd.notify("STOPPING=1")
        log.info("stopping: no longer reading new events")
        await asyncio.get_running_loop().run_in_executor(None, parts.ingest.stop)
        # All lanes drain at once, so the whole stop fits in drain_timeout.
        cut = sum(await asyncio.gather(*(lane.stop(self.cfg.drain_timeout) for lane in parts.lanes.values())))
        await asyncio.gather(*tasks, return_exceptions=True)
        for connector in parts.connectors:
            await connector.aclose()
        await parts.store.aclose()
        if parts.api is not None:
            parts.api.stop()
        left = parts.journal.depth()
        log.info("stopped: %d event(s) left in the journal for next start%s", sum(left.values()),
                 f" ({cut} call(s) cut off mid-flight, to be checked before resending)" if cut else "")
        parts.ingest_journal.close()
        parts.journal.close()
        parts.lock.release()  # last: the journal is closed, another sidecar may have it now

    def _housekeeping(self, house: Housekeeping) -> None:
        try:
            self._status = house.refresh()
            self._health = self._status.health
        except Exception:  # a status snapshot must never take the sidecar down
            log.exception("housekeeping failed")
            self._health = Health.of(["housekeeping failed; see log"])
            if self._status is not None:
                self._status = dataclasses.replace(self._status, health=self._health)

