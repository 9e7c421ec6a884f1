"""The lane on its own, over a real journal, in process: what it does with each
plan a connector returns and each outcome of a call, with a clock the test moves."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from client import wire
from client.wire import Envelope
from sidecar.config import BreakerConfig, RetryConfig
from sidecar.connectors.base import Dead, Delivered, Moved, Pace, Plan, PlanContext, Send, Skip, Wait
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Limiter, MemoryStore, Rule
from sidecar.errors import CredentialsRefused, DeliveryError, Permanent, RateLimited, Retryable
from sidecar.journal.store import Event, EventRow, Journal
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


class FlakyConnector:
    """Plans fail once with a bug, then calls succeed; records what it sent."""

    lane = "flaky"
    kinds = frozenset({"webhook.post"})

    def __init__(self) -> None:
        self.plans = 0
        self.sent: list[list[int]] = []

    def accepts(self, env: Envelope) -> bool:
        return True

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        return "t"

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan:
        self.plans += 1
        if self.plans == 1:
            raise KeyError("a bug in plan()")
        return Send(group, None, merged=len(group) - 1)

    async def send(self, plan: Send[None], pace: Pace) -> Delivered:
        self.sent.append([e.seq for e in plan.events])
        return Delivered()

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        return []

    def refresh_credentials(self) -> bool:
        return False

    async def aclose(self) -> None:
        pass


def test_a_worker_survives_a_bug_and_delivers_afterwards(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    rows = [EventRow("flaky", "webhook.post", "t", None, None, "c", n, 1, 1,
                     wire.encode("c", n, "webhook.post", None, None, 1, {"n": n}), None) for n in (1, 2, 3)]
    journal.write_batch(rows)
    connector = FlakyConnector()
    lane = Lane(connector, journal, Limiter("flaky", Rule(rate=1000, burst=10), MemoryStore()),
                RetryConfig(), Metrics())

    async def run() -> None:
        task = asyncio.create_task(lane.run())
        for _ in range(400):  # up to 4 s: the worker pauses 1 s after the error
            if lane.delivered == 3:
                break
            await asyncio.sleep(0.01)
        await lane.stop(5)
        await task

    asyncio.run(run())
    assert lane.errors == 1
    assert connector.sent == [[1, 2, 3]]
    assert lane.delivered == 3 and journal.count("events") == 0


# -- pick and _deliver, step by step: a scripted connector and a clock the test moves --------


class Scripted:
    """A connector whose plans come from `planner(group, ctx)` and whose calls
    answer `results` in turn (a Delivered, or a DeliveryError to raise)."""

    lane = "scripted"
    kinds = frozenset({"webhook.post"})

    def __init__(self, planner: Callable[[list[Event], PlanContext], Plan],
                 results: list[Delivered | DeliveryError] | None = None,
                 retargets: dict[str, list[tuple[str, str]]] | None = None) -> None:
        self.planner = planner
        self.results = results or []
        self.waiting = retargets or {}
        self.sent: list[list[int]] = []

    def accepts(self, env: Envelope) -> bool:
        return True

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        raise AssertionError("not at ingest")

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan:
        return self.planner(group, ctx)

    async def send(self, plan: Send[None], pace: Pace) -> Delivered:
        self.sent.append([e.seq for e in plan.events])
        result = self.results.pop(0) if self.results else Delivered()
        if isinstance(result, DeliveryError):
            raise result
        return result

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        return self.waiting.get(key, [])

    def refresh_credentials(self) -> bool:
        return False

    async def aclose(self) -> None:
        pass


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scripted_lane(tmp_path: Path, connector: Scripted, clock: Clock, *targets: str,
                  breaker: BreakerConfig | None = None, paused: str | None = None) -> tuple[Lane, Journal]:
    """A lane over a fresh journal holding one event per target, seq 1, 2, ... in that order."""
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    journal.write_batch([EventRow("scripted", "webhook.post", target, f"key{n}", None, "c", n, 1, 1,
                                  wire.encode("c", n, "webhook.post", f"key{n}", None, 1, {"n": n}), None)
                         for n, target in enumerate(targets, 1)])
    lane = Lane(connector, journal, Limiter("scripted", Rule(rate=1000, burst=10), MemoryStore()),
                RetryConfig(base=1.0, cap=1.0), Metrics(), breaker=breaker, paused=paused, clock=clock,
                rng=random.Random(7))
    return lane, journal


def once(lane: Lane) -> bool:
    """What a worker does with one pick, without the limiter's or the idle waits: False if nothing to call."""
    picked = lane._groups.pick(lane.clock())
    if picked is None:
        return False
    target, plan = picked
    try:
        asyncio.run(lane._deliver(plan))
    finally:
        lane._groups.done(target)
    return True


def targets(journal: Journal) -> list[tuple[int, str]]:
    return journal.conn.execute("SELECT seq, target FROM events ORDER BY id").fetchall()


def dead(journal: Journal) -> list[tuple[int, str, str | None]]:
    return journal.conn.execute("SELECT seq, reason, detail FROM dead_letters ORDER BY id").fetchall()


def send_all(group: list[Event], ctx: PlanContext) -> Plan:
    return Send(group, None, merged=len(group) - 1)


def test_a_moved_group_joins_its_new_target_in_ingest_order_and_goes_out_in_one_call(tmp_path: Path) -> None:
    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        return Moved("page:p") if group[0].target == "ref:k" else send_all(group, ctx)

    connector = Scripted(planner)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "ref:k", "page:p", "ref:k")
    assert once(lane)
    assert connector.sent == [[1, 2, 3]]
    assert journal.count("events") == 0 and lane.delivered == 3


def test_a_group_moved_onto_itself_is_left_for_later_and_the_next_group_is_planned(tmp_path: Path) -> None:
    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        return Moved(group[0].target) if group[0].target == "a" else send_all(group, ctx)

    connector = Scripted(planner)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "a", "b")
    assert once(lane) and not once(lane)
    assert connector.sent == [[2]] and targets(journal) == [(1, "a")]


def test_a_wait_holds_its_group_only_until_its_time_while_other_groups_go(tmp_path: Path) -> None:
    clock = Clock()

    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        if group[0].target == "a" and ctx.now < 1005.0:
            return Wait(5.0, "ref not created yet")
        return send_all(group, ctx)

    connector = Scripted(planner)
    lane, journal = scripted_lane(tmp_path, connector, clock, "a", "b")
    assert once(lane) and not once(lane)
    assert connector.sent == [[2]]
    clock.now = 1004.9
    assert not once(lane)  # blocked: the group is not even planned before its time
    clock.now = 1005.0
    assert once(lane)
    assert connector.sent == [[2], [1]] and journal.count("events") == 0


def test_a_skip_settles_part_of_a_group_and_the_rest_is_planned_at_once(tmp_path: Path) -> None:
    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        return Skip(group[:1], "identical") if group[0].seq == 1 else send_all(group, ctx)

    connector = Scripted(planner)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "t", "t", "t")
    assert once(lane)
    assert connector.sent == [[2, 3]] and journal.count("events") == 0
    assert lane.metrics.deduplicated.labels(kind="webhook.post", reason="identical")._value.get() == 1
    assert lane.delivered == 2


def test_a_dead_plan_dead_letters_its_events_and_the_same_pick_moves_on(tmp_path: Path) -> None:
    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        return Dead(group, "ref_failed", "its create died") if group[0].target == "a" else send_all(group, ctx)

    connector = Scripted(planner)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "a", "a", "b")
    assert once(lane)
    assert connector.sent == [[3]]
    assert dead(journal) == [(1, "ref_failed", "its create died"), (2, "ref_failed", "its create died")]
    assert journal.count("events") == 0


def test_items_refused_inside_a_successful_call_are_dead_lettered_and_the_rest_delivered(tmp_path: Path) -> None:
    connector = Scripted(send_all)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "t", "t", "t")
    refused = journal.group("scripted", "t")[1].id
    connector.results = [Delivered(failed={refused: ("item_failed", "NOT_FOUND: no product 9999")})]
    assert once(lane)
    assert dead(journal) == [(2, "item_failed", "NOT_FOUND: no product 9999")]
    assert journal.count("events") == 0
    assert lane.delivered == 2 and lane.breaker.state == "closed"


def test_events_a_call_covered_as_duplicates_are_counted_as_such_not_as_delivered(tmp_path: Path) -> None:
    connector = Scripted(send_all, results=[Delivered(duplicates=1)])
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "t", "t")
    assert once(lane)
    assert lane.delivered == 1 and journal.count("events") == 0
    assert lane.metrics.deduplicated.labels(kind="webhook.post", reason="duplicate")._value.get() == 1


def test_a_create_retargets_the_groups_waiting_for_its_key_and_they_go_at_once(tmp_path: Path) -> None:

    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        if group[0].target == "ref:k":
            created = ctx.ref("k")
            return Wait(60.0, "ref k not created yet") if created is None else Moved(f"page:{created}")
        return send_all(group, ctx)

    connector = Scripted(planner, results=[Delivered(refs={"k": "page-1"})],
                         retargets={"k": [("ref:k", "page:page-1")]})
    clock = Clock()
    # The update waiting for the page comes first in ingest order, the create second.
    lane, journal = scripted_lane(tmp_path, connector, clock, "ref:k", "create:k")
    assert once(lane)  # the update waits (60 s), the create goes
    assert connector.sent == [[2]] and journal.ref("scripted", "k") == "page-1"
    assert targets(journal) == [(1, "page:page-1")]
    # A late update naming the key is not held by the wait its group had before the create.
    journal.write_batch([EventRow("scripted", "webhook.post", "ref:k", None, "k", "c", 3, 1, 1,
                                  wire.encode("c", 3, "webhook.post", None, "k", 1, {"n": 3}), None)])
    assert once(lane) and once(lane)  # at once, not after the 60 s wait
    assert connector.sent == [[2], [1], [3]] and journal.count("events") == 0


def test_a_failed_call_is_retried_after_its_backoff_and_the_attempt_is_counted(tmp_path: Path) -> None:
    clock = Clock()
    connector = Scripted(send_all, results=[Retryable("http_503", "unavailable", status=503, retry_after=2.0)])
    lane, journal = scripted_lane(tmp_path, connector, clock, "t")
    assert once(lane) and not once(lane)
    assert journal.conn.execute("SELECT attempts, not_before FROM events").fetchone() == (1, 1002.0)
    clock.now = 1002.0
    assert once(lane)
    assert connector.sent == [[1], [1]] and journal.count("events") == 0


def test_failed_calls_in_a_row_open_the_breaker_and_the_lane_calls_nothing_until_a_probe(tmp_path: Path) -> None:
    clock = Clock()
    failures = [Retryable("transport", "connection reset", ambiguous=True) for _ in range(3)]
    connector = Scripted(send_all, results=list(failures))
    lane, _journal = scripted_lane(tmp_path, connector, clock, "a", "b", "c", "d",
                                  breaker=BreakerConfig(failures=3, cooldown=30.0))
    for _ in range(3):
        assert once(lane)
    assert lane.breaker.state == "open" and len(connector.sent) == 3
    idled: list[float] = []

    async def idle(at_most: float = 1.0) -> None:
        idled.append(at_most)

    lane._idle = idle  # type: ignore[method-assign]
    asyncio.run(lane._step())
    assert idled == [30.0] and len(connector.sent) == 3  # open: no call, and it sleeps until the probe
    clock.now += 30.0
    asyncio.run(lane._step())  # the probe, which succeeds
    assert lane.breaker.state == "closed" and len(connector.sent) == 4


def test_refusals_and_rate_limits_never_open_the_breaker(tmp_path: Path) -> None:
    clock = Clock()
    answers: list[Delivered | DeliveryError] = [Permanent("http_404", "gone", status=404) for _ in range(3)]
    answers += [RateLimited("http_429", "slow down", status=429, retry_after=1.0)]
    connector = Scripted(send_all, results=answers)
    lane, journal = scripted_lane(tmp_path, connector, clock, "a", "b", "c", "d",
                                  breaker=BreakerConfig(failures=2, cooldown=30.0))
    for _ in range(4):
        assert once(lane)
    assert lane.breaker.state == "closed"
    assert [reason for _, reason, _ in dead(journal)] == ["http_404"] * 3
    assert targets(journal) == [(4, "d")]  # rate-limited: kept, to be sent again


def test_a_connectors_extra_calls_are_paced_by_the_lanes_limiter(tmp_path: Path) -> None:
    class Checking(Scripted):
        async def send(self, plan: Send[None], pace: Pace) -> Delivered:
            await pace()  # a check before resending, say: one more token
            await pace()
            return await super().send(plan, pace)

    connector = Checking(send_all)
    lane, _journal = scripted_lane(tmp_path, connector, Clock(), "a")
    before = lane.limiter.tokens(1000.0)
    assert once(lane)
    assert connector.sent == [[1]] and lane.limiter.tokens(1000.0) == pytest.approx(before - 2)


class ReloadedMidCall(Scripted):
    """The old credential is refused, but a reload (SIGHUP) lands while the call is out."""

    lane_ref: Lane | None = None

    async def send(self, plan: Send[None], pace: Pace) -> Delivered:
        self.sent.append([e.seq for e in plan.events])
        if self.lane_ref is not None:
            self.lane_ref.reload_credentials()
        raise CredentialsRefused("Notion", "unauthorized", status=401)


@pytest.mark.parametrize("reload_mid_call", [False, True])
def test_a_refused_credential_pauses_the_lane_and_a_refusal_older_than_a_reload_is_retried_at_once(
        tmp_path: Path, reload_mid_call: bool) -> None:
    clock = Clock()
    connector = ReloadedMidCall(send_all)
    lane, journal = scripted_lane(tmp_path, connector, clock, "t")
    connector.lane_ref = lane if reload_mid_call else None
    assert once(lane)
    assert lane.paused_reason == "credentials refused by Notion"
    assert journal.conn.execute("SELECT attempts FROM events").fetchall() == [(0,)]  # kept, attempt not spent
    # Refused before any reload: the next try waits for the probe interval (or a reload).
    # Refused after a reload was made mid-call: that answer was about the old credential, so try now.
    expected = clock.now if reload_mid_call else clock.now + RetryConfig().credentials_probe_seconds
    assert lane._pause.probe_at == expected


# -- pause and resume, with the lane's own tasks running ------------------------------------


class CredentialOnReload(Scripted):
    """Its credential is missing at start and there after the next reload."""

    def refresh_credentials(self) -> bool:
        return True


async def turns(n: int = 20) -> None:
    """Let the event loop run `n` rounds: enough for an unpaused lane to have made its call."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_a_lane_paused_at_start_calls_nothing_until_a_reload_brings_its_credential(tmp_path: Path) -> None:
    connector = CredentialOnReload(send_all)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "a", paused="no token")

    async def scenario() -> None:
        task = asyncio.create_task(lane.run())
        lane.notify()
        await turns()
        assert connector.sent == [] and not task.done() and lane.paused_reason == "no token"
        assert lane.reload_credentials()  # changed: the lane resumes on its own
        await until(lambda: journal.count("events") == 0, "the event to be delivered")
        assert connector.sent == [[1]] and lane.paused_reason is None and lane.delivered == 1
        assert await lane.stop(1.0) == 0
        await task

    asyncio.run(scenario())


def test_a_paused_lane_stops_at_once_with_its_events_kept(tmp_path: Path) -> None:
    connector = CredentialOnReload(send_all)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "a", paused="no token")

    async def scenario() -> None:
        task = asyncio.create_task(lane.run())
        await turns()
        assert await lane.stop(1.0) == 0
        await asyncio.wait_for(task, 10)  # the deadline fails a hang; it measures nothing

    asyncio.run(scenario())
    assert connector.sent == [] and journal.count("events") == 1


def test_pause_holds_a_running_lanes_workers_and_resume_lets_them_call(tmp_path: Path) -> None:
    connector = Scripted(send_all)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "a")

    async def scenario() -> None:
        task = asyncio.create_task(lane.run())
        await until(lambda: journal.count("events") == 0, "the first event to be delivered")
        lane.pause("maintenance")
        journal.write_batch([EventRow("scripted", "webhook.post", "b", "key2", None, "c", 2, 1, 1,
                                      wire.encode("c", 2, "webhook.post", "key2", None, 1, {"n": 2}), None)])
        lane.notify()
        await turns()
        assert connector.sent == [[1]] and lane.paused_reason == "maintenance"
        lane.resume()
        await until(lambda: journal.count("events") == 0, "the second event to be delivered")
        assert connector.sent == [[1], [2]] and lane.paused_reason is None
        await lane.stop(1.0)
        await task

    asyncio.run(scenario())
