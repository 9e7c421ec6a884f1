"""The lane on its own, over a real journal: it survives what a connector throws at it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from client import wire
from client.wire import Envelope
from sidecar.config import RetryConfig
from sidecar.connectors.base import Delivered, Plan, PlanContext, Send
from sidecar.journal import Event, Journal
from sidecar.lane import Lane
from sidecar.limiter import Limiter, MemoryStore, Rule
from sidecar.metrics import Metrics

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

    async def send(self, plan: Send) -> Delivered:
        self.sent.append([e.seq for e in plan.events])
        return Delivered()

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        return []

    async def aclose(self) -> None:
        pass


def test_a_worker_survives_a_bug_and_delivers_afterwards(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    rows = [("flaky", "webhook.post", "t", None, None, "c", n, 1, 1,
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
