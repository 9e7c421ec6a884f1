"""A delivery lane: one API, one limiter, events delivered from the journal.

    lane = Lane(connector, journal, limiter, retry_cfg, metrics)
    task = asyncio.create_task(lane.run())
    lane.notify()          # ingest wrote new events for this lane
    await lane.stop(timeout=10)

Each worker picks the oldest ready event, asks the connector to plan a call
for everything waiting in that event's group (coalescing), takes a token from
the limiter, makes the call, and settles the outcome in the journal:
delivered (deleted), retry later (backoff with full jitter, at least
Retry-After), or dead-lettered with the API's error body. A group is never
in two calls at once, so per-target order holds with any concurrency.

A refused credential (CredentialsRefused) is not the events' fault: the lane
pauses (`paused_reason`), keeps the call's events as they were (the attempt
is not counted), and tries again after `credentials_probe_seconds`, or at
once after `reload_credentials()` (SIGHUP, `sidecar reload`); the first call
that succeeds resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never

from sidecar.config import BreakerConfig, RetryConfig
from sidecar.connectors.base import Connector, Dead, Moved, Send, Skip, Wait
from sidecar.delivery.backoff import retry_delay
from sidecar.delivery.breaker import Breaker
from sidecar.delivery.limiter import Limiter
from sidecar.errors import CredentialsRefused, DeliveryError, Permanent, RateLimited, Retryable
from sidecar.journal.health import classify
from sidecar.journal.store import Event, Journal
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.lane")

IDLE_POLL_SECONDS = 1.0
WORKER_ERROR_PAUSE = 1.0
READY_SCAN = 512


@dataclass
class _Context:
    """The journal as a connector's plan() may see it."""

    journal: Journal
    lane: str
    now: float

    def ref(self, key: str) -> str | None:
        return self.journal.ref(self.lane, key)

    def has_target(self, target: str) -> bool:
        return self.journal.has_target(self.lane, target)

    def dead_key(self, kind: str, key: str) -> str | None:
        return self.journal.dead_key(self.lane, kind, key)


class Lane:
    def __init__(
        self,
        connector: Connector[Any],
        journal: Journal,
        limiter: Limiter,
        retry: RetryConfig,
        metrics: Metrics,
        *,
        concurrency: int = 1,
        breaker: BreakerConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.name = connector.lane
        self.connector = connector
        self.journal = journal
        self.limiter = limiter
        self.retry = retry
        self.metrics = metrics
        self.concurrency = concurrency
        self.clock = clock
        self.rng = rng or random.Random()
        self.paused_reason: str | None = None  # set when the lane cannot call at all (no token)
        cfg = breaker or BreakerConfig()
        self.breaker = Breaker(failures=cfg.failures, cooldown=cfg.cooldown)
        self._refused: str | None = None  # why the credential was refused; the lane probes meanwhile
        self._probe_at = 0.0  # when a paused lane may make its next call
        self._reloads = 0  # credential reloads so far: a refusal of a call made before the last one is stale
        self._inflight: set[str] = set()
        self._blocked: dict[str, float] = {}  # target -> not before (waits and backoffs)
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self.errors = 0  # unexpected errors survived by the workers
        self.delivered = 0  # events this lane delivered (lanes may share a kind: webhooks)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        if self.paused_reason:
            return  # the app reports why; events stay in the journal
        self._tasks = [asyncio.create_task(self._worker(), name=f"{self.name}-{i}") for i in range(self.concurrency)]
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def notify(self) -> None:
        self._wake.set()

    @property
    def credentials_refused(self) -> bool:
        """Paused because the API refused the credential (not merely unconfigured)."""
        return self._refused is not None

    def reload_credentials(self) -> bool:
        """Read the connector's credential again (SIGHUP); True if it changed.

        A lane paused on a refused credential tries a call at once, changed or not.
        """
        changed = self.connector.refresh_credentials()
        self._reloads += 1
        if self._refused is not None:
            self._probe_at = 0.0
            self._wake.set()
        return changed

    async def stop(self, timeout: float) -> int:
        """Let calls in flight finish for up to `timeout` s; return how many were cut off."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            return len(still)
        return 0

    # -- the loop -------------------------------------------------------------

    async def _worker(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.breaker.release()
                if classify(exc) is not None:
                    # The journal refused a write (disk full, read-only...): the
                    # journal's health logged it once and status shows it. The
                    # events stay as they were (a call that went out stays
                    # `unsure`, so it is checked before it is resent).
                    await self._sleep(WORKER_ERROR_PAUSE)
                    continue
                # A bug in a connector's plan: log it, keep the worker, try again shortly.
                self.errors += 1
                log.exception("lane %s: unexpected error; retrying in %.0f s", self.name, WORKER_ERROR_PAUSE)
                await self._sleep(WORKER_ERROR_PAUSE)

    async def _step(self) -> None:
        now = self.clock()
        if self._refused is not None:
            if now < self._probe_at:
                await self._idle(self._probe_at - now)
                return
            # This worker probes; the others wait for its outcome. Reading the
            # credential first picks up a rewritten file without a reload.
            self._probe_at = now + self.retry.credentials_probe_seconds
            self.connector.refresh_credentials()
        if not self.breaker.allow(now):
            # Open, or another worker is probing: no calls; events wait in the journal.
            await self._idle(self.breaker.reopens_in(now) or IDLE_POLL_SECONDS)
            return
        picked = self._pick()
        if picked is None:
            self.breaker.release()
            await self._idle()
            return
        try:
            wait = await self.limiter.reserve(self.clock())
        except BaseException:
            self._inflight.discard(picked[0])
            raise
        if wait > 0:
            # Sleep without holding the group, then plan it afresh so events
            # that arrived meanwhile are coalesced into the same call.
            self._inflight.discard(picked[0])
            await self._sleep(wait)
            picked = None if self._stopping else self._pick()
            if picked is None:
                self.limiter.not_used()  # the slot is spent, not given back: see limiter.py
                self.breaker.release()
                return
        target, plan = picked
        try:
            await self._deliver(plan)
        finally:
            self._inflight.discard(target)

    async def _take_token(self) -> None:
        wait = await self.limiter.reserve(self.clock())
        if wait > 0:
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the lane is told to stop."""
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _idle(self, at_most: float = IDLE_POLL_SECONDS) -> None:
        now = self.clock()
        self._blocked = {t: until for t, until in self._blocked.items() if until > now}
        horizon = min([at_most, IDLE_POLL_SECONDS, *(until - now for until in self._blocked.values())])
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.005, horizon))
        except TimeoutError:
            pass

    def _pick(self) -> tuple[str, Send[Any]] | None:
        """The next call to make, settling duplicates and dead ends on the way."""
        now = self.clock()
        seen: set[str] = set()
        heads = self.journal.ready_heads(self.name, now)
        picked = self._pick_among(heads, seen, now)
        if picked is None and len(heads) == READY_SCAN:
            # A full page of rows may all belong to a few blocked groups (a
            # hot page backing off): fall back to one row per group. Only
            # then: that query reads the whole backlog, and a lane paying it
            # on every call fell further behind the longer its backlog grew
            # (bench/soak.py after a 30 s SIGSTOP: it never caught up).
            picked = self._pick_among(self.journal.ready_heads(self.name, now, per_target=True), seen, now)
        return picked

    def _pick_among(self, heads: list[tuple[int, str]], seen: set[str], now: float) -> tuple[str, Send] | None:
        for _, target in heads:
            if target in seen:
                continue
            seen.add(target)
            while True:
                if target in self._inflight or self._blocked.get(target, 0) > now:
                    break
                group = self.journal.group(self.name, target)
                if not group:
                    break
                if group[0].not_before > now:  # an older event of this group is backing off
                    self._blocked[target] = group[0].not_before
                    break
                plan = self.connector.plan(group, _Context(self.journal, self.name, now))
                match plan:
                    case Send():
                        self._inflight.add(target)
                        return target, plan
                    case Moved():
                        if plan.target == target:
                            break
                        # Merge into the group it belongs to, so one page's events
                        # are never in two groups (two orders, two backoffs).
                        self.journal.retarget(self.name, target, plan.target)
                        self._blocked.pop(plan.target, None)
                        target = plan.target
                        continue
                    case Wait():
                        self._blocked[target] = now + plan.seconds
                        break
                    case Skip():
                        self._settle_skip(plan)
                    case Dead():
                        self._dead(plan.events, plan.reason, None, plan.detail)
                    case _:
                        assert_never(plan)
                if not plan.events or len(plan.events) >= len(group):
                    break
                # Part of the group was settled: plan what is left of it now.
        return None

    async def _deliver(self, plan: Send[Any]) -> None:
        events = plan.events
        ids = [e.id for e in events]
        self.journal.start_attempt(ids)
        started = time.perf_counter()
        status = "error"
        reloads = self._reloads
        try:
            # A connector's extra calls (a check before resending) take tokens too.
            result = await self.connector.send(plan, self._take_token)
            status = "ok"
        except CredentialsRefused as exc:
            status = str(exc.status) if exc.status else exc.reason
            self.breaker.record(True, self.clock())  # the API answered: it is up, the credential is not
            # A call sent before a reload was refused the old credential: try the new one at once.
            self._pause_for_credentials(events, exc, retry_now=reloads != self._reloads)
            return
        except DeliveryError as exc:
            status = str(exc.status) if exc.status else exc.reason
            # The API answered with a refusal or a rate limit: it is alive.
            self.breaker.record(isinstance(exc, (Permanent, RateLimited)), self.clock())
            if isinstance(exc, RateLimited):
                self.metrics.rate_limited.labels(lane=self.name, reason=exc.limit_reason or "unspecified").inc()
                await self.limiter.on_rate_limited(exc.retry_after, exc.told, self.clock())
            self._failed(events, exc)
            return
        except asyncio.CancelledError:
            status = "cancelled"
            self.breaker.release()
            raise  # the attempt is counted: a restart checks before resending
        except Exception as exc:  # a bug in a connector must not stop the lane
            log.exception("lane %s: unexpected error delivering %d event(s)", self.name, len(events))
            status = "internal_error"
            self.breaker.record(False, self.clock())
            self._failed(events, Retryable("internal_error", type(exc).__name__))
            return
        finally:
            self.metrics.calls.labels(api=self.name, status=status).inc()
            self.metrics.call_seconds.labels(api=self.name).observe(time.perf_counter() - started)
        self.breaker.record(True, self.clock())
        if self._refused is not None:
            log.warning("lane %s: credentials accepted again; resuming delivery", self.name)
            if self.paused_reason == self._refused:
                self.paused_reason = None
            self._refused = None
            self._wake.set()
        await self.limiter.on_success(result.told, self.clock())
        if result.failed:  # items refused one by one inside a call that succeeded
            refused: dict[tuple[str, str], list[Event]] = {}
            for event in events:
                if event.id in result.failed:
                    refused.setdefault(result.failed[event.id], []).append(event)
            for (reason, detail), dead in refused.items():
                self._dead(dead, reason, None, detail)
            events = [e for e in events if e.id not in result.failed]
            ids = [e.id for e in events]
        self.journal.complete(ids, lane=self.name, refs=result.refs)
        for key, created in result.refs.items():
            for old, new in self.connector.retargets(key, created):
                if self.journal.retarget(self.name, old, new):
                    self._blocked.pop(old, None)
        now_ns = time.time_ns()
        delivered = events[: len(events) - result.duplicates]
        for event in delivered:
            self.metrics.delivered.labels(kind=event.kind).inc()
            self.delivered += 1
            self.metrics.emit_to_delivery.labels(lane=self.name).observe((now_ns - event.emitted_ns) / 1e9)
        for event in events[len(delivered):]:
            self.metrics.deduplicated.labels(kind=event.kind, reason="duplicate").inc()
        if plan.merged and not result.duplicates:
            self.metrics.coalesced.labels(kind=events[0].kind).inc(plan.merged)

    def _failed(self, events: list[Event], exc: DeliveryError) -> None:
        now = self.clock()
        for event in events:  # the journal counted this attempt before the call
            event.attempts += 1
        if isinstance(exc, Permanent):
            self._dead(events, exc.reason, exc.status, exc.body or exc.detail)
            return
        attempts = max(e.attempts for e in events)
        # Being told to slow down is not a failure of the event: never give up on it.
        if not isinstance(exc, RateLimited) and self.retry.max_attempts and attempts >= self.retry.max_attempts:
            self._dead(events, "retries_exhausted", exc.status, f"{attempts} attempts; last: {exc} {exc.body or ''}")
            return
        retry_after = exc.retry_after if isinstance(exc, Retryable) else None  # only a Retryable may say how long
        delay = retry_delay(attempts, retry_after, base=self.retry.base, cap=self.retry.cap, rng=self.rng)
        self.metrics.retried.labels(lane=self.name, reason=exc.reason).inc()
        log.info("lane %s: %s; retry %d in %.2f s", self.name, exc, attempts, delay)
        self.journal.defer([e.id for e in events], now + delay, str(exc), unsure=exc.ambiguous)
        self._blocked[events[0].target] = now + delay

    def _pause_for_credentials(self, events: list[Event], exc: CredentialsRefused, *, retry_now: bool = False) -> None:
        """Keep the events as they were and pause the lane until the credential changes or the next probe."""
        self.journal.uncount_attempt(events, str(exc))
        self._probe_at = self.clock() + (0.0 if retry_now else self.retry.credentials_probe_seconds)
        if retry_now:
            self._wake.set()
        self.metrics.retried.labels(lane=self.name, reason=exc.reason).inc()
        if self._refused is None:  # once per pause, not once per probe
            log.warning("lane %s: paused: %s (%s); its events wait in the journal; fix the credential, then "
                        "`sidecar reload` (SIGHUP); trying again every %.0f s", self.name, exc.pause_reason,
                        exc.detail or exc.status, self.retry.credentials_probe_seconds)
        self._refused = self.paused_reason = exc.pause_reason

    def _dead(self, events: list[Event], reason: str, status: int | None, detail: str | None) -> None:
        log.warning("lane %s: dead-lettered %d event(s): %s %s", self.name, len(events), reason, status or "")
        self.journal.dead_letter(events, reason, status=status, detail=detail)
        for event in events:
            self.metrics.dead.labels(kind=event.kind, reason=reason).inc()

    def _settle_skip(self, plan: Skip) -> None:
        self.journal.complete([e.id for e in plan.events], lane=self.name)
        for event in plan.events:
            self.metrics.deduplicated.labels(kind=event.kind, reason=plan.reason).inc()

