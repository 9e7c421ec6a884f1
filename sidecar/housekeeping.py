"""Housekeeping, once a tick: the journal's upkeep, the gauges, and the status snapshot.

    house = Housekeeping(cfg, metrics, journal, ingest, lanes, store, journal_health, started=time.time())
    status = house.refresh()     # a Status; status.health is what /health answers

Each tick expires old refs and rejects, gives free pages back to the disk (a
few at a time when it is nearly full), checkpoints the WAL, lets the
journal's health settle and brings its reserve back once space returns; then
it reads the lanes, the limiter's store and ingest into gauges and a
`Status`. A lane is a problem while paused, its breaker open, or its recent
calls mostly refused or dead-lettered (`[health]`, `delivery/outcomes.py`).
A journal write refused for want of disk (or a read-only one) is the
journal's state, shown in status; anything else raised is the caller's to log.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sidecar.config import Config
from sidecar.delivery.breaker import STATE_VALUES
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import BACKED_OFF, CONFIGURED, LEARNED, Store
from sidecar.ingest.core import Ingest
from sidecar.ingest.rings import Ring
from sidecar.journal.health import JournalHealth
from sidecar.journal.repair import unacknowledged
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics, process_snapshot
from sidecar.ops.status import (
    MAX_RINGS_LISTED,
    Health,
    IngestStatus,
    JournalStatus,
    LaneState,
    LaneStatus,
    RingStatus,
    Status,
)


class Housekeeping:
    """The tick's work over the sidecar's parts; `refresh` returns the snapshot, it keeps none."""

    def __init__(self, cfg: Config, metrics: Metrics, journal: Journal, ingest: Ingest, lanes: dict[str, Lane],
                 store: Store, journal_health: JournalHealth, *, started: float) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.journal = journal
        self.ingest = ingest
        self.lanes = lanes
        self.store = store
        self.journal_health = journal_health
        self.started = started
        self._reported: dict[str, int] = {}  # counters read from lanes and the store, already added
        self.restart_needed: tuple[str, ...] = ()  # settings a reload found changed that wait for a restart
        self.reload_refused: str | None = None  # why the last reload kept the running configuration

    def refresh(self) -> Status:
        self._upkeep()
        journal, m = self.journal, self.metrics
        now = time.time()
        depth = journal.depth()
        dead = journal.count("dead_letters")
        size = journal.size_bytes()
        m.dead_letters.set(dead)
        m.journal_bytes.set(size)
        problems = self._problems()
        lanes = {name: self._lane(name, lane, depth.get(name, 0), now, problems) for name, lane in self.lanes.items()}
        health = Health.of(problems)
        rings = list(self.ingest.rings.rings.values()) if self.ingest.rings is not None else []  # one C-level copy
        return Status(
            time=now,
            uptime_seconds=round(now - self.started, 1),
            ingest=IngestStatus(endpoint=self.cfg.ingest.endpoint, alive=self.ingest.alive,
                                received=int(m.total("sidecar_events_received_total")),
                                rejected=int(m.total("sidecar_events_rejected_total")),
                                sequence_gaps=int(m.total("sidecar_client_sequence_gaps_total")),
                                ring_shm_bytes=int(m.value("sidecar_ring_shm_bytes"))),
            journal=JournalStatus(path=str(journal.path), bytes=size, pending=sum(depth.values()),
                                  dead_letters=dead, state=self.journal_health.state),
            lanes=lanes,
            process=process_snapshot(),
            health=health,
            restart_needed=self.restart_needed,
            reload_refused=self.reload_refused,
            rings=ring_statuses(rings, now, time.monotonic()),
            rings_total=len(rings),
        )

    def _upkeep(self) -> None:
        journal = self.journal
        failed = False
        pages = journal.space.pages_to_release(journal.page_size)  # the file shrinks at the checkpoint
        steps = (self._expire, lambda: journal.release_free_pages(pages), journal.checkpoint)
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

    def _expire(self) -> None:
        now, hour = time.time(), 3600.0
        journal = self.journal
        # 1.5 keeps: `Journal.ref` renews a used ref past half a keep, so each lives a keep after its last use.
        refs, rejects = journal.expire(refs_before=now - 1.5 * journal.refs_keep,
                                       rejects_before=now - self.cfg.journal.rejects_keep_hours * hour)
        self.metrics.expired.labels(table="refs").inc(refs)
        self.metrics.expired.labels(table="rejects").inc(rejects)

    def _problems(self) -> list[str]:
        """What is wrong outside the lanes: ingest, the limiter's store, the journal."""
        m, store = self.metrics, self.store
        problems: list[str] = []
        if not self.ingest.alive:
            problems.append("ingest thread is not running")
        store_problem = store.problem()
        m.limiter_store_away.set(0 if store_problem is None else 1)
        self._add(m.limiter_fallbacks, "fallbacks", store.episodes)
        if store_problem:
            problems.append(store_problem)
        journal_problem = self.journal_health.problem()
        if journal_problem:
            problems.append(journal_problem)
        return problems + unacknowledged(self.journal)

    def _lane(self, name: str, lane: Lane, depth: int, now: float, problems: list[str]) -> LaneStatus:
        """One lane's gauges and status; what is wrong with it goes on `problems`."""
        m, limiter, breaker = self.metrics, lane.limiter, lane.breaker
        m.depth.labels(lane=name).set(depth)
        m.limiter_tokens.labels(lane=name).set(limiter.tokens(now))
        self._rate_gauge(name, limiter.last.rate, limiter.last.source)
        sharing = self.store.sidecars_sharing(limiter.key)
        m.limiter_sharing.labels(lane=name).set(sharing)
        self._add(m.limiter_unused.labels(lane=name), f"unused:{name}", limiter.unused)
        m.breaker_state.labels(lane=name).set(STATE_VALUES[breaker.state])
        # Not configured (no credential at start, nothing waiting): off. Paused: events
        # wait for it, or the API refused its credential.
        state: LaneState = "running"
        if lane.paused_reason:
            state = "paused" if depth or lane.credentials_refused else "off"
        if state == "paused":
            problems.append(f"{name}: paused: {lane.paused_reason}; {depth} event(s) waiting")
        if lane.errors:
            problems.append(f"{name}: {lane.errors} unexpected error(s) in delivery; see the log")
        if breaker.state != "closed":
            problems.append(f"{name}: circuit breaker {breaker.state} after {breaker.failures} "
                            f"failures; probing again in {breaker.reopens_in(now):.0f} s")
        failing = lane.recent.failing(name, self.cfg.health, now)
        if failing:
            problems.append(failing)
        calls, failed = lane.recent.recent(self.cfg.health, now)
        return LaneStatus(state=state, depth=depth, **limiter.view(now), sidecars_sharing=sharing,
                          configured_rate=limiter.rule.rate, breaker=breaker.state, paused=lane.paused_reason,
                          delivered=lane.delivered, recent_calls=calls, recent_failed=failed)

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


def ring_statuses(rings: list[Ring], now: float, mono: float) -> tuple[RingStatus, ...]:
    """The rings ingest reads, largest backlog first, at most MAX_RINGS_LISTED.

    Read from another thread than ingest's: a ring it closes meanwhile is
    skipped (its descriptor is gone), and the backlog is the producer's own
    hint, which it writes on its slow paths (doorbell, full, close), so it is
    a lower bound while the producer runs and exact once it has rung or closed."""
    out = []
    for r in rings:
        try:
            backlog = max(r.hint(), r.pos) - r.acked
        except OSError:
            continue
        h = r.header
        out.append(RingStatus(name=r.name, client_id=h.client_id, pid=h.pid, uid=r.owner_uid, version=h.version,
                              backlog_bytes=max(backlog, 0), age_seconds=round(max(now - h.created_ns / 1e9, 0.0), 1),
                              idle_seconds=None if r.last_record == float("-inf") else round(mono - r.last_record, 1)))
    out.sort(key=lambda s: -s.backlog_bytes)
    return tuple(out[:MAX_RINGS_LISTED])
