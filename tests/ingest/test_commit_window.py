"""The commit window adapts: `commit_window` when a flow starts, doubling at each commit while
events keep coming, up to `commit_window_max`; none for the first event after a quiet spell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from sidecar.ingest.core import Ingest
from sidecar.journal.store import Journal

from .test_group_commit import bound_ingest, commits, cycle_until_read, last_seq


@pytest.fixture
def ingest(short_tmp: Path) -> Iterator[tuple[Ingest, Journal, str]]:
    yield from bound_ingest(short_tmp, commit_window=0.1, commit_window_max=0.9)


def test_the_window_grows_while_events_flow_and_starts_again_after_a_quiet_spell(
        ingest: tuple[Ingest, Journal, str]) -> None:
    ing, journal, endpoint = ingest
    assert ing._sock is not None
    windows = []
    with Client(endpoint, strict=True) as client:
        for n in range(1, 6):
            assert client.emit("webhook.post", {"n": n})
            cycle_until_read(ing, 1)
            windows.append(ing._window)
            ing._cycle(ing._sock, now_or_never=True)  # as the window's end does
            assert last_seq(journal, client.client_id) == n
        assert windows == [0.1, 0.2, 0.4, 0.8, 0.9]  # the first at once (quiet), then a flow
        # A flow's commits are a window apart (the loop lingers that long before it reads): still a flow.
        ing._last_commit -= 0.9
        assert client.emit("webhook.post", {"n": 6})
        cycle_until_read(ing, 1)
        assert ing._window == 0.9 and last_seq(journal, client.client_id) == 5
        ing._cycle(ing._sock, now_or_never=True)
        ing._last_commit -= 5 * 0.1 + 0.9  # five windows (and the one it is at) without a commit: quiet again
        assert client.emit("webhook.post", {"n": 7})
        cycle_until_read(ing, 1)
        assert ing._window == 0.1 and last_seq(journal, client.client_id) == 7  # committed at once
        assert commits(ing) == 7
