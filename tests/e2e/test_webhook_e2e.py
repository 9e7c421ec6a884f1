"""Webhooks end to end: client -> sidecar process -> receivers (routing and plans without network: test_webhook.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client import Client
from standins.base import Fault
from standins.webhook import WebhookReceiver

from ..support import SidecarProcess, drained, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)

POST = "webhook.post"


def start_sidecar(tmp: Path, **hooks: dict[str, Any]) -> SidecarProcess:
    webhooks = {name: {"timeout": 2.0, **table} for name, table in hooks.items()}
    return SidecarProcess(tmp, config=sidecar_config(tmp, webhooks=webhooks)).start()


def test_posts_arrive_in_order_through_rate_limits_and_faults(short_tmp: Path) -> None:
    with WebhookReceiver(rate_per_second=8, burst=2) as alerts, WebhookReceiver() as trades:
        alerts.inject(Fault(status=503, count=2))
        alerts.inject(Fault(status=429))  # answered with Retry-After: 1
        alerts.inject(Fault(status=500))
        alerts.inject(Fault(reset=True))
        sc = start_sidecar(short_tmp, alerts={"url": alerts.url + "/hooks/alerts", "rate_per_second": 5.0},
                           trades={"url": trades.url + "/hooks/trades", "rate_per_second": 50.0})
        with Client(sc.endpoint, strict=True) as client:
            for n in range(15):
                client.emit(POST, {"alert": n}, ref="alerts")
                if n % 3 == 0:
                    client.emit(POST, {"trade": n}, ref="trades")
            client.emit(POST, {"lost": True}, ref="nope")
        wait_until(lambda: drained(sc, client), timeout=60, what="every post delivered")
        assert sc.stop() == 0
        assert alerts.bodies() == [{"alert": n} for n in range(15)]
        assert {d.path for d in alerts.deliveries} == {"/hooks/alerts"}
        assert trades.bodies() == [{"trade": n} for n in range(0, 15, 3)]
        assert alerts.pending_faults == []
        stats = alerts.stats()
        assert stats["rate_limited"] == 1  # the injected one: the lane keeps under the receiver's limit
        assert stats["max_accepted_in_1s"] <= 5 + 1  # the lane's rate plus its burst
        assert sc.query("SELECT reason, detail FROM rejects") == [
            ("unknown_target", "no webhook.post lane is configured for ref 'nope'")]
        assert sc.journal_count("dead_letters") == 0


def test_duplicate_keys_are_skipped_and_4xx_is_dead_lettered(short_tmp: Path) -> None:
    with WebhookReceiver() as hook:
        sc = start_sidecar(short_tmp, alerts={"url": hook.url + "/in", "rate_per_second": 50.0})
        with Client(sc.endpoint, strict=True) as client:
            client.emit(POST, {"n": 1}, ref="alerts", key="k1")
            client.emit(POST, {"n": 2}, ref="alerts", key="k1")
            client.emit(POST, {"n": 3}, ref="alerts")
            client.emit(POST, {"n": 3}, ref="alerts")  # no key: both go
            client.emit(POST, {"n": 4}, ref="alerts", key="k2")
        wait_until(lambda: drained(sc, client), timeout=20, what="the first posts")
        hook.inject(Fault(status=404, code="not_found"))
        with Client(sc.endpoint, strict=True) as late:
            late.emit(POST, {"n": 5}, ref="alerts", key="k1")  # delivered long ago: skipped
            late.emit(POST, {"n": 6}, ref="alerts", key="k3")  # refused for good
            late.emit(POST, {"n": 7}, ref="alerts", key="k4")
        wait_until(lambda: drained(sc, late), timeout=20, what="the late posts")
        assert sc.stop() == 0
        assert hook.bodies() == [{"n": 1}, {"n": 3}, {"n": 3}, {"n": 4}, {"n": 7}]
        assert [d.headers.get("idempotency-key") for d in hook.deliveries] == ["k1", None, None, "k2", "k4"]
        assert sc.query("SELECT key, reason, status FROM dead_letters") == [("k3", "http_404", 404)]
        assert sorted(k for (k,) in sc.query("SELECT key FROM refs WHERE lane='webhook.alerts'")) == ["k1", "k2", "k4"]
