"""A producer always knows whether a sidecar reads it (issue 17, item 1), against a
real sidecar process: a mistyped endpoint, a sidecar stopped (SIGSTOP) or not
started, `ping`, and `sidecar status` listing the rings it reads."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from client import Client
from standins.webhook import WebhookReceiver

from ..support import SidecarProcess, drained, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(180)

POST = "webhook.post"


def client_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "client" and r.levelno >= logging.WARNING]


def stopped(pid: int) -> bool:
    """Whether the process is in state T (SIGSTOP has taken effect)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def start(tmp: Path, hook: WebhookReceiver, **sections: dict[str, str]) -> SidecarProcess:
    hooks = {"alerts": {"url": hook.url + "/in", "rate_per_second": 100.0, "timeout": 2.0}}
    return SidecarProcess(tmp, config=sidecar_config(tmp, webhooks=hooks, **sections)).start()


def test_a_mistyped_endpoint_is_named_once_and_what_it_held_is_counted_not_lost_silently(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook:
        sc = start(short_tmp, hook)
        typo = sc.endpoint.replace(".sock", ".sokc")
        c = Client(typo)
        assert all(c.emit(POST, {"n": n}, ref="alerts") for n in range(20))  # queued in this process
        assert not c.ping(1.0)
        stats = c.stats()
        assert stats["fallback"] == f"no ring directory {short_tmp}/ingest.sokc.rings"
        assert stats["unacknowledged"]["events"] == 20 and stats["sidecar_seen"] is False
        c.close(linger=0.5)
        assert c.stats()["dropped"] == {"linger_expired": 20}
        (said,) = client_warnings(caplog)
        assert typo in said and f"{short_tmp}/ingest.sokc.rings" in said
        assert not (short_tmp / "ingest.sokc.rings").exists()        # no leftover ring for the typo
        assert sc.query("SELECT COUNT(*) FROM clients WHERE client_id=?", c.client_id) == [(0,)]
        assert sc.stop() == 0
        assert hook.bodies() == []


def test_a_stopped_sidecar_is_noticed_its_backlog_shown_and_nothing_lost_when_it_resumes(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="client")
    with WebhookReceiver() as hook:
        sc = start(short_tmp, hook)
        with Client(sc.endpoint, strict=True) as c:
            c.emit(POST, {"n": 0}, ref="alerts")
            assert c.ping(30)
            os.kill(sc.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: stopped(sc.pid), timeout=10, what="the sidecar to stop")
                for n in range(1, 6):
                    assert c.emit(POST, {"n": n}, ref="alerts")
                # No further emit: the client's watcher notices on its own.
                said = wait_until(lambda: [m for m in client_warnings(caplog) if "acknowledged" in m], timeout=60,
                                  what="the client's warning about a sidecar that stopped reading")
                assert "stopped reading" in said[0] and sc.endpoint in said[0]
                assert f"{short_tmp}/ingest.rings" in said[0]
                waiting = c.stats()["unacknowledged"]
                assert waiting["events"] == 5 and waiting["bytes"] > 0 and waiting["since"] is not None
                assert not c.ping(0.5)
            finally:
                os.kill(sc.pid, signal.SIGCONT)
            assert c.ping(30)
            assert c.stats()["unacknowledged"] == {"events": 0, "bytes": 0, "since": None}
            wait_until(lambda: any("reads its events again" in r.getMessage() for r in caplog.records), timeout=30,
                       what="the client to say it is read again")
        wait_until(lambda: drained(sc, c), timeout=60, what="every post delivered")
        assert sc.stop() == 0
        assert hook.bodies() == [{"n": n} for n in range(6)]
        assert len([m for m in client_warnings(caplog) if "acknowledged" in m]) == 1  # one warning, one episode


def test_a_sidecar_not_started_is_noticed_and_status_lists_the_ring_once_it_runs(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver() as hook:
        sc = start(short_tmp, hook, metrics={"address": f"127.0.0.1:{free_port()}"})  # `sidecar status` needs it
        assert sc.stop() == 0                                   # it ran once: its ring directory stays
        with Client(sc.endpoint, strict=True) as c:
            assert c.emit(POST, {"n": 1}, ref="alerts")
            said = wait_until(lambda: [m for m in client_warnings(caplog) if "acknowledged" in m], timeout=60,
                              what="the client's warning about a ring nobody adopted")
            assert "no sidecar has adopted" in said[0] and sc.endpoint in said[0]
            assert c.stats()["unacknowledged"]["events"] == 1 and c.stats()["sidecar_seen"] is False
            assert not c.ping(0.5)
            sc.start()
            assert c.ping(30)

            def ring_status() -> dict[str, Any] | None:
                # /status is housekeeping's snapshot: the one after the ack shows no backlog.
                code, body = sc.get("/status")
                assert code == 200
                found = [r for r in orjson.loads(body)["rings"] if r["client_id"] == c.client_id]
                return found[0] if found and found[0]["backlog_bytes"] == 0 else None

            wait_until(lambda: ring_status() is not None, timeout=30, what="a status snapshot with the ring acknowledged")
            status = orjson.loads(sc.get("/status")[1])
            (ring,) = [r for r in status["rings"] if r["client_id"] == c.client_id]
            assert ring["pid"] == os.getpid() and ring["uid"] == os.getuid() and ring["version"] == 2
            assert ring["backlog_bytes"] == 0 and ring["age_seconds"] >= 0
            assert status["rings_total"] == len(status["rings"]) >= 1
            shown = sc.cli("status")
            assert shown.returncode == 0, shown.stderr
            line = next(line for line in shown.stdout.splitlines() if line.startswith(c.client_id))
            assert str(os.getpid()) in line and ring["name"] in line
        wait_until(lambda: drained(sc, c), timeout=60, what="the post delivered")
        assert sc.stop() == 0
        assert hook.bodies() == [{"n": 1}]
