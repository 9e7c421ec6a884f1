"""Fixtures and markers for the whole suite.

Where a test lives: `tests/` mirrors the package. `client/`, `ingest/`, `journal/`,
`delivery/`, `connectors/` and `ops/` hold the tests of that subpackage; the top-level
modules (`sidecar/config.py`...) are tested at the top (`test_config.py`). The stand-ins'
own tests live with them, in `standins/tests/`.

Which tests are `e2e`, the rule: a test is e2e when it starts another program that it then
drives from outside: a sidecar process (`SidecarProcess`), a `redis-server`, or a benchmark
script that starts those. Everything else is a unit test, even over real sockets: objects of
this process, a stand-in or a ZeroMQ socket on loopback inside this process, a short
`python -c` producer or a `fork()` (the client's own subject), moto's S3 in a child process
(it only answers HTTP). So `pytest -m "not e2e"` is the inner loop: seconds per folder,
about a minute for all of it on two cores.

Why a folder, `tests/e2e/`, rather than e2e files beside their subject: an end-to-end test
crosses every subpackage (client -> ingest -> journal -> lane -> connector -> stand-in), so it
has no one subject to sit beside; and its files share helpers (`test_frozen_sidecar.py`
imports `test_notion_e2e.py`'s). Every test under `tests/e2e/` is marked `e2e` by
`pytest_collection_modifyitems` below. The few e2e tests elsewhere (the Redis half of
`delivery/test_shared_limiter.py`, which shares its rule table with the memory half) carry
`@pytest.mark.e2e` themselves. One test in `e2e/` runs a lane in-process
(`test_frozen_sidecar.py`'s backlog test): it stays with the frozen-sidecar tests it belongs to,
and so counts as e2e.

`slow`: a test that takes more than about 10 s on two cores (the ring stress runs, the
benchmarks' smoke runs); `-m "not slow"` leaves them out.

    pytest -m "not e2e" -n 2       # the unit tests
    pytest tests/e2e -n 3          # the end-to-end tests only
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from standins.notion import NotionSimulator

from .support import kill_leftovers

E2E = Path(__file__).resolve().parent / "e2e"

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


@pytest.fixture
def two_users() -> Iterator[tuple[int, int, int]]:
    """(uid A, uid B, gid): two users sharing a group, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create users")
    if shutil.which("useradd") is None or shutil.which("groupadd") is None:
        pytest.skip("useradd/groupadd are not installed")
    tag = uuid.uuid4().hex[:6]
    group, users = f"h17g{tag}", [f"h17a{tag}", f"h17b{tag}"]
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        for u in users:
            subprocess.run(["useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", u], check=True,
                           capture_output=True)
        yield pwd.getpwnam(users[0]).pw_uid, pwd.getpwnam(users[1]).pw_uid, grp.getgrnam(group).gr_gid
    finally:
        for u in users:
            subprocess.run(["userdel", u], check=False, capture_output=True)
        subprocess.run(["groupdel", group], check=False, capture_output=True)


@pytest.fixture(autouse=True)
def no_leftover_sidecars() -> Iterator[None]:
    yield
    kill_leftovers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ as `e2e` (the rule is in this module's docstring)."""
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
