"""Pure pieces with an injected clock: backoff, Retry-After, limiter, config, planning, reject sampling."""

from __future__ import annotations

import asyncio
import random
from email.utils import formatdate
from pathlib import Path

import pytest

from sidecar.config import ConfigError, NotionConfig, load_config
from sidecar.connectors.base import Dead, Moved, Send, Skip, Wait
from sidecar.connectors.notion import AppendBlocks, NotionConnector, UpdatePage
from sidecar.delivery.backoff import full_jitter, parse_retry_after, retry_delay
from sidecar.delivery.limiter import Limiter, MemoryStore, Rule
from sidecar.ingest.rejects import Sampler, Throttle
from sidecar.journal.store import Event

from .support import FakePlanContext, journaled

pytestmark = pytest.mark.timeout(30)


def test_full_jitter_stays_under_the_capped_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        samples = [full_jitter(attempt, base=0.5, cap=10.0, rng=rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling / 2  # spread over the whole range, not a constant


@pytest.mark.parametrize("header, expected", [
    ("3", 3.0), (" 10 ", 10.0), ("0", 0.0), ("", None), (None, None), ("soon", None),
    (formatdate(1_000_030, usegmt=True), 30.0), (formatdate(999_000, usegmt=True), 0.0),
])
def test_retry_after_in_seconds_or_http_date(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1_000_000) == expected


def test_retry_delay_never_shorter_than_retry_after() -> None:
    assert retry_delay(1, 5.0, base=0.1, cap=1.0, rng=random.Random(1)) == 5.0


def test_token_bucket_spaces_calls_at_the_rate_after_the_burst() -> None:
    limiter = Limiter("t", Rule(rate=3, burst=2), MemoryStore())
    now = 100.0
    waits = [asyncio.run(limiter.reserve(now)) for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert limiter.view(now)["store"] == "memory" and limiter.tokens(now + 100) == 2  # the burst back, no more


def test_rate_limit_pauses_and_slows_then_recovers() -> None:
    limiter = Limiter("t", Rule(rate=4, burst=1, recovery_step=0.25), MemoryStore())
    asyncio.run(limiter.on_rate_limited(2.0, None, 10.0))
    assert limiter.rate == 2.0 and limiter.view(12.0)["rate_source"] == "backed off"
    assert asyncio.run(limiter.reserve(10.0)) == pytest.approx(2.0)
    for _ in range(10):
        asyncio.run(limiter.on_success(None, 12.0))
    assert limiter.rate == 4.0 and limiter.view(12.0)["rate_source"] == "configured"
    for n in range(10):
        asyncio.run(limiter.on_rate_limited(None, None, 20.0 + 20 * n))
    assert limiter.rate == pytest.approx(0.4)  # floor: min_fraction of the rule


def test_config_defaults_and_strict_keys(tmp_path: Path) -> None:
    cfg = load_config(None)
    assert cfg.notion.version == "2025-09-03"  # as the official SDKs
    assert cfg.notion.rate_per_second == 3.0
    assert cfg.notion.token_env == "NOTION_TOKEN"
    assert cfg.notion.idempotency_property == "Idempotency Key"
    path = tmp_path / "c.toml"
    path.write_text('[notion]\nrate_per_second = 2\nbase_url = "http://x/v1"\n[journal]\ndir = "/tmp/j"\n')
    cfg = load_config(path)
    assert cfg.notion.rate_per_second == 2.0 and cfg.journal.dir == "/tmp/j"
    path.write_text("[notion]\nrate_per_secnod = 2\n")
    with pytest.raises(ConfigError, match="rate_per_secnod"):
        load_config(path)
    path.write_text('[notion]\nrate_per_second = "fast"\n')
    with pytest.raises(ConfigError, match="rate_per_second"):
        load_config(path)


def _event(n: int, kind: str, target: str, payload: dict, key: str | None = None) -> Event:
    return journaled(n, "notion", kind, target, payload, key=key, received_ns=int(999e9))


def test_notion_plans_merge_updates_per_property_in_order() -> None:
    conn = NotionConnector(NotionConfig(), "t")
    group = [
        _event(1, "notion.page.update", "update:p", {"page_id": "p", "properties": {"A": 1, "B": 1}}),
        _event(2, "notion.page.update", "update:p", {"page_id": "p", "properties": {"A": 2}, "archived": False}),
        _event(3, "notion.page.update", "update:p", {"page_id": "p", "properties": {"C": 3}}),
    ]
    plan = conn.plan(group, FakePlanContext())
    assert isinstance(plan, Send) and plan.merged == 2
    assert plan.request == UpdatePage("p", {"properties": {"A": 2, "B": 1, "C": 3}, "archived": False})


def test_notion_plans_appends_in_requests_of_at_most_100_children() -> None:
    conn = NotionConnector(NotionConfig(), "t")
    group = [_event(n, "notion.blocks.append", "append:b", {"block_id": "b", "children": [{"n": n}] * 30})
             for n in range(5)]
    plan = conn.plan(group, FakePlanContext())
    assert isinstance(plan, Send)
    assert [e.id for e in plan.events] == [0, 1, 2]
    assert isinstance(plan.request, AppendBlocks) and len(plan.request.body["children"]) == 90


def test_notion_refs_wait_resolve_or_die() -> None:
    conn = NotionConnector(NotionConfig(), "t", ref_wait=60)
    group = [_event(1, "notion.page.update", "update:ref:k", {"properties": {"A": 1}})]
    assert isinstance(conn.plan(group, FakePlanContext(pending={"create:k"})), Wait)
    assert isinstance(conn.plan(group, FakePlanContext()), Wait)  # unknown yet: wait a while
    assert isinstance(conn.plan(group, FakePlanContext(now=2000.0)), Dead)  # ...but not forever
    dead = conn.plan(group, FakePlanContext(dead={"k": "http_404: object_not_found"}))
    assert isinstance(dead, Dead) and dead.reason == "ref_failed"
    moved = conn.plan(group, FakePlanContext(refs={"k": "page-1"}))
    assert isinstance(moved, Moved) and moved.target == "update:page-1"  # joins the page's own group
    create = [_event(2, "notion.page.create", "create:k", {"parent": {"database_id": "d"}}, key="k")]
    assert isinstance(conn.plan(create, FakePlanContext(refs={"k": "page-1"})), Skip)


def test_notion_resends_a_possibly_applied_append_batch_unchanged() -> None:
    conn = NotionConnector(NotionConfig(), "t")
    group = [_event(n, "notion.blocks.append", "append:b", {"block_id": "b", "children": [{"n": n}]})
             for n in range(4)]
    group[0].unsure = group[1].unsure = 1  # these two went out together and the answer was lost
    plan = conn.plan(group, FakePlanContext())
    assert isinstance(plan, Send) and [e.id for e in plan.events] == [0, 1]


def test_reject_sample_keeps_a_limit_per_reason_in_any_window() -> None:
    sampler = Sampler(limit=3, window=60.0)
    assert [sampler.keep("bad_json", now=t) for t in (0.0, 1.0, 2.0, 3.0, 59.0)] == [True, True, True, False, False]
    assert sampler.keep("too_large", now=3.0)  # each reason has its own
    assert sampler.keep("bad_json", now=60.0)  # the one kept at 0 has left the window
    assert not sampler.keep("bad_json", now=60.5)  # ...but those at 1 and 2 have not
    assert [sampler.keep("bad_json", now=t) for t in (61.0, 62.0)] == [True, True]


def test_reject_log_says_once_an_interval_how_much_it_held_back() -> None:
    throttle = Throttle(interval=60.0)
    assert throttle.due("bad_json", now=0.0, count=5) == 0
    assert throttle.due("bad_json", now=1.0, count=1000) is None
    assert throttle.due("too_large", now=1.0) == 0  # each reason has its own
    assert throttle.due("bad_json", now=59.9) is None
    assert throttle.due("bad_json", now=60.0, count=2) == 1001
    assert throttle.due("bad_json", now=120.0) == 0
