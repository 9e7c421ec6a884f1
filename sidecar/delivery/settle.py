"""A lane's outcomes written to the journal and the metrics: delivered, retried later, dead-lettered, skipped.

    settle = Settler("notion", journal, metrics, retry_cfg, rng)
    settle.delivered(plan, result)                  # deleted from the journal and counted
    not_before = settle.failed(events, exc, now)    # deferred with backoff (its time), or dead-lettered (None)
    settle.skipped(plan)                            # nothing to send: settled as deduplicated

Which failures are final: a `Permanent` error, or `retry.max_attempts`
spent on anything but a rate limit (being told to slow down is not a
failure of the event: it is never given up on).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from operator import attrgetter
from typing import Any

from sidecar.config import RetryConfig
from sidecar.connectors.base import Delivered, Send, Skip
from sidecar.delivery.backoff import retry_delay
from sidecar.errors import DeliveryError, Permanent, RateLimited, Retryable
from sidecar.journal.store import Event, Journal
from sidecar.ops.metrics import Metrics, observe_many

log = logging.getLogger("sidecar.lane")
KIND, EMITTED_NS = attrgetter("kind"), attrgetter("emitted_ns")


class Settler:
    """Settles one lane's events; `delivered` counts the events it delivered."""

    def __init__(self, lane: str, journal: Journal, metrics: Metrics, retry: RetryConfig, rng: random.Random) -> None:
        self.lane = lane
        self.journal = journal
        self.metrics = metrics
        self.retry = retry
        self.rng = rng
        self.delivered_count = 0  # events this lane delivered (lanes may share a kind: webhooks)

    def delivered(self, plan: Send[Any], result: Delivered) -> None:
        """A call succeeded: items it refused one by one are dead-lettered, the rest completed and counted."""
        events = plan.events
        if result.failed:
            refused: dict[tuple[str, str], list[Event]] = {}
            for event in events:
                if event.id in result.failed:
                    refused.setdefault(result.failed[event.id], []).append(event)
            for (reason, detail), dead in refused.items():
                self.dead(dead, reason, None, detail)
            events = [e for e in events if e.id not in result.failed]
        self.journal.complete([e.id for e in events], lane=self.lane, refs=result.refs,
                              blob_paths=[p for e in events if e.blob_path for p in e.blob_paths])
        now_ns = time.time_ns()
        delivered = events[: len(events) - result.duplicates]
        # Counted by kind and observed at once, each label looked up once a call, not once an
        # event (a coalesced call settles thousands: the lookups were 5% of the event loop at
        # 10,000 events/s, observing each another 5%).
        for kind, n in Counter(map(KIND, delivered)).items():
            self.metrics.delivered.labels(kind=kind).inc(n)
        self.delivered_count += len(delivered)
        observe_many(self.metrics.emit_to_delivery.labels(lane=self.lane),
                     [(now_ns - emitted_ns) / 1e9 for emitted_ns in map(EMITTED_NS, delivered)])
        for kind, n in Counter(map(KIND, events[len(delivered):])).items():
            self.metrics.deduplicated.labels(kind=kind, reason="duplicate").inc(n)
        if plan.merged and not result.duplicates:
            self.metrics.coalesced.labels(kind=events[0].kind).inc(plan.merged)

    def failed(self, events: list[Event], exc: DeliveryError, now: float, *, counted: bool = True) -> float | None:
        """Dead-letter the events (None), or defer them with backoff and return when they may go again.

        `counted`: the journal counted this attempt before the call; if not (an idempotent
        call, `Send.idempotent`), deferring counts it."""
        for event in events:  # the journal counted this attempt before the call, or `defer` does
            event.attempts += 1
        if isinstance(exc, Permanent):
            self.dead(events, exc.reason, exc.status, exc.body or exc.detail)
            return None
        attempts = max(e.attempts for e in events)
        # Being told to slow down is not a failure of the event: never give up on it.
        if not isinstance(exc, RateLimited) and self.retry.max_attempts and attempts >= self.retry.max_attempts:
            self.dead(events, "retries_exhausted", exc.status, f"{attempts} attempts; last: {exc} {exc.body or ''}")
            return None
        retry_after = exc.retry_after if isinstance(exc, Retryable) else None  # only a Retryable may say how long
        delay = retry_delay(attempts, retry_after, base=self.retry.base, cap=self.retry.cap, rng=self.rng)
        self.metrics.retried.labels(lane=self.lane, reason=exc.reason).inc()
        log.info("lane %s: %s; retry %d in %.2f s", self.lane, exc, attempts, delay)
        self.journal.defer([e.id for e in events], now + delay, str(exc), unsure=exc.ambiguous, count=not counted)
        return now + delay

    def dead(self, events: list[Event], reason: str, status: int | None, detail: str | None) -> None:
        log.warning("lane %s: dead-lettered %d event(s): %s %s", self.lane, len(events), reason, status or "")
        self.journal.dead_letter(events, reason, status=status, detail=detail)
        for event in events:
            self.metrics.dead.labels(kind=event.kind, reason=reason).inc()

    def skipped(self, plan: Skip) -> None:
        self.journal.complete([e.id for e in plan.events], lane=self.lane)
        for event in plan.events:
            self.metrics.deduplicated.labels(kind=event.kind, reason=plan.reason).inc()
