"""A hot group (thousands of updates to one page): what the journal is asked for one coalesced call.

Behaviour, not time: the statements a call costs are counted with sqlite3's trace callback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.connectors.base import Delivered, Pace, Plan, PlanContext, Send
from sidecar.delivery.lane import Lane
from sidecar.errors import CredentialsRefused, Retryable
from sidecar.journal.store import Event, Journal

from .test_lane import Clock, Scripted, once, scripted_lane

pytestmark = pytest.mark.timeout(30)

N = 500


def idempotent(group: list[Event], ctx: PlanContext) -> Plan:
    return Send(group, None, merged=len(group) - 1, idempotent=True)


def counted(group: list[Event], ctx: PlanContext) -> Plan:
    return Send(group, None, merged=len(group) - 1)


class Traced(Scripted):
    """Records the statements the journal ran before each call was made."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.statements: list[str] = []
        self.before_call: list[list[str]] = []

    async def send(self, plan: Send[None], pace: Pace) -> Delivered:
        self.before_call.append(list(self.statements))
        self.statements.clear()
        return await super().send(plan, pace)


def traced_lane(tmp_path: Path, connector: Traced, clock: Clock) -> tuple[Lane, Journal]:
    """N events waiting for one page, and a lane whose journal's statements `connector` records."""
    lane, journal = scripted_lane(tmp_path, connector, clock, *["page:p"] * N)
    journal.conn.set_trace_callback(connector.statements.append)
    return lane, journal


def writes(statements: list[str]) -> list[str]:
    return [s.split()[0] for s in statements if s.split()[0] in ("UPDATE", "DELETE", "INSERT", "BEGIN")]


@pytest.mark.parametrize("planner, before", [(idempotent, []), (counted, ["BEGIN", "UPDATE"])])
def test_a_group_of_n_updates_is_read_once_and_settled_by_one_statement(
        tmp_path: Path, planner: Callable[[list[Event], PlanContext], Plan], before: list[str]) -> None:
    connector = Traced(planner)
    clock = Clock()
    lane, journal = traced_lane(tmp_path, connector, clock)
    assert once(lane)
    assert connector.sent == [list(range(1, N + 1))]
    # An idempotent call (a merged page PATCH) writes nothing before it: no attempt counted, no fsync.
    [statements] = connector.before_call
    assert writes(statements) == before
    assert sum(s.startswith("SELECT id, seq") for s in statements) == 1  # the group: one query
    # Settled: one transaction, one DELETE for the N rows.
    assert writes(connector.statements) == ["BEGIN", "DELETE"]
    assert journal.count("events") == 0 and lane.delivered == N


def test_an_idempotent_call_that_fails_counts_its_attempt_when_deferred(tmp_path: Path) -> None:
    connector = Traced(idempotent, results=[Retryable("http_503", "unavailable", status=503, retry_after=2.0)])
    clock = Clock()
    lane, journal = traced_lane(tmp_path, connector, clock)
    assert once(lane) and not once(lane)
    assert journal.conn.execute("SELECT DISTINCT attempts, unsure, not_before FROM events").fetchall() == [
        (1, 0, clock.now + 2.0)]
    clock.now += 2.0
    assert once(lane) and journal.count("events") == 0


def test_an_idempotent_call_refused_its_credential_leaves_the_attempts_as_they_were(tmp_path: Path) -> None:
    connector = Traced(idempotent, results=[CredentialsRefused("Notion", "unauthorized", status=401)])
    lane, journal = traced_lane(tmp_path, connector, Clock())
    assert once(lane) and lane.paused_reason == "credentials refused by Notion"
    assert journal.conn.execute("SELECT DISTINCT attempts, unsure FROM events").fetchall() == [(0, 0)]


@pytest.mark.parametrize("planner, left", [(idempotent, (0, 0)), (counted, (1, 1))])
def test_a_crash_mid_call_leaves_an_idempotent_group_as_it_was_and_a_counted_one_unsure(
        tmp_path: Path, planner: Callable[[list[Event], PlanContext], Plan], left: tuple[int, int]) -> None:
    """Cut off while the call is out (as far as the journal knows, a kill -9): nothing was
    written for the idempotent call, so the restart sends it again as it is; a counted one
    is checked before it is resent (unsure)."""
    connector = Traced(planner)
    lane, journal = traced_lane(tmp_path, connector, Clock())
    connector.send = _never  # type: ignore[method-assign]
    picked = lane._groups.pick(lane.clock())
    assert picked is not None

    async def cut_off(plan: Send[None]) -> None:
        task = asyncio.create_task(lane._deliver(plan))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(cut_off(picked[1]))
    assert journal.conn.execute("SELECT DISTINCT attempts, unsure FROM events").fetchall() == [left]
    assert journal.count("events") == N


async def _never(plan: Send[None], pace: Pace) -> Delivered:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
