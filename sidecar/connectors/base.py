"""The one interface every outside API implements, and the plans it returns.

A connector owns one lane (one API, one quota). The lane asks it three things:

    target = connector.route(envelope, blobs)  # at ingest: validate, pick the group
    plan = connector.plan(group, ctx)          # which events go out in one call, or wait/skip/dead
    result = await connector.send(plan)        # one HTTP call; raises DeliveryError

Events with the same target are delivered in ingest order and never two at a
time; events with different targets are independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from client.wire import Envelope

from ..journal import Event
from ..limiter import ApiQuota


class Reject(ValueError):
    """An event that can never be delivered as sent: counted and kept aside at ingest."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Send:
    """One call to make. `events` all leave the journal when it succeeds;
    `merged` says how many were folded into the call beyond the first."""

    events: list[Event]
    request: Any
    merged: int = 0


@dataclass
class Wait:
    """Not now: retry the group after `seconds` (e.g. a ref not yet created)."""

    seconds: float
    reason: str


@dataclass
class Moved:
    """The group is another group under a new name (a ref now resolved):
    the lane merges its events into `target`, in ingest order, and plans that."""

    target: str


@dataclass
class Skip:
    """Already done (a duplicate): remove without a call, counted under `reason`."""

    events: list[Event]
    reason: str


@dataclass
class Dead:
    """Can never succeed: dead-letter with the reason."""

    events: list[Event]
    reason: str
    detail: str


Plan = Send | Wait | Moved | Skip | Dead


@dataclass
class Delivered:
    """A call succeeded. `refs` maps idempotency keys to ids the API created.

    `failed` names events the API refused one by one inside a call that
    succeeded as a whole (a batch with per-item results): the lane
    dead-letters each with its reason and detail, and delivers the rest::

        Delivered(failed={event.id: ("item_failed", "NOT_FOUND: no product 9999")})
    """

    refs: dict[str, str] = field(default_factory=dict)
    # Events the call covered that need no call of their own (deduplicated).
    duplicates: int = 0
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # event id -> (reason, detail)
    # What the API said about its quota on this answer (Naver's GNCP-GW-RateLimit-* headers).
    told: ApiQuota | None = None


class PlanContext(Protocol):
    """What a connector may ask of the journal while planning."""

    now: float

    def ref(self, key: str) -> str | None: ...

    def has_target(self, target: str) -> bool: ...

    def dead_key(self, kind: str, key: str) -> str | None: ...


class Connector(Protocol):
    lane: str
    kinds: frozenset[str]

    def accepts(self, env: Envelope) -> bool:
        """When several lanes share a kind (one per webhook): is this event ours?"""
        ...

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        """Validate at ingest (raise Reject) and name the event's group."""
        ...

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan: ...

    async def send(self, plan: Send) -> Delivered: ...

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        """Groups waiting on `key` and where they go once it exists."""
        ...

    async def aclose(self) -> None: ...
