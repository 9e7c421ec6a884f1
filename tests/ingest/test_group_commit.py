"""Group commit by time, in the ingest loop's own steps (`Ingest._cycle`):
a real socket, a real Client's ring and a real journal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from sidecar.config import from_dict
from sidecar.ingest.core import Ingest
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics


@pytest.fixture
def ingest(short_tmp: Path) -> Iterator[tuple[Ingest, Journal, str]]:
    yield from bound_ingest(short_tmp, commit_window=1.0)


def bound_ingest(short_tmp: Path, **settings: float) -> Iterator[tuple[Ingest, Journal, str]]:
    """An Ingest bound to a socket in `short_tmp`, with these [ingest] settings, and its journal."""
    endpoint = f"ipc://{short_tmp}/g.sock"
    cfg = from_dict({"ingest": {"endpoint": endpoint, **settings}, "journal": {"dir": str(short_tmp / "j")}})
    journal = Journal.open(cfg.journal.dir, synchronous="NORMAL")
    ingest = Ingest(cfg.ingest, journal, {}, Metrics())
    ingest.bind()
    yield ingest, journal, endpoint
    ingest.stop()
    journal.close()


def last_seq(journal: Journal, client_id: str) -> int:
    rows = journal.conn.execute("SELECT last_seq FROM clients WHERE client_id=?", (client_id,)).fetchall()
    return int(rows[0][0]) if rows else 0


def cycle_until_read(ingest: Ingest, n: int) -> None:
    """Run the loop's step until `n` more messages were read (the ring's records become visible at once;
    the socket's may take a moment)."""
    assert ingest._sock is not None and ingest.rings is not None
    ingest.rings.maintain(time.monotonic(), force=True)  # adopt the client's ring now
    took, deadline = 0, time.monotonic() + 10
    while took < n:
        assert time.monotonic() < deadline, f"read {took} of {n}"
        took += ingest._cycle(ingest._sock)


def commits(ingest: Ingest) -> float:
    return ingest.metrics.value("sidecar_ingest_commits_total")


def test_the_first_event_after_a_quiet_spell_commits_at_once_and_the_next_ones_wait_for_the_window(
        ingest: tuple[Ingest, Journal, str]) -> None:
    ing, journal, endpoint = ingest
    with Client(endpoint, strict=True) as client:
        assert client.emit("webhook.post", {"n": 1})
        cycle_until_read(ing, 1)
        assert last_seq(journal, client.client_id) == 1 and commits(ing) == 1  # not kept waiting for company
        for n in range(2, 6):
            assert client.emit("webhook.post", {"n": n})
        cycle_until_read(ing, 4)
        # Within the 1 s window after a commit: read, held, not committed, and so not acknowledged.
        assert last_seq(journal, client.client_id) == 1 and commits(ing) == 1
        [ring] = ing.rings.rings.values() if ing.rings else []
        assert ring.acked < ring.pos
        assert ing._sock is not None
        ing._cycle(ing._sock, now_or_never=True)  # as the window's end (or a stop) does
        assert last_seq(journal, client.client_id) == 5 and commits(ing) == 2  # four events, one commit
        assert ring.acked == ring.pos
