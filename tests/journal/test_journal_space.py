"""How ingest shares a small disk with delivery, on a real journal with the free space given by the test.

The end-to-end case (a 3 MB filesystem filled by a producer) is in
test_journal_disk_full.py; these check the arithmetic behind it quickly (`Admission`, the policy in `Space`):
the headroom kept for delivery, the hysteresis before ingest resumes, and
the reserve file that a real ENOSPC spends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.config import Config
from sidecar.ingest.admission import SPACE_SECONDS, Admission
from sidecar.journal.health import FULL, OK, JournalHealth
from sidecar.journal.reserve import Reserve
from sidecar.journal.space import ROW_OVERHEAD, Space
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(30)
MB = 1 << 20


class Disk:
    """What the admission sees: `free` bytes on the filesystem and a WAL of `wal` bytes."""

    def __init__(self) -> None:
        self.free, self.wal = 0, 0

    def give(self, free: int, wal: int = 0) -> None:
        self.free, self.wal = free, wal

    def __call__(self) -> tuple[int, int]:
        return self.free, self.wal


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture
def admission_on(tmp_path: Path, disk: Disk) -> Iterator[Callable[[Space], Admission]]:
    """An ingest journal's admission under `space`'s policy, reading the test's `disk`."""
    journals: list[Journal] = []

    def make(space: Space) -> Admission:
        journal = Journal.open(tmp_path, synchronous="NORMAL", checkpoints=False,
                               health=JournalHealth(tmp_path, Metrics(), space=space), role="ingest")
        journals.append(journal)
        return Admission(journal, batch_max=Config().ingest.batch_max, measure=disk)

    yield make
    for journal in journals:
        journal.close()


def test_ingest_stops_at_the_headroom_and_resumes_only_at_twice_it(
        tmp_path: Path, disk: Disk, admission_on: Callable[[Space], Admission]) -> None:
    room = 16 * MB
    admission = admission_on(Space(tmp_path, headroom=room))
    cost, health = admission.frame_bytes + ROW_OVERHEAD, admission.journal.health
    assert isinstance(health, JournalHealth)
    t = 100.0
    disk.give(free=room + 10_000 * 2 * cost)  # plenty: each event counted twice (WAL, file)
    assert admission.allowance(t) == 10_000 and health.state == OK
    disk.give(free=room + 10_000 * 2 * cost, wal=4_000 * 2 * cost)  # a WAL still to fold in
    t += SPACE_SECONDS
    assert admission.allowance(t) == 6_000
    # Under a batch's worth (4,096) it is low: half of what fits, the lanes write into the same room.
    disk.give(free=room + 1_000 * 2 * cost)
    t += SPACE_SECONDS
    assert admission.allowance(t) == 500 and health.state == OK

    disk.give(free=room)  # down to the headroom: nothing more, and "disk full"
    t += SPACE_SECONDS
    assert admission.allowance(t) == 0 and health.state == FULL
    assert "kept for delivery" in (health.problem() or "")
    disk.give(free=2 * room - 1)  # delivery freed some, not yet twice the headroom
    t += 1.0
    assert admission.allowance(t) == 0 and health.state == FULL
    disk.give(free=2 * room + 4 * 4096 * 2 * cost)  # past twice it: on again
    t += 1.0
    assert admission.allowance(t) > 0 and health.state == OK


def test_a_spent_reserve_is_left_free_by_ingest_until_it_is_set_aside_again(
        tmp_path: Path, disk: Disk, admission_on: Callable[[Space], Admission]) -> None:
    reserve = Reserve(tmp_path / "journal.reserve", 2 * MB)
    space = Space(tmp_path, headroom=MB, reserve=reserve)
    admission = admission_on(space)
    health = admission.journal.health
    assert reserve.restore(headroom=0) and reserve.held and reserve.missing == 0
    assert os.stat(reserve.path).st_blocks * 512 >= 2 * MB  # allocated, not a sparse file
    cost = admission.frame_bytes + ROW_OVERHEAD
    disk.give(free=MB + 5_000 * 2 * cost)
    assert admission.allowance(0.0) == 5_000

    # A real ENOSPC from a writer spends it (ingest stopping early does not).
    assert health.failed("delivery", OSError(28, "No space left on device")) == FULL
    assert not reserve.held and reserve.missing == 2 * MB
    assert not reserve.release()  # already gone
    disk.give(free=3 * MB + 5_000 * 2 * cost)  # the freed bytes are delivery's
    assert admission.allowance(1.0) == 5_000
    assert not reserve.restore(headroom=(1 << 50))  # not without its size and the headroom free
    assert not reserve.held
    assert space.restore_reserve() and reserve.held and reserve.missing == 0  # housekeeping's call
