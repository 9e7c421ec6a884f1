"""Naver as its documents describe it, over real HTTP to the simulator, in process:
the multi-update's whole-call refusals found by halving, 308 PERMANENT_REDIRECT,
the hourly quota (a lane with a clock the test moves) and a wrong base_url."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from client import wire
from sidecar.config import NaverConfig, RetryConfig
from sidecar.connectors.base import Dead, Delivered, Pace, Send, unpaced
from sidecar.connectors.naver import REFUSED_ALONE, NaverConnector, UpdateProducts, quota_reset_in
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Limiter, MemoryStore, Rule
from sidecar.errors import EndpointNotFound, Permanent, Retryable
from sidecar.journal.store import EventRow, Journal
from sidecar.ops.metrics import Metrics
from standins.base import Fault
from standins.naver import MULTI_UPDATE_PATH, TOKEN_PATH, NaverSimulator
from standins.webhook import WebhookReceiver

from ..support import journaled

pytestmark = pytest.mark.timeout(60)

UPDATE = "naver.product.update"
HOUR = 3600.0
E = TypeVar("E", bound=BaseException)
START = 1_800_000_000.0 + 3000.0  # 50 minutes into an hour (1_800_000_000 is a whole hour)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def connector(sim: NaverSimulator, clock: Callable[[], float] | None = None, **cfg: Any) -> NaverConnector:
    settings = NaverConfig(base_url=sim.url + "/external", timeout=5.0, **cfg)
    if clock is None:
        return NaverConnector(settings, sim.client_id, sim.client_secret)
    return NaverConnector(settings, sim.client_id, sim.client_secret, clock=clock, wall_clock=clock)


def updates(*products: int) -> Send[UpdateProducts]:
    """A planned multi-update of one stock change per product, as `plan` makes it."""
    events = [journaled(n, "naver", UPDATE, "products", {"originProductNo": no, "stockQuantity": n})
              for n, no in enumerate(products, 1)]
    items = [{"originProductNo": no, "multiUpdateTypes": ["STOCK"], "stockQuantity": n}
             for n, no in enumerate(products, 1)]
    return Send(events, UpdateProducts({"multiProductUpdateRequestVos": items}))


def send(conn: NaverConnector, plan: Send[UpdateProducts], pace: Pace = unpaced) -> Delivered:
    """One `send` on its own event loop; the connector is closed after it."""
    async def go() -> Delivered:
        try:
            return await conn.send(plan, pace)
        finally:
            await conn.aclose()
    return asyncio.run(go())


def send_refused(conn: NaverConnector, plan: Send[UpdateProducts], expected: type[E], pace: Pace = unpaced) -> E:
    with pytest.raises(expected) as caught:
        send(conn, plan, pace)
    return caught.value


def calls(sim: NaverSimulator, path: str, status: int | None = None) -> int:
    return sum(1 for r in sim.requests if r.path == path and (status is None or r.status == status))


# -- the answers --------------------------------------------------------------------------------


def test_the_documented_200_with_empty_data_applies_every_product() -> None:
    with NaverSimulator(rate_per_second=None) as sim:
        for no in (1, 2, 3):
            sim.add_product(no, stock=0)
        delivered = send(connector(sim), updates(1, 2, 3))
        answer = sim.requests[-1]
        assert answer.path == MULTI_UPDATE_PATH and answer.status == 200
        assert delivered.failed == {}
        assert [sim.product(no)["stockQuantity"] for no in (1, 2, 3)] == [1, 2, 3]


def test_one_unknown_product_among_50_is_found_by_halving_and_dies_alone_with_navers_message() -> None:
    with NaverSimulator(rate_per_second=None) as sim:
        products = [1000 + n for n in range(50)]
        missing = products[37]
        for no in products:
            if no != missing:
                sim.add_product(no, stock=0)
        conn = connector(sim)
        paced: list[int] = []

        async def pace() -> None:  # the lane's limiter: counts the extra calls it was asked for
            paced.append(calls(sim, MULTI_UPDATE_PATH))

        plan = updates(*products)
        delivered = send(conn, plan, pace)
        culprit = plan.events[37]
        assert list(delivered.failed) == [culprit.id]
        reason, detail = delivered.failed[culprit.id]
        answer = orjson.loads(detail)  # Naver's own error body, as it answered the product alone
        assert reason == REFUSED_ALONE and answer["code"] == "NOT_FOUND" and str(missing) in answer["message"]
        assert all(sim.product(no)["stockQuantity"] == n for n, no in enumerate(products, 1) if no != missing)
        assert all(sim.product(no)["updates"] == 1 for no in products if no != missing)  # each applied once
        made = calls(sim, MULTI_UPDATE_PATH)
        # Product 37 is in the halves of 25, 13, 6, 3, then alone: two calls a level after the first
        # (the half refused and the half applied), each after a token of the lane's limiter.
        assert made == 1 + 2 * 5 and len(paced) == made - 1 and paced == list(range(1, made))
        assert calls(sim, MULTI_UPDATE_PATH, 404) == 6


def test_a_split_cut_short_by_a_failure_dead_letters_what_it_found_at_the_next_plan() -> None:
    with NaverSimulator(rate_per_second=None) as sim:
        for no in (1, 2, 4):
            sim.add_product(no)
        conn = connector(sim)
        plan = updates(1, 2, 3, 4)
        paced = 0

        async def pace() -> None:
            # Calls: all four (404), [1, 2] (200), [3, 4] (404), [3] alone (404); then [4] meets a 503.
            nonlocal paced
            paced += 1
            if paced == 4:
                sim.inject(Fault(status=503, path_prefix=MULTI_UPDATE_PATH))

        assert send_refused(conn, plan, Retryable, pace).status == 503
        again = conn.plan(plan.events, _Ctx())
        assert isinstance(again, Dead) and again.events == [plan.events[2]] and again.reason == REFUSED_ALONE
        assert orjson.loads(again.detail)["code"] == "NOT_FOUND"
        rest = conn.plan([e for e in plan.events if e is not plan.events[2]], _Ctx())
        assert isinstance(rest, Send) and rest.events == [plan.events[0], plan.events[1], plan.events[3]]


class _Ctx:
    now = 0.0

    def ref(self, key: str) -> str | None:
        return None

    def has_target(self, target: str) -> bool:
        return False

    def dead_key(self, kind: str, key: str) -> str | None:
        return None


# -- 308 PERMANENT_REDIRECT ---------------------------------------------------------------------


def test_a_308_on_either_endpoint_is_followed_with_the_same_method_and_remembered(
        caplog: pytest.LogCaptureFixture) -> None:
    with NaverSimulator(rate_per_second=None) as sim:
        sim.add_product(7, stock=0)
        sim.move(TOKEN_PATH, "/external/v2/oauth2/token")
        sim.move(MULTI_UPDATE_PATH, "/external/v2/products/origin-products/multi-update")
        conn = connector(sim)

        async def go() -> None:
            try:
                await conn.send(updates(7), unpaced)
                conn._token = None  # the next call asks for a token again: at the new place
                await conn.send(updates(7, 7), unpaced)
            finally:
                await conn.aclose()

        with caplog.at_level(logging.WARNING, logger="sidecar.http"):
            asyncio.run(go())
        assert [(r.method, r.path, r.status) for r in sim.requests] == [
            ("POST", TOKEN_PATH, 308), ("POST", "/external/v2/oauth2/token", 200),
            ("PATCH", MULTI_UPDATE_PATH, 308), ("PATCH", "/external/v2/products/origin-products/multi-update", 200),
            ("POST", "/external/v2/oauth2/token", 200),
            ("PATCH", "/external/v2/products/origin-products/multi-update", 200),
        ]
        assert sim.product(7)["stockQuantity"] == 2
        moves = [r.getMessage() for r in caplog.records if "308" in r.getMessage()]
        assert len(moves) == 2 and all("[naver] base_url" in m for m in moves)  # once per moved URL


def test_a_308_to_another_host_is_not_followed() -> None:
    with NaverSimulator(rate_per_second=None) as sim, WebhookReceiver() as elsewhere:
        sim.add_product(7)
        sim.inject(Fault(status=308, headers={"Location": elsewhere.url + "/steal"}, path_prefix=MULTI_UPDATE_PATH))
        refused = send_refused(connector(sim), updates(7), Permanent)
        assert refused.reason == "redirect" and elsewhere.url in refused.detail
        assert elsewhere.requests == []


# -- a wrong base_url ---------------------------------------------------------------------------


def test_a_base_url_without_external_is_reported_as_a_wrong_url_not_refused_credentials() -> None:
    with NaverSimulator(rate_per_second=None) as sim:
        conn = NaverConnector(NaverConfig(base_url=sim.url, timeout=5.0), sim.client_id, sim.client_secret)
        wrong = send_refused(conn, updates(7), EndpointNotFound)
        assert wrong.pause_reason == f"Naver has no endpoint at {sim.url}/v1/oauth2/token: check [naver] base_url"
        assert "credentials" not in wrong.pause_reason and wrong.status == 404


# -- the hourly quota ---------------------------------------------------------------------------


@pytest.mark.parametrize("period, now, wait", [
    ("HOURS", START, 600.0),
    ("HOURS", 1_800_000_000.0, HOUR),            # on the hour: the whole next hour
    ("hours", START, 600.0),
    ("MINUTES", START + 10.5, 49.5),
    ("SECONDS", START + 0.25, 0.75),
    ("DAYS", 1_799_971_200.0, 15 * HOUR),          # 00:00 UTC: the day ends at midnight in Korea, 15:00 UTC
    ("ROUND", START, None),                        # a subscription round: no clock to read
    ("", START, None),
])
def test_quota_reset_in_reads_the_period_header(period: str, now: float, wait: float | None) -> None:
    response = httpx.Response(429, headers={"GNCP-GW-Quota-Period": period} if period else {})
    assert quota_reset_in(response, now) == (None if wait is None else pytest.approx(wait))


def test_an_hourly_quota_answer_pauses_the_lane_until_the_reset_the_headers_give(tmp_path: Path) -> None:
    clock = Clock(START)
    with NaverSimulator(rate_per_second=None, clock=clock) as sim:
        sim.add_product(1, stock=0)
        sim.set_quota(1, "HOURS")
        journal = Journal.open(tmp_path, synchronous="NORMAL")
        conn = connector(sim, clock)
        lane = Lane(conn, journal, Limiter("naver", Rule(rate=2.0, burst=1.0), MemoryStore()),
                    RetryConfig(base=1.0, cap=1.0), Metrics(), clock=clock, rng=random.Random(7))

        def emit(seq: int, stock: int) -> None:
            journal.write_batch([EventRow("naver", UPDATE, "products", None, None, "c", seq, 1, 1, wire.encode(
                "c", seq, UPDATE, None, None, 1, {"originProductNo": 1, "stockQuantity": stock}), None)])

        async def once() -> bool:
            picked = lane._groups.pick(clock.now)
            if picked is None:
                return False
            try:
                await lane._deliver(picked[1])
            finally:
                lane._groups.done(picked[0])
            return True

        async def go() -> None:
            try:
                emit(1, 5)
                assert await once()  # the hour's one call
                emit(2, 6)
                assert await once()  # 429 GW.QUOTA_LIMIT, GNCP-GW-Quota-Period: HOURS
                reset = START + 600.0
                (not_before,) = journal.conn.execute("SELECT not_before FROM events").fetchone()
                assert not_before == pytest.approx(reset)
                # Every call of the lane waits for the reset, not only this group's.
                assert await lane.limiter.reserve(clock.now) == pytest.approx(600.0)
                clock.now = reset - 1.0
                assert not await once()
                clock.now = reset
                assert await once()
            finally:
                await conn.aclose()

        asyncio.run(go())
        assert [r.status for r in sim.requests if r.path == MULTI_UPDATE_PATH] == [200, 429, 200]
        assert sim.product(1)["stockQuantity"] == 6 and journal.count("events") == 0
        quota = lane.metrics.rate_limited.labels(lane="naver", reason="GW.QUOTA_LIMIT")
        assert quota._value.get() == 1
        assert journal.conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)
