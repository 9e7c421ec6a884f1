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
in two calls at once, so per-target order holds with any concurrency. The
lane runs the loop; `groups.Groups` picks and plans, `settle.Settler`
writes outcomes, `pause.Pause` keeps why the lane makes no calls.

A lane built with `paused=` (no credential at start), or told `pause(reason)`,
makes no calls until `resume()` or a reload that finds its credential
changed. A refused credential (CredentialsRefused) is not the events' fault:
the lane pauses (`paused_reason`), keeps the call's events as they were (the
attempt is not counted), and tries again after `credentials_probe_seconds`,
or at once after `reload_credentials()` (SIGHUP, `sidecar reload`); the first
call that succeeds resumes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sidecar.config import BreakerConfig, RetryConfig
from sidecar.connectors.base import Connector, Send
from sidecar.delivery.breaker import Breaker
from sidecar.delivery.groups import Groups
from sidecar.delivery.limiter import Limiter, Rule
from sidecar.delivery.outcomes import DEAD, OK, REFUSED, Outcomes, describe
from sidecar.delivery.pause import Pause
from sidecar.delivery.settle import Settler
from sidecar.delivery.split import bisect, worth_splitting
from sidecar.errors import CredentialsRefused, DeliveryError, EndpointNotFound, Permanent, RateLimited, Retryable
from sidecar.journal.health import classify
from sidecar.journal.store import Event, Journal
from sidecar.ops.credentials import how_to_provide
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.lane")

IDLE_POLL_SECONDS = 1.0   # while the breaker is open: how often to look whether it lets a call through
# With nothing to do, a lane sleeps until ingest wakes it (`notify`) or a blocked group (a
# backoff, a Wait) comes due. This bound is only a safety net, for events no wake-up announces
# (rows another process wrote, retries deferred before a restart): idle is idle.
IDLE_MAX_SECONDS = 5.0
WORKER_ERROR_PAUSE = 1.0


class Lane:
    """One API's delivery: workers that pick, plan, pace, call and settle; see the module's docstring."""

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
        paused: str | None = None,
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
        cfg = breaker or BreakerConfig()
        self.breaker = Breaker(failures=cfg.failures, cooldown=cfg.cooldown)
        self._pause = Pause(retry.credentials_probe_seconds, held=paused)
        self._settle = Settler(self.name, journal, metrics, retry, self.rng)
        self._groups = Groups(self.name, journal, connector, self._settle)
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self.errors = 0  # unexpected errors survived by the workers
        self.recent = Outcomes()  # the last calls' outcomes, for check and /health (outcomes.py)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until stopped; a lane paused from the start first waits for `resume()`."""
        await self._pause.gate.wait()  # events stay in the journal meanwhile; the app reports why
        if self._stopping:
            return
        self._tasks = [asyncio.create_task(self._worker(), name=f"{self.name}-{i}") for i in range(self.concurrency)]
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def notify(self) -> None:
        self._wake.set()

    @property
    def paused_reason(self) -> str | None:
        """Why the lane makes no calls (paused, or its credential refused); None while it calls."""
        return self._pause.reason

    @property
    def credentials_refused(self) -> bool:
        """Paused because the API refused the credential (not merely unconfigured)."""
        return self._pause.refused is not None

    @property
    def delivered(self) -> int:
        """Events this lane delivered (lanes may share a kind: webhooks)."""
        return self._settle.delivered_count

    def pause(self, reason: str) -> None:
        """Make no calls until `resume()` (or a reload that finds the credential changed)."""
        self._pause.hold(reason)

    def resume(self) -> None:
        self._pause.resume()
        self._wake.set()

    def reload_credentials(self) -> bool:
        """Read the connector's credential again (SIGHUP); True if it changed.

        A lane paused on a refused credential tries a call at once, changed or not;
        a lane paused for want of a credential resumes if it changed.
        """
        changed = self.connector.refresh_credentials()
        if self._pause.reloaded(changed):
            self._wake.set()
        return changed

    def reconfigure(self, rule: Rule, retry: RetryConfig, breaker: BreakerConfig) -> None:
        """A reload's new rate, retry and breaker settings, in force from the next call on."""
        self.limiter.set_rule(rule)
        self.retry = retry
        self._settle.retry = retry
        self._pause.probe_seconds = retry.credentials_probe_seconds
        self.breaker.threshold, self.breaker.cooldown = breaker.failures, breaker.cooldown

    async def stop(self, timeout: float) -> int:
        """Let calls in flight finish for up to `timeout` s; return how many were cut off."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        self._pause.gate.set()  # a paused lane's waiters wake, and see the stop
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
        if not self._pause.gate.is_set():
            await self._pause.gate.wait()  # paused: `resume()` or `stop()` opens it
            return
        if self._pause.refused is not None:
            if (wait := self._pause.next_probe(now)) > 0:
                await self._idle(wait)
                return
            # This worker probes; reading the credential first picks up a rewritten file without a reload.
            self.connector.refresh_credentials()
        if not self.breaker.allow(now):
            # Open, or another worker is probing: no calls; events wait in the journal.
            await self._idle(self.breaker.reopens_in(now) or IDLE_POLL_SECONDS)
            return
        claimed = self._groups.claim(self.clock())
        if claimed is None:
            self.breaker.release()
            await self._idle()
            return
        # The token first, then the plan: a group is read and merged once a call, after
        # the wait, with the events that arrived meanwhile (not once before it and again after).
        try:
            wait = await self.limiter.reserve(self.clock())
            if wait > 0:
                await self._sleep(wait)
        except BaseException:
            self._groups.done(claimed)
            raise
        if self._stopping:
            self._groups.done(claimed)
        picked = None if self._stopping else self._groups.pick(self.clock(), claimed)
        if picked is None:
            self.limiter.not_used()  # the slot is spent, not given back: see limiter.py
            self.breaker.release()
            if not self._stopping:
                await self._idle()  # settled without a call, or taken by another worker: until woken
            return
        target, plan = picked
        try:
            await self._deliver(plan)
        finally:
            self._groups.done(target)

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

    async def _idle(self, at_most: float = IDLE_MAX_SECONDS) -> None:
        horizon = min([at_most, IDLE_MAX_SECONDS, *self._groups.waits(self.clock())])
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.005, horizon))
        except TimeoutError:
            pass

    async def _deliver(self, plan: Send[Any]) -> bool:
        """Make one call and settle it; True if its events are settled (delivered or dead)."""
        events = plan.events
        counted = not plan.idempotent  # an idempotent call is counted only if it fails (base.Send)
        if counted:
            self.journal.start_attempt([e.id for e in events])
        started = time.perf_counter()
        status = "error"
        reloads = self._pause.reloads
        try:
            # A connector's extra calls (a check before resending) take tokens too.
            result = await self.connector.send(plan, self._take_token)
            status = "ok"
        except CredentialsRefused as exc:
            status = str(exc.status) if exc.status else exc.reason
            self.breaker.record(True, self.clock())  # the API answered: it is up, the credential is not
            # A call sent before a reload was refused the old credential: try the new one at once.
            self._pause_for_credentials(events, exc, retry_now=reloads != self._pause.reloads, counted=counted)
            return False
        except DeliveryError as exc:
            status = str(exc.status) if exc.status else exc.reason
            # The API answered with a refusal or a rate limit: it is alive.
            self.breaker.record(isinstance(exc, (Permanent, RateLimited)), self.clock())
            if isinstance(exc, RateLimited):
                self.metrics.rate_limited.labels(lane=self.name, reason=exc.limit_reason or "unspecified").inc()
                await self.limiter.on_rate_limited(exc.retry_after, exc.told, self.clock())
            if worth_splitting(events, exc):  # split.py: one bad event never sinks the others in the call
                self.recent.add(REFUSED, self.clock(), describe(exc))
                return await bisect(events, deliver=self._deliver, pace=self._take_token,
                                    plan_part=lambda part: self.connector.plan(part, self._groups.context(self.clock())))
            dead = self._failed(events, exc, counted)
            if dead:
                self.recent.add(DEAD, self.clock(), describe(exc))
            return dead
        except asyncio.CancelledError:
            status = "cancelled"
            self.breaker.release()
            raise  # the attempt is counted: a restart checks before resending
        except Exception as exc:  # a bug in a connector must not stop the lane
            log.exception("lane %s: unexpected error delivering %d event(s)", self.name, len(events))
            status = "internal_error"
            self.breaker.record(False, self.clock())
            failure = Retryable("internal_error", type(exc).__name__)
            if self._failed(events, failure, counted):
                self.recent.add(DEAD, self.clock(), describe(failure))
            return False
        finally:
            self.metrics.calls.labels(api=self.name, status=status).inc()
            self.metrics.call_seconds.labels(api=self.name).observe(time.perf_counter() - started)
        self.breaker.record(True, self.clock())
        if self._pause.accepted():
            log.warning("lane %s: credentials accepted again; resuming delivery", self.name)
            self._wake.set()
        await self.limiter.on_success(result.told, self.clock())
        # A call whose every event the API refused one by one delivered nothing.
        refused_all = len(result.failed) >= len(events)
        self.recent.add(DEAD if refused_all else OK, self.clock(),
                        ": ".join(next(iter(result.failed.values()), ())) if refused_all else "")
        self._settle.delivered(plan, result)
        self._groups.follow(result.refs)
        return True

    def _failed(self, events: list[Event], exc: DeliveryError, counted: bool = True) -> bool:
        """Settle a failed call; True if its events were dead-lettered (settled), False if they wait.
        `counted`: the journal counted the attempt before the call (not so for an idempotent one)."""
        not_before = self._settle.failed(events, exc, self.clock(), counted=counted)
        if not_before is None:
            return True
        self._groups.block(events[0].target, not_before)
        return False

    def _pause_for_credentials(self, events: list[Event], exc: CredentialsRefused, *, retry_now: bool = False,
                               counted: bool = True) -> None:
        """Keep the events as they were and pause the lane until the credential changes or the next probe."""
        if counted:
            self.journal.uncount_attempt(events, str(exc))
        first = self._pause.refuse(exc.pause_reason, self.clock(), retry_now=retry_now)
        if retry_now:
            self._wake.set()
        self.metrics.retried.labels(lane=self.name, reason=exc.reason).inc()
        if first:  # once per pause, not once per probe
            fix = (f"correct {exc.setting} and restart the sidecar" if isinstance(exc, EndpointNotFound)
                   else how_to_provide())
            log.warning("lane %s: paused: %s (%s); its events wait in the journal; to fix it, %s; one call is tried "
                        "again every %.0f s", self.name, exc.pause_reason, exc.detail or exc.status,
                        fix, self.retry.credentials_probe_seconds)
