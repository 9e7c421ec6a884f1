"""Quotas shared in Redis: the rule against both stores, then several sidecar processes against one
Notion simulator over a real redis-server, with and without Redis going away in the middle."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import sidecar.delivery
from client import Client
from sidecar.config import RedisConfig, from_dict
from sidecar.delivery.limiter import (
    BEAT,
    LIMITED,
    RESERVE,
    SUCCESS,
    ApiQuota,
    Grant,
    MemoryStore,
    Op,
    Rule,
    Store,
    quota_key,
)
from sidecar.delivery.redis_store import RETRY_SECONDS, RedisStore, script_source
from sidecar.errors import ConfigError
from standins.notion import NotionSimulator

from ..support import RedisServer, SidecarProcess, drained, free_port, sidecar_config, wait_until

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")]

KEY = quota_key("notion", "secret_token_for_tests")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def redis_store(server: RedisServer, **kwargs: Any) -> RedisStore:
    return RedisStore(RedisConfig(url=server.url, timeout=0.2), **kwargs)


# -- the rule, against both stores ----------------------------------------------------

Run = Callable[[Rule, Op], Grant]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.e2e)])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Apply one Op to a fresh quota: in memory at a fixed time, or in a real Redis on its clock."""
    if request.param == "memory":
        store = MemoryStore()
        yield lambda rule, op: store.apply(KEY, rule, 100.0, op)
        return
    with RedisServer() as server:
        loop = asyncio.new_event_loop()
        shared = redis_store(server)
        yield lambda rule, op: loop.run_until_complete(shared.run(KEY, rule, time.time(), op))
        loop.run_until_complete(shared.aclose())
        loop.close()


# Ops run back to back take a few ms on Redis's clock: waits agree within this.
CLOSE = 0.05


def test_reservations_are_spaced_at_the_rate_after_the_burst(run: Run) -> None:
    rule = Rule(rate=10, burst=2)
    waits = [run(rule, Op(RESERVE)).wait for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3], abs=CLOSE)


def test_a_429_pauses_and_halves_once_however_many_calls_come_back_429(run: Run) -> None:
    rule = Rule(rate=4, burst=1, recovery_step=0.25)
    for _ in range(3):  # three calls in flight all answered 429
        grant = run(rule, Op(LIMITED, retry_after=2.0))
    assert (grant.rate, grant.source) == (2.0, "backed off")
    assert run(rule, Op(RESERVE)).wait == pytest.approx(2.0, abs=CLOSE)
    for _ in range(4):
        grant = run(rule, Op(SUCCESS))
    assert (grant.rate, grant.source) == (4.0, "configured")


def test_a_quota_the_api_states_is_adopted_up_to_the_configured_one(run: Run) -> None:
    rule = Rule(rate=2, burst=1)
    grant = run(rule, Op(SUCCESS, told=ApiQuota(rate=1.0, burst=1.0, remaining=0.0)))
    assert (grant.rate, grant.source) == (1.0, "learned")
    assert run(rule, Op(RESERVE)).wait == pytest.approx(1.0, abs=CLOSE)  # their bucket is empty: wait a refill
    grant = run(rule, Op(SUCCESS, told=ApiQuota(rate=50.0, burst=50.0, remaining=49.0)))
    assert (grant.rate, grant.source) == (2.0, "configured")  # the configured rate is the ceiling


# -- Redis itself ------------------------------------------------------------------------

@pytest.mark.e2e
def test_two_stores_share_one_quota_and_keys_hold_no_credential(redis_server: RedisServer) -> None:
    import redis

    token = "secret_token_that_must_not_leak_1234"
    rule = Rule(rate=5, burst=1)

    async def scenario() -> list[float]:
        a, b = redis_store(redis_server), redis_store(redis_server)
        key = quota_key("notion", token)
        waits = [(await s.run(key, rule, 0.0, Op(RESERVE))).wait for s in (a, b, a, b)]
        assert a.sharing[key] == b.sharing[key] == 2
        await a.aclose()
        await b.aclose()
        return waits

    waits = asyncio.run(scenario())
    assert waits == pytest.approx([0.0, 0.2, 0.4, 0.6], abs=CLOSE)  # one bucket for both
    raw = redis.Redis(port=redis_server.port)
    dump = b""
    for k in raw.keys("*"):
        values = raw.hvals(k) if raw.type(k) == b"hash" else raw.zrange(k, 0, -1)
        dump += b" ".join([k, *values]) + b"\n"
        assert 0 < raw.ttl(k) <= 600  # an idle quota leaves nothing behind
    assert token.encode() not in dump and b"trading-sidecar:quota:notion:" in dump
    raw.close()


@pytest.mark.e2e
def test_redis_away_falls_back_to_a_share_of_the_rate_then_comes_back(redis_server: RedisServer) -> None:
    now = [0.0]
    rule = Rule(rate=6, burst=1)

    async def scenario() -> None:
        store = redis_store(redis_server, clock=lambda: now[0])
        other = redis_store(redis_server)
        for s in (other, store):  # store's last answer counts both
            await s.run(KEY, rule, 0.0, Op(BEAT))
        assert store.sharing[KEY] == 2 and store.mode(KEY) == "redis"
        assert store.sidecars_sharing(KEY) == 2 and store.problem() is None
        redis_server.kill()
        # A refused connection answers with the local fallback: the deadline fails a hang, it measures nothing.
        waits = [(await asyncio.wait_for(store.run(KEY, rule, 500.0, Op(RESERVE)), 30)).wait for _ in range(3)]
        assert waits == pytest.approx([0.0, 1 / 3, 2 / 3])  # alone at 6 ÷ 2 sidecars
        assert store.mode(KEY) == "redis-away ÷2" and store.episodes == 1
        problem = store.problem()
        assert problem is not None and problem.startswith("limiter: Redis unreachable for 0 s (")
        assert problem.endswith("); lanes go on alone at rate ÷ sidecars sharing")
        redis_server.start()  # same port, empty: the script and the quota come back on first use
        await store.run(KEY, rule, 500.0, Op(RESERVE))
        assert store.mode(KEY) == "redis-away ÷2"  # not tried again within RETRY_SECONDS
        now[0] += RETRY_SECONDS
        grant = await store.run(KEY, rule, 500.0, Op(RESERVE))
        assert store.mode(KEY) == "redis" and grant.wait == 0.0 and store.episodes == 1
        assert store.problem() is None
        await store.aclose()
        await other.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_either_store_answers_the_whole_protocol_and_aclose_ends_its_background_work(
        request: pytest.FixtureRequest, kind: str) -> None:
    async def scenario() -> None:
        store: Store = MemoryStore() if kind == "memory" else redis_store(request.getfixturevalue("redis_server"))
        store.start()
        assert (await store.run(KEY, Rule(rate=5, burst=1), 0.0, Op(RESERVE))).wait == 0.0
        assert store.mode(KEY) == kind and store.sidecars_sharing(KEY) == 1
        assert store.problem() is None and store.episodes == 0
        await store.aclose()
        # Redis's heartbeats were a task of their own: none is left behind.
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


def test_the_lua_script_is_package_data_beside_its_store() -> None:
    # setup.cfg's [options.package_data] puts it in the wheel; the store reads it with importlib.resources.
    assert script_source() == (Path(sidecar.delivery.__file__).parent / "quota.lua").read_text(encoding="utf-8")
    assert "redis.call('TIME')" in script_source()


def test_redis_config_is_checked_and_keeps_passwords_out_of_the_file() -> None:
    assert from_dict({"redis": {"url": "rediss://cache.internal:6380/2"}}).redis.url.startswith("rediss://")
    with pytest.raises(ConfigError, match="REDIS_PASSWORD"):
        from_dict({"redis": {"url": "redis://:hunter2@10.0.0.5:6379/0"}})
    with pytest.raises(ConfigError, match="redis://"):
        from_dict({"redis": {"url": "http://10.0.0.5"}})
    with pytest.raises(ConfigError, match="timeout"):
        from_dict({"redis": {"url": "redis://10.0.0.5", "timeout": 5.0}})


# -- several sidecar processes, one Notion quota -----------------------------------------

SIM_RATE = 3
SIM_BURST = 3
PER_SIDECAR = 40


def create_body(db: str, name: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": name}}]}}}


def start_sidecars(tmp: Path, sim: NotionSimulator, redis_url: str, n: int = 3) -> list[SidecarProcess]:
    sidecars = []
    for i in range(n):
        d = tmp / f"s{i}"
        d.mkdir()
        cfg = sidecar_config(d, notion={"base_url": sim.url + "/v1", "rate_per_second": float(SIM_RATE),
                                        "burst": 1.0, "timeout": 5.0},
                             # A loaded test machine can take longer than the 50 ms default to answer.
                             redis={"url": redis_url, "timeout": 0.25},
                             metrics={"address": f"127.0.0.1:{free_port()}"})
        sidecars.append(SidecarProcess(d, config=cfg, env={"NOTION_TOKEN": sim.token}).start())
    return sidecars


def emit_creates(sidecars: list[SidecarProcess], db: str) -> list[Client]:
    clients = []
    for i, sc in enumerate(sidecars):
        with Client(sc.endpoint, strict=True) as client:
            for n in range(PER_SIDECAR):
                client.emit("notion.page.create", create_body(db, f"s{i}-{n}"), key=f"s{i}-{n}")
        clients.append(client)
    return clients


def assert_every_page_once(sim: NotionSimulator, db: str, sidecars: int) -> None:
    keys = sorted(p["properties"]["Idempotency Key"]["rich_text"][0]["plain_text"] for p in sim.pages())
    assert keys == sorted(f"s{i}-{n}" for i in range(sidecars) for n in range(PER_SIDECAR))


def status(sc: SidecarProcess) -> dict[str, Any]:
    return dict(orjson.loads(sc.get("/status")[1]))


@pytest.mark.e2e
def test_three_sidecars_share_one_notion_quota(short_tmp: Path, redis_server: RedisServer) -> None:
    with NotionSimulator(rate_per_second=SIM_RATE, burst=SIM_BURST) as sim:
        db = sim.create_database(title="T", properties={"Name": "title", "Idempotency Key": "rich_text"})
        sidecars = start_sidecars(short_tmp, sim, redis_server.url)
        clients = emit_creates(sidecars, db)
        wait_until(lambda: len(sim.pages()) == 3 * PER_SIDECAR, timeout=150, what="120 pages")
        for sc, client in zip(sidecars, clients, strict=True):
            wait_until(lambda sc=sc, client=client: drained(sc, client), timeout=20, what="every journal to drain")
        lanes = [status(sc)["lanes"]["notion"] for sc in sidecars]
        for sc in sidecars:
            assert sc.stop() == 0
        stats = sim.stats()
        records = sim.requests
    assert_every_page_once(sim, db, 3)
    assert stats["rate_limited"] <= 3, stats
    assert stats["max_in_1s"] <= SIM_RATE + SIM_BURST, stats
    served = [r.time for r in records if 200 <= r.status < 300]
    busy = max(served) - min(served)
    assert len(served) / (SIM_RATE * busy) >= 0.9, (len(served), busy)
    assert all(lane["store"] == "redis" and lane["sidecars_sharing"] == 3 for lane in lanes), lanes


@pytest.mark.e2e
def test_redis_killed_mid_run_loses_nothing_and_sharing_resumes(short_tmp: Path, redis_server: RedisServer) -> None:
    with NotionSimulator(rate_per_second=SIM_RATE, burst=SIM_BURST) as sim:
        db = sim.create_database(title="T", properties={"Name": "title", "Idempotency Key": "rich_text"})
        sidecars = start_sidecars(short_tmp, sim, redis_server.url)
        clients = emit_creates(sidecars, db)
        sim.wait_until(lambda: len(sim.requests) > 0, timeout=20)
        time.sleep(5)  # the scenario: Redis dies 5 s into the run
        redis_server.kill()
        away = time.monotonic()
        check = wait_until(lambda: (c := sidecars[0].cli("check")).returncode == 1 and c, timeout=8,
                           what="check to say degraded while Redis is away")
        assert "Redis unreachable" in check.stdout
        for sc in sidecars:
            wait_until(lambda sc=sc: status(sc)["lanes"]["notion"]["store"] == "redis-away ÷3", timeout=5,
                       what="every sidecar to go on alone at a third of the rate")
        time.sleep(max(0.0, away + 10 - time.monotonic()))
        redis_server.start()
        for sc in sidecars:
            wait_until(lambda sc=sc: status(sc)["lanes"]["notion"]["store"] == "redis", timeout=20,
                       what="each sidecar to share the quota again")
        wait_until(lambda: len(sim.pages()) == 3 * PER_SIDECAR, timeout=150, what="120 pages")
        for sc, client in zip(sidecars, clients, strict=True):
            wait_until(lambda sc=sc, client=client: drained(sc, client), timeout=20, what="every journal to drain")
        assert sidecars[0].cli("check").returncode == 0
        for sc in sidecars:
            metrics = sc.get("/metrics")[1].decode()
            outages = sc.log_text().count("Redis unreachable")
            assert sc.stop() == 0
            # Logged once per outage, and counted: at least the one we caused.
            assert outages >= 1 and f"sidecar_limiter_store_fallbacks_total {outages:.1f}" in metrics
    assert_every_page_once(sim, db, 3)
