"""The Notion connector's plans, from journaled events to calls, without network (over HTTP:
e2e/test_notion_e2e.py)."""

from __future__ import annotations

import orjson
import pytest

from sidecar.config import NotionConfig
from sidecar.connectors.base import Dead, Moved, Send, Skip, Wait
from sidecar.connectors.notion import AppendBlocks, NotionConnector, UpdatePage
from sidecar.journal.store import Event

from ..support import FakePlanContext, journaled

pytestmark = pytest.mark.timeout(30)


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


@pytest.mark.parametrize("size", [300, 2_000])
def test_notion_merges_updates_up_to_the_request_size_and_no_further(size: int) -> None:
    """The merge is measured only when it might not fit: what it takes must fit, one more must not."""
    limit = 20_000
    conn = NotionConnector(NotionConfig(max_request_bytes=limit), "t")
    hot = [_event(n, "notion.page.update", "update:p", {"properties": {"Price": {"number": n}}}) for n in range(500)]
    wide = [_event(500 + n, "notion.page.update", "update:p", {"properties": {f"P{n}": "x" * size}})
            for n in range(100)]
    plan = conn.plan(hot + wide, FakePlanContext())
    assert isinstance(plan, Send) and isinstance(plan.request, UpdatePage)
    taken = len(plan.events)
    assert 500 < taken < 600  # every hot update, then wide ones until the next would not fit
    assert len(orjson.dumps(plan.request.body)) <= limit
    one_more = {**plan.request.body["properties"], **wide[taken - 500].payload["properties"]}
    assert len(orjson.dumps({"properties": one_more})) > limit - 100
    assert plan.request.body["properties"]["Price"] == {"number": 499}
