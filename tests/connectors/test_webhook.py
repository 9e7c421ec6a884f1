"""Webhooks without network: one lane per webhook, routing, plans."""

from __future__ import annotations

import pytest

from client import wire
from sidecar.config import WebhookConfig, from_dict
from sidecar.connectors.base import Send, Skip
from sidecar.connectors.webhook import WebhookConnector, build
from sidecar.errors import Reject
from sidecar.journal.store import Event

from ..support import FakePlanContext, journaled

pytestmark = pytest.mark.timeout(120)

POST = "webhook.post"


def _envelope(ref: str | None) -> wire.Envelope:
    return wire.decode(wire.encode("c", 1, POST, None, ref, 0, {"text": "hi"}))


def _event(n: int, key: str | None) -> Event:
    return journaled(n, "webhook.alerts", POST, "alerts", {"n": n}, key=key, ref="alerts")


def test_one_lane_per_configured_webhook() -> None:
    assert build(from_dict({})) == []
    specs = build(from_dict({"webhooks": {"alerts": {"url": "http://a", "rate_per_second": 5},
                                          "trades": {"url": "http://t", "burst": 3}}}))
    assert [(s.connector.lane, s.rule.rate, s.rule.burst) for s in specs] == [
        ("webhook.alerts", 5.0, 1.0), ("webhook.trades", 1.0, 3.0)]


def test_route_takes_only_its_own_webhook() -> None:
    conn = WebhookConnector("alerts", WebhookConfig(url="http://a"))
    assert conn.accepts(_envelope("alerts")) and conn.route(_envelope("alerts"), []) == "alerts"
    # With one webhook configured ingest does not ask accepts(): route() refuses for it.
    for ref in ("trades", None):
        assert not conn.accepts(_envelope(ref))
        with pytest.raises(Reject) as caught:
            conn.route(_envelope(ref), [])
        assert caught.value.reason == "unknown_target"
    with pytest.raises(Reject, match="no blob"):
        conn.route(_envelope("alerts"), [b"x"])


def test_plan_posts_one_at_a_time_and_skips_delivered_keys() -> None:
    conn = WebhookConnector("alerts", WebhookConfig(url="http://a"))
    group = [_event(1, "k1"), _event(2, None), _event(3, "k1")]
    plan = conn.plan(group, FakePlanContext())
    assert isinstance(plan, Send) and [e.id for e in plan.events] == [1] and plan.merged == 0
    skip = conn.plan(group, FakePlanContext(refs={"k1": "delivered"}))
    assert isinstance(skip, Skip) and [e.id for e in skip.events] == [1]
    assert isinstance(conn.plan(group[1:], FakePlanContext(refs={"k1": "delivered"})), Send)
