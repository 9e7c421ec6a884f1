from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from standins.notion import NotionSimulator

from .support import kill_leftovers

NOTION_SCHEMA = {
    "Name": "title",
    "Idempotency Key": "rich_text",
    "Price": "number",
    "Side": "select",
    "Note": "rich_text",
}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: ipc:// socket paths must stay under ~107 bytes."""
    with tempfile.TemporaryDirectory(prefix="sc-") as d:
        yield Path(d)


def _notion(rate_per_second: float, burst: float) -> Iterator[NotionSimulator]:
    sim = NotionSimulator(rate_per_second=rate_per_second, burst=burst).start()
    sim.database_id = sim.create_database(title="Trades", properties=NOTION_SCHEMA)  # type: ignore[attr-defined]
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def notion_sim() -> Iterator[NotionSimulator]:
    yield from _notion(30, 30)


@pytest.fixture
def fast_notion() -> Iterator[NotionSimulator]:
    """Ten times as fast, for tests that move thousands of events."""
    yield from _notion(300, 100)


@pytest.fixture(autouse=True)
def no_leftover_sidecars() -> Iterator[None]:
    yield
    kill_leftovers()
