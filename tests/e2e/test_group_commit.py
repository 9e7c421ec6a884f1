"""Group commit by time with a real sidecar and a real Client: events that
arrive at a low rate share commits, and a SIGKILL between commits loses
none of them (the ring keeps what the journal has not acknowledged)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from client import Client

from ..support import SidecarProcess, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)

NO_TOKEN = {"NOTION_TOKEN": ""}  # the Notion lane is paused: every event stays in the journal, countable
WINDOW = 0.05                    # the commit window under test: several events of a 200/s flow in each


def sidecar(tmp: Path) -> SidecarProcess:
    return SidecarProcess(tmp, config=sidecar_config(tmp, ingest={"commit_window": WINDOW}), env=NO_TOKEN)


def emit_paced(client: Client, first: int, count: int, per_second: float) -> None:
    """Updates numbered from `first`, one every 1/per_second s: a low, steady rate."""
    for n in range(first, first + count):
        assert client.emit("notion.page.update", {"properties": {"n": {"number": n}}}, ref="page")
        time.sleep(1 / per_second)


def seqs(sc: SidecarProcess, client_id: str) -> list[int]:
    return sorted(s for (s,) in sc.query("SELECT seq FROM events WHERE client_id=?", client_id))


def test_events_at_a_low_rate_share_commits(short_tmp: Path) -> None:
    with sidecar(short_tmp) as sc, Client(sc.endpoint) as client:
        before = sc.scrape().get("sidecar_ingest_commits_total", 0.0)
        emit_paced(client, 1, 200, per_second=200)
        wait_until(lambda: len(seqs(sc, client.client_id)) == 200, timeout=30, what="200 events journaled")
        commits = sc.scrape()["sidecar_ingest_commits_total"] - before
    # 200 events over about a second, a commit at most every 50 ms after the first: ~20, never 200.
    assert 1 <= commits <= 200 / 4, commits


def test_a_sigkill_between_group_commits_loses_nothing(short_tmp: Path) -> None:
    sc = sidecar(short_tmp).start()
    try:
        with Client(sc.endpoint) as client:
            emit_paced(client, 1, 60, per_second=200)
            sc.kill()  # SIGKILL with a batch read from the ring but not committed, most likely
            emit_paced(client, 61, 60, per_second=200)  # into the ring while the sidecar is away
            sc.start()
            emit_paced(client, 121, 60, per_second=200)
            wait_until(lambda: len(seqs(sc, client.client_id)) >= 180, timeout=30, what="180 events journaled")
            # Each once: what was read but not committed was read again from the ring, and
            # what was committed but not acknowledged is dropped by its sequence number.
            assert seqs(sc, client.client_id) == list(range(1, 181))
            assert sc.query("SELECT gaps FROM clients WHERE client_id=?", client.client_id) == [(0,)]
            assert client.stats()["dropped"] == {}
        assert sc.stop() == 0
    finally:
        sc.kill()
