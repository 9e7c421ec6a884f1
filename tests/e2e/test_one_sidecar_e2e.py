"""One sidecar per journal and per ring directory (issue 17, item 2): a second
`sidecar run` exits 73 at once naming the pid that holds the lock, and the
first delivers every event exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client import Client
from sidecar.errors import ExitCode
from standins.webhook import WebhookReceiver

from ..support import SidecarProcess, drained, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(180)

POST = "webhook.post"


def config(workdir: Path, hook: WebhookReceiver, **sections: dict[str, Any]) -> dict[str, Any]:
    workdir.mkdir(exist_ok=True)
    hooks = {"alerts": {"url": hook.url + "/in", "rate_per_second": 100.0, "timeout": 2.0}}
    return sidecar_config(workdir, webhooks=hooks, **sections)


def test_a_second_sidecar_on_the_same_journal_exits_73_naming_the_first_and_nothing_is_delivered_twice(
        short_tmp: Path) -> None:
    journal = {"dir": str(short_tmp / "journal")}
    with WebhookReceiver() as hook:
        first = SidecarProcess(short_tmp / "a", config=config(short_tmp / "a", hook, journal=journal)).start()
        second = SidecarProcess(short_tmp / "b", config=config(short_tmp / "b", hook, journal=journal))
        assert first.endpoint != second.endpoint
        with Client(first.endpoint, strict=True) as c:
            for n in range(30):
                assert c.emit(POST, {"n": n}, ref="alerts")
            second.start(wait_ready=False)
            assert second.proc is not None
            assert second.proc.wait(60) == ExitCode.CANNOT_START
            for n in range(30, 60):
                assert c.emit(POST, {"n": n}, ref="alerts")
        wait_until(lambda: drained(first, c), timeout=60, what="every post delivered")
        assert first.stop() == 0
        said = second.log_text()
        assert f"journal directory is in use by another sidecar (pid {first.pid}" in said
        assert "sidecar ready" not in said
        assert hook.bodies() == [{"n": n} for n in range(60)]     # each once, in order


def test_ipc_x_and_x_sock_share_a_ring_directory_so_a_second_sidecar_there_exits_73(short_tmp: Path) -> None:
    with WebhookReceiver() as hook:
        a = config(short_tmp / "a", hook, ingest={"endpoint": f"ipc://{short_tmp}/ingest.sock"})
        b = config(short_tmp / "b", hook, ingest={"endpoint": f"ipc://{short_tmp}/ingest"})  # its own journal
        first = SidecarProcess(short_tmp / "a", config=a).start()
        second = SidecarProcess(short_tmp / "b", config=b).start(wait_ready=False)
        assert second.proc is not None
        assert second.proc.wait(60) == ExitCode.CANNOT_START
        said = second.log_text()
        assert f"ring directory {short_tmp}/ingest.rings is in use by another sidecar (pid {first.pid}" in said
        with Client(first.endpoint, strict=True) as c:                  # the first keeps its rings
            for n in range(10):
                assert c.emit(POST, {"n": n}, ref="alerts")
            assert c.stats()["transport"] == "ring"
        wait_until(lambda: drained(first, c), timeout=60, what="every post delivered")
        assert first.stop() == 0
        assert hook.bodies() == [{"n": n} for n in range(10)]
