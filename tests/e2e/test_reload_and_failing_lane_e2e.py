"""A real sidecar process: `sidecar reload` applies a new rate and names an endpoint that needs a restart;
a lane whose calls are mostly refused makes `check` degraded, and it recovers once calls succeed."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from client import Client
from standins.base import Request, Response
from standins.notion import NotionSimulator
from standins.process import write_toml

from ..conftest import NOTION_SCHEMA
from ..support import SidecarProcess, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)


class MovableNotion(NotionSimulator):
    """The Notion stand-in; with `at_root` set it also answers without the `/v1` prefix: the fix an
    operator makes behind a base_url that lacks `/v1`, without touching the sidecar."""

    at_root = False

    def handle(self, request: Request) -> Response:
        if self.at_root and not request.path.startswith("/v1/"):
            request = dataclasses.replace(request, path="/v1" + request.path)
        return super().handle(request)


@pytest.fixture
def notion() -> Any:
    with MovableNotion(rate_per_second=300, burst=100) as sim:
        sim.database_id = sim.create_database(title="Trades", properties=NOTION_SCHEMA)  # type: ignore[attr-defined]
        yield sim


def create(db: str, key: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": key}}]}}}


def start(tmp: Path, sim: NotionSimulator, base_url: str, rate: float = 3.0) -> SidecarProcess:
    cfg = sidecar_config(tmp, notion={"base_url": base_url, "rate_per_second": rate, "burst": 5.0, "timeout": 2.0},
                         metrics={"address": f"127.0.0.1:{free_port()}"})
    return SidecarProcess(tmp, config=cfg, env={"NOTION_TOKEN": sim.token})  # `with` starts it


def lane(sc: SidecarProcess, name: str = "notion") -> dict[str, Any]:
    return orjson.loads(sc.get("/status")[1])["lanes"][name]


def test_reload_applies_a_new_rate_names_a_changed_endpoint_and_refuses_a_broken_file(
        short_tmp: Path, notion: MovableNotion) -> None:
    with start(short_tmp, notion, notion.url + "/v1") as sc, Client(sc.config["ingest"]["endpoint"]) as client:
        assert lane(sc)["configured_rate"] == 3.0
        old_endpoint = sc.config["ingest"]["endpoint"]
        sc.config["notion"]["rate_per_second"] = 40.0
        sc.config["ingest"]["endpoint"] = f"ipc://{short_tmp}/elsewhere.sock"
        write_toml(sc.config_path, sc.config)
        reload = sc.cli("reload")
        assert reload.returncode == 0, reload.stderr
        wait_until(lambda: lane(sc)["configured_rate"] == 40.0, timeout=10, what="status to show the new rate")
        assert lane(sc)["rate_per_second"] == 40.0
        status = orjson.loads(sc.get("/status")[1])
        assert status["restart_needed"] == ["[ingest] endpoint"] and status["ingest"]["endpoint"] == old_endpoint
        assert any("needing a restart" in line and "[ingest] endpoint" in line for line in sc.log_lines)
        assert any("applied: [notion] rate_per_second" in line for line in sc.log_lines)
        assert sc.cli("check").returncode == 0  # a change waiting for a restart is not a fault

        # The old endpoint still runs: an event emitted there is delivered.
        assert client.emit("notion.page.create", create(notion.database_id, "after-reload"), key="after-reload")
        wait_until(lambda: len(notion.pages()) == 1, timeout=20, what="the page created after the reload")

        # A file that no longer parses is refused with its message; the running configuration stays.
        sc.config_path.write_text(sc.config_path.read_text() + "\n[notion\nrate_per_second = 1\n")
        sc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any("reload refused" in line and "not valid TOML" in line for line in sc.log_lines),
                   timeout=10, what="the refused reload in the log")
        wait_until(lambda: orjson.loads(sc.get("/status")[1]).get("reload_refused"), timeout=10,
                   what="status to say the reload was refused")
        assert lane(sc)["configured_rate"] == 40.0 and sc.proc.poll() is None


def test_a_lane_whose_calls_are_refused_makes_check_degraded_until_calls_succeed_again(
        short_tmp: Path, notion: MovableNotion) -> None:
    db = notion.database_id  # type: ignore[attr-defined]
    # base_url without /v1: Notion answers every call 400 invalid_request_url, and each create is dead-lettered.
    with start(short_tmp, notion, notion.url, rate=50.0) as sc, Client(sc.config["ingest"]["endpoint"]) as client:
        for n in range(6):
            assert client.emit("notion.page.create", create(db, f"bad-{n}"), key=f"bad-{n}")
        wait_until(lambda: sc.journal_count("dead_letters") == 6, timeout=20, what="six creates dead-lettered")
        check = wait_until(lambda: (r := sc.cli("check")).returncode == 1 and r, timeout=10,
                           what="check to say degraded")
        assert "notion: 6 of the last 6 calls refused or dead-lettered" in check.stdout
        assert "400 invalid_request_url: Invalid request URL" in check.stdout
        code, body = sc.get("/health")
        assert code == 503 and any(p.startswith("notion: 6 of the last 6") for p in orjson.loads(body)["problems"])
        assert lane(sc)["recent_calls"] == 6 and lane(sc)["recent_failed"] == 6

        notion.at_root = True  # fixed behind the URL: calls now succeed
        for n in range(7):
            assert client.emit("notion.page.create", create(db, f"good-{n}"), key=f"good-{n}")
        wait_until(lambda: len(notion.pages()) == 7, timeout=30, what="the seven good creates")
        wait_until(lambda: sc.cli("check").returncode == 0, timeout=10, what="check healthy again")
        assert sc.get("/health")[0] == 200
        assert sc.journal_count("dead_letters") == 6  # the refused ones stay dead letters, for `dlq retry`
