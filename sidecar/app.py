"""The sidecar process: ingest thread, delivery lanes, health, orderly shutdown.

    cfg = load_config("sidecar.toml")
    exit_code = asyncio.run(Sidecar(cfg).run())

Start-up: place the process on its CPUs, open the journal, bind the ingest
socket, start the lanes and the metrics server, then tell systemd READY=1.
A housekeeping tick on the event loop refreshes gauges and the status
snapshot, and pings the systemd watchdog, so a stalled loop is restarted.
On SIGTERM or SIGINT it stops reading, journals what it already received,
lets calls in flight finish for up to `drain_timeout` seconds, says how many
events remain in the journal for next time, and returns 0. On SIGHUP
(`sidecar reload`, systemd's ExecReload=) it reads the APIs' credentials
again: a lane paused on a refused or missing credential tries again at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from sidecar.config import Config
from sidecar.connectors import build_lanes
from sidecar.delivery.breaker import STATE_VALUES
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import BACKED_OFF, CONFIGURED, LEARNED, Limiter, MemoryStore, Store
from sidecar.delivery.redis_store import RedisStore
from sidecar.errors import CannotStart, ExitCode
from sidecar.ingest.core import Ingest
from sidecar.journal.health import JournalHealth
from sidecar.journal.repair import open_checked, unacknowledged
from sidecar.journal.space import Space
from sidecar.journal.store import Journal, read_ref
from sidecar.ops import systemd
from sidecar.ops.credentials import read_secret
from sidecar.ops.http_api import ApiServer
from sidecar.ops.metrics import Metrics, process_snapshot
from sidecar.ops.status import STARTING, Health, IngestStatus, JournalStatus, LaneState, LaneStatus, Status

log = logging.getLogger("sidecar")

HOUSEKEEPING_SECONDS = 1.0
GIL_SWITCH_SECONDS = 0.0005


def place_process(cpus: tuple[int, ...], nice: int) -> None:
    """Apply [process] cpu_affinity and nice (no-ops when unset)."""
    proc = psutil.Process()
    if cpus:
        proc.cpu_affinity(list(cpus))
    if nice:
        proc.nice(nice)


class Sidecar:
    def __init__(self, cfg: Config, *, on_ready: Callable[[], None] | None = None, recover: bool = True) -> None:
        self.cfg = cfg
        self.recover = recover  # False: a corrupt journal stops the start (journal_repair.py)
        self.metrics = Metrics()
        self.on_ready = on_ready
        self.lanes: dict[str, Lane] = {}
        self.started = time.time()
        self._status: Status | None = None  # None until the first housekeeping tick
        self._health = STARTING
        self._stop: asyncio.Event | None = None
        self.store: Store = MemoryStore()
        self._reported: dict[str, int] = {}  # counters read from lanes and the store, already added
        self._not_started: set[str] = set()  # lanes paused at start (no credential): reload may start them
        self._tasks: list[asyncio.Task[None]] = []

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def reload(self) -> None:
        """SIGHUP: read every lane's credential again; never logs a value."""
        changed = []
        for name, lane in self.lanes.items():
            if lane.reload_credentials():
                changed.append(name)
            if lane.paused_reason and name in self._not_started and name in changed:
                # Paused at start for want of a credential, which is there now.
                lane.paused_reason = None
                self._not_started.discard(name)
                self._tasks.append(asyncio.create_task(lane.run(), name=f"lane-{name}"))
                lane.notify()
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
        specs = build_lanes(cfg)
        connectors = {name: spec.connector for name, spec in specs.items()}
        self.journal_health = JournalHealth(cfg.journal.dir, self.metrics, space=Space(cfg.journal.dir, reserve=True))
        journal = open_checked(cfg.journal.dir, synchronous=cfg.journal.synchronous, recover=self.recover,
                               metrics=self.metrics, health=self.journal_health, role="delivery")
        journal.refs_keep = cfg.journal.refs_keep_hours * 3600
        journal.give_back_free_pages()  # a journal from before auto_vacuum, if small enough to rewrite now
        # Ingest never checkpoints; the housekeeping tick does, off its path.
        ingest_journal = Journal.open(cfg.journal.dir, synchronous=cfg.journal.synchronous, checkpoints=False,
                                      health=self.journal_health, role="ingest")
        store, beats = self._limiter_store()
        for name, spec in specs.items():
            lane = Lane(spec.connector, journal, Limiter(name, spec.rule, store, quota_id=spec.quota_id), cfg.retry,
                        self.metrics, concurrency=spec.concurrency, breaker=cfg.breaker)
            lane.paused_reason = spec.paused
            self.lanes[name] = lane

        def wake(lanes: set[str]) -> None:
            for name in lanes:
                self.lanes[name].notify()

        def wake_from_ingest(lanes: set[str]) -> None:
            loop.call_soon_threadsafe(wake, lanes)

        ingest = Ingest(cfg.ingest, ingest_journal, connectors, self.metrics, on_written=wake_from_ingest)
        ingest.bind()
        api = None
        if cfg.metrics.address:
            try:
                api = ApiServer(cfg.metrics.address, self.metrics.registry, self.status, self.health,
                                lambda lane, key: read_ref(cfg.journal.dir, lane, key))
            except OSError as exc:
                ingest.stop()
                raise SidecarError(f"cannot serve metrics on {cfg.metrics.address} ({exc.strerror}); "
                                   "is another sidecar running? set [metrics] address to another port, "
                                   "or to \"\" to turn it off") from None
            api.start()
        ingest.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self._not_started = {name for name, lane in self.lanes.items() if lane.paused_reason}
        tasks = self._tasks
        tasks += [asyncio.create_task(lane.run(), name=f"lane-{name}") for name, lane in self.lanes.items()]
        for name, lane in self.lanes.items():
            if lane.paused_reason:
                log.warning("lane %s is paused: %s; its events wait in the journal", name, lane.paused_reason)
        self._housekeeping(journal, ingest)
        log.info("sidecar ready: ingest %s, journal %s, metrics %s, lanes %s", cfg.ingest.endpoint, journal.path,
                 api.address if api else "off", ", ".join(self.lanes))
        # X_SIDECAR_METRICS (sd_notify's X_ prefix for a field of our own) tells a
        # supervisor other than systemd, a test harness say, where /health is.
        systemd.notify(f"READY=1\nSTATUS=ingest {cfg.ingest.endpoint}, {len(self.lanes)} lane(s)\nMAINPID={os.getpid()}"
                       + (f"\nX_SIDECAR_METRICS={api.address}" if api else ""))
        if self.on_ready:
            self.on_ready()
        watchdog = systemd.watchdog_interval()
        tick = min(HOUSEKEEPING_SECONDS, watchdog) if watchdog else HOUSEKEEPING_SECONDS
        exit_code = ExitCode.OK
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), tick)
                except TimeoutError:
                    pass
                if watchdog:
                    systemd.notify("WATCHDOG=1")  # from the loop itself: a stalled loop misses it
                if ingest.error is not None:
                    log.error("ingest failed (%s); exiting so that systemd restarts the sidecar", ingest.error)
                    exit_code = ExitCode.FAILED
                    break
                self._housekeeping(journal, ingest)
        finally:
            systemd.notify("STOPPING=1")
            log.info("stopping: no longer reading new events")
            await loop.run_in_executor(None, ingest.stop)
            # All lanes drain at once, so the whole stop fits in drain_timeout.
            cut = sum(await asyncio.gather(*(lane.stop(cfg.drain_timeout) for lane in self.lanes.values())))
            await asyncio.gather(*tasks, return_exceptions=True)
            for connector in connectors.values():
                await connector.aclose()
            if beats is not None:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)
            if isinstance(self.store, RedisStore):
                await self.store.aclose()
            if api is not None:
                api.stop()
            left = journal.depth()
            log.info("stopped: %d event(s) left in the journal for next start%s", sum(left.values()),
                     f" ({cut} call(s) cut off mid-flight, to be checked before resending)" if cut else "")
            ingest_journal.close()
            journal.close()
        return exit_code

    def _limiter_store(self) -> tuple[Store, asyncio.Task[None] | None]:
        """[redis] url set: quotas shared in Redis (with heartbeats); else in this process."""
        if not self.cfg.redis.url:
            self.store = MemoryStore()
            return self.store, None
        store = RedisStore(self.cfg.redis, password=read_secret(self.cfg.redis.password_env))
        self.store = store
        log.info("limiter: quotas shared in Redis at %s", self.cfg.redis.url)
        return store, asyncio.create_task(store.beat_forever(), name="limiter-beats")

    def _housekeeping(self, journal: Journal, ingest: Ingest) -> None:
        try:
            self._refresh(journal, ingest)
        except Exception:  # a status snapshot must never take the sidecar down
            log.exception("housekeeping failed")
            self._health = Health.of(["housekeeping failed; see log"])
            if self._status is not None:
                self._status = dataclasses.replace(self._status, health=self._health)

    def _expire(self, journal: Journal) -> None:
        now, hour = time.time(), 3600.0
        cfg = self.cfg.journal
        # 1.5 keeps: `Journal.ref` renews a used ref past half a keep, so each lives a keep after its last use.
        refs, rejects = journal.expire(refs_before=now - 1.5 * journal.refs_keep,
                                       rejects_before=now - cfg.rejects_keep_hours * hour)
        self.metrics.expired.labels(table="refs").inc(refs)
        self.metrics.expired.labels(table="rejects").inc(rejects)

    def _refresh(self, journal: Journal, ingest: Ingest) -> None:
        failed = False
        pages = journal.space.pages_to_release(journal.page_size)  # the file shrinks at the checkpoint
        steps = (lambda: self._expire(journal), lambda: journal.release_free_pages(pages),
                 journal.checkpoint)
        for step in steps:
            try:
                step()
            except sqlite3.Error as exc:
                if self.journal_health.failed("checkpoint", exc) is None:
                    raise  # a full or read-only disk is in the journal's state now; the rest is news
                failed = True
        if not failed:
            self.journal_health.ok("checkpoint")
        self.journal_health.settle()
        journal.space.restore_reserve()  # once space has come back, past ingest's resume
        now = time.time()
        depth = journal.depth()
        dead = journal.count("dead_letters")
        size = journal.size_bytes()
        m = self.metrics
        m.dead_letters.set(dead)
        m.journal_bytes.set(size)
        lanes: dict[str, LaneStatus] = {}
        problems: list[str] = []
        if not ingest.alive:
            problems.append("ingest thread is not running")
        if isinstance(self.store, RedisStore):
            since = self.store.away_since
            m.limiter_store_away.set(0 if since is None else 1)
            self._add(m.limiter_fallbacks, "fallbacks", self.store.episodes)
            if since is not None:
                problems.append(f"limiter: Redis unreachable for {self.store.clock() - since:.0f} s "
                                f"({self.store.away_reason}); lanes go on alone at rate ÷ sidecars sharing")
        journal_problem = self.journal_health.problem()
        if journal_problem:
            problems.append(journal_problem)
        problems += unacknowledged(journal)
        for name, lane in self.lanes.items():
            limiter = lane.limiter
            m.depth.labels(lane=name).set(depth.get(name, 0))
            m.limiter_tokens.labels(lane=name).set(limiter.tokens(now))
            self._rate_gauge(name, limiter.last.rate, limiter.last.source)
            sharing = self.store.sharing.get(limiter.key, 1) if isinstance(self.store, RedisStore) else 1
            m.limiter_sharing.labels(lane=name).set(sharing)
            self._add(m.limiter_unused.labels(lane=name), f"unused:{name}", limiter.unused)
            m.breaker_state.labels(lane=name).set(STATE_VALUES[lane.breaker.state])
            # Not configured (no credential at start, nothing waiting): off. Paused: events
            # wait for it, or the API refused its credential.
            state: LaneState = "running"
            if lane.paused_reason:
                state = "paused" if depth.get(name, 0) or lane.credentials_refused else "off"
            lanes[name] = LaneStatus(
                state=state,
                depth=depth.get(name, 0),
                **limiter.view(now),
                sidecars_sharing=sharing,
                configured_rate=limiter.rule.rate,
                breaker=lane.breaker.state,
                paused=lane.paused_reason,
                delivered=lane.delivered,
            )
            if state == "paused":
                problems.append(f"{name}: paused: {lane.paused_reason}; {depth.get(name, 0)} event(s) waiting")
            if lane.errors:
                problems.append(f"{name}: {lane.errors} unexpected error(s) in delivery; see the log")
            if lane.breaker.state != "closed":
                problems.append(f"{name}: circuit breaker {lane.breaker.state} after {lane.breaker.failures} "
                                f"failures; probing again in {lane.breaker.reopens_in(now):.0f} s")
        self._health = Health.of(problems)
        self._status = Status(
            time=now,
            uptime_seconds=round(now - self.started, 1),
            ingest=IngestStatus(endpoint=self.cfg.ingest.endpoint, alive=ingest.alive,
                                received=int(m.total("sidecar_events_received_total")),
                                rejected=int(m.total("sidecar_events_rejected_total")),
                                sequence_gaps=int(m.total("sidecar_client_sequence_gaps_total"))),
            journal=JournalStatus(path=str(journal.path), bytes=size, pending=sum(depth.values()),
                                  dead_letters=dead, state=self.journal_health.state),
            lanes=lanes,
            process=process_snapshot(),
            health=self._health,
        )


    def _add(self, counter: Any, name: str, total: int) -> None:
        """Bring a counter up to a total kept elsewhere (a lane's or the store's own count)."""
        counter.inc(total - self._reported.get(name, 0))
        self._reported[name] = total

    def _rate_gauge(self, lane: str, rate: float, source: str) -> None:
        """One series per lane: the one labelled with the source in force."""
        gauge = self.metrics.limiter_rate
        for other in (CONFIGURED, LEARNED, BACKED_OFF):
            if other != source:
                try:
                    gauge.remove(lane, other)
                except KeyError:
                    pass
        gauge.labels(lane=lane, source=source).set(rate)


class SidecarError(CannotStart):
    pass
