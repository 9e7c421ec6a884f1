"""How ingest shares a small disk with delivery, on a real journal with the free space given by the test.

The end-to-end case (a 3 MB filesystem filled by a producer) is in
test_journal_disk_full.py; these check the arithmetic behind it quickly:
the headroom kept for delivery, the hysteresis before ingest resumes, and
the reserve file that a real ENOSPC spends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import Config
from sidecar.ingest.core import ROW_OVERHEAD, SPACE_SECONDS, Ingest
from sidecar.journal.health import FULL, OK, JournalHealth
from sidecar.journal.reserve import Reserve
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(30)
MB = 1 << 20


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    journal = Journal.open(tmp_path, synchronous="NORMAL", checkpoints=False)
    metrics = Metrics()
    journal.health, journal.role = JournalHealth(tmp_path, metrics), "ingest"
    made = Ingest(Config().ingest, journal, {}, metrics)
    yield made
    made.stop()
    journal.close()


def give(ingest: Ingest, monkeypatch: pytest.MonkeyPatch, free: int, wal: int = 0) -> None:
    """The filesystem now has `free` bytes free and the WAL is `wal` bytes."""
    monkeypatch.setattr(ingest, "_space", lambda: (free, wal))


def test_ingest_stops_at_the_headroom_and_resumes_only_at_twice_it(ingest: Ingest,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    room, cost = 16 * MB, ingest._frame_bytes + ROW_OVERHEAD
    ingest._headroom = room
    health = ingest.journal.health
    assert health is not None
    t = 100.0
    give(ingest, monkeypatch, free=room + 10_000 * 2 * cost)  # plenty: each event counted twice (WAL, file)
    assert ingest._allowance(t) == 10_000 and health.state == OK
    give(ingest, monkeypatch, free=room + 10_000 * 2 * cost, wal=4_000 * 2 * cost)  # a WAL still to fold in
    t += SPACE_SECONDS
    assert ingest._allowance(t) == 6_000
    # Under a batch's worth (4,096) it is low: half of what fits, the lanes write into the same room.
    give(ingest, monkeypatch, free=room + 1_000 * 2 * cost)
    t += SPACE_SECONDS
    assert ingest._allowance(t) == 500 and health.state == OK

    give(ingest, monkeypatch, free=room)  # down to the headroom: nothing more, and "disk full"
    t += SPACE_SECONDS
    assert ingest._allowance(t) == 0 and health.state == FULL
    assert "kept for delivery" in (health.problem() or "")
    give(ingest, monkeypatch, free=2 * room - 1)  # delivery freed some, not yet twice the headroom
    t += 1.0
    assert ingest._allowance(t) == 0 and health.state == FULL
    give(ingest, monkeypatch, free=2 * room + 4 * 4096 * 2 * cost)  # past twice it: on again
    t += 1.0
    assert ingest._allowance(t) > 0 and health.state == OK


def test_a_spent_reserve_is_left_free_by_ingest_until_it_is_set_aside_again(
        ingest: Ingest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    health = ingest.journal.health
    assert health is not None
    reserve = health.reserve = Reserve(tmp_path / "journal.reserve", 2 * MB)
    assert reserve.restore(headroom=0) and reserve.held and reserve.missing == 0
    assert os.stat(reserve.path).st_blocks * 512 >= 2 * MB  # allocated, not a sparse file
    ingest._headroom, cost = MB, ingest._frame_bytes + ROW_OVERHEAD
    give(ingest, monkeypatch, free=MB + 5_000 * 2 * cost)
    assert ingest._allowance(0.0) == 5_000

    # A real ENOSPC from a writer spends it (ingest stopping early does not).
    assert health.failed("delivery", OSError(28, "No space left on device")) == FULL
    assert not reserve.held and reserve.missing == 2 * MB
    assert not reserve.release()  # already gone
    give(ingest, monkeypatch, free=3 * MB + 5_000 * 2 * cost)  # the freed bytes are delivery's
    assert ingest._allowance(1.0) == 5_000
    assert not reserve.restore(headroom=(1 << 50))  # not without its size and the headroom free
    assert not reserve.held
    assert reserve.restore(headroom=0) and reserve.missing == 0
