"""The one interface every outside API implements, and the plans it returns.

A connector owns one lane (one API, one quota). The lane asks it three things:

    target = connector.route(envelope, blobs)  # at ingest: validate, pick the group
    plan = connector.plan(group, ctx)          # which events go out in one call, or wait/skip/dead
    result = await connector.send(plan, pace)  # one HTTP call; raises DeliveryError

`Send.request` is the connector's own typed value (one small frozen dataclass
per kind of call, e.g. notion.CreatePage), which its `send` dispatches with
`match`. A call beyond the planned one (a check before resending) first
awaits `pace()`, which takes a token from the lane's limiter.
`ConnectorBase` holds the defaults most connectors share.

Events with the same target are delivered in ingest order and never two at a
time; events with different targets are independent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeAlias, TypeVar

import httpx

from client.wire import Envelope
from sidecar.journal.store import Event
from sidecar.quota import ApiQuota

R = TypeVar("R")  # a connector's request type

# Awaited before each call a connector makes beyond the planned one: the lane's limiter.
Pace: TypeAlias = Callable[[], Awaitable[None]]


async def unpaced() -> None:
    """A `Pace` that never waits (tests, tools)."""


@dataclass
class Send(Generic[R]):
    """One call to make. `events` all leave the journal when it succeeds;
    `merged` says how many were folded into the call beyond the first.

    `idempotent`: making the call twice has the effect of making it once (a
    merged page PATCH that sets values). The lane then writes nothing before
    it (no attempt counted, nothing marked unsure: a transaction and an fsync
    a call saved); a failure counts the attempt when it defers the events, and
    a crash mid-call simply sends it again. Leave it False for anything that
    creates or appends: those are checked before a resend."""

    events: list[Event]
    request: R
    merged: int = 0
    idempotent: bool = False


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


# The lane handles each with `match` and `assert_never`: a new kind of plan fails mypy there.
Plan: TypeAlias = Send[R] | Wait | Moved | Skip | Dead


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


class Connector(Protocol[R]):
    lane: str
    kinds: frozenset[str]

    def accepts(self, env: Envelope) -> bool:
        """When several lanes share a kind (one per webhook): is this event ours?"""
        ...

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        """Validate at ingest (raise Reject) and name the event's group."""
        ...

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan[R]: ...

    async def send(self, plan: Send[R], pace: Pace) -> Delivered:
        """Make the call; await `pace()` before any further call (e.g. a check before resending)."""
        ...

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        """Groups waiting on `key` and where they go once it exists."""
        ...

    def refresh_credentials(self) -> bool:
        """Read the credential again (after a refusal, on SIGHUP); True if it changed."""
        ...

    async def aclose(self) -> None: ...


class ConnectorBase:
    """Defaults for a connector: it takes every event of its kinds, no group
    waits on a key it creates, and closing it closes its HTTP client."""

    http: httpx.AsyncClient

    def accepts(self, env: Envelope) -> bool:
        return True

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        return []

    def refresh_credentials(self) -> bool:
        return False  # no credential, or one that cannot change while running

    async def aclose(self) -> None:
        await self.http.aclose()
