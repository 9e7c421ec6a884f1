"""A refused credential pauses its lane and keeps the events; a new one is picked up without a restart.

Real sidecar processes against the loopback simulators, with the credentials
in a `$CREDENTIALS_DIRECTORY` the tests rewrite, as an operator would.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import bcrypt
import orjson
import pytest

from client import Client
from sidecar.connectors.naver import TOKEN_PATH
from standins.base import Fault
from standins.naver import MULTI_UPDATE_PATH, NaverSimulator
from standins.notion import NotionSimulator, property_value

from ..support import SidecarProcess, drained, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)

WRONG_TOKEN = "secret_wrongWrongWrong" + "w" * 20
PAUSED_NOTION = "credentials refused by Notion"
PAUSED_NAVER = "credentials refused by Naver"
NO_ENV_SECRETS = ("NOTION_TOKEN", "NAVER_CLIENT_ID", "NAVER_CLIENT_SECRET")


def create(db: str, key: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": key}}]}}}


def start(tmp: Path, creds: dict[str, str], probe: float = 60.0, **sections: dict[str, Any]) -> SidecarProcess:
    """A sidecar whose only secrets are the files in tmp/creds (none from the environment)."""
    directory = tmp / "creds"
    directory.mkdir(exist_ok=True)
    write_credentials(tmp, creds)
    cfg = sidecar_config(tmp, retry={"credentials_probe_seconds": probe},
                         metrics={"address": f"127.0.0.1:{free_port()}"}, **sections)
    sc = SidecarProcess(tmp, config=cfg)
    sc.env = {k: v for k, v in sc.env.items() if k not in NO_ENV_SECRETS}
    sc.env["CREDENTIALS_DIRECTORY"] = str(directory)
    return sc.start()


def write_credentials(tmp: Path, creds: dict[str, str]) -> None:
    for name, value in creds.items():
        path = tmp / "creds" / name
        path.write_text(value + "\n")
        path.chmod(0o600)


def lane_status(sc: SidecarProcess, lane: str) -> dict[str, Any]:
    return orjson.loads(sc.get("/status")[1])["lanes"][lane]


def notion_sidecar(tmp: Path, sim: NotionSimulator, token: str, probe: float = 60.0) -> SidecarProcess:
    return start(tmp, {"NOTION_TOKEN": token}, probe,
                 notion={"base_url": sim.url + "/v1", "rate_per_second": 50.0, "burst": 5.0, "timeout": 2.0})


def wait_paused(sc: SidecarProcess, lane: str, reason: str, events: int) -> None:
    wait_until(lambda: lane_status(sc, lane)["paused"] == reason and sc.journal_count("events") == events,
               timeout=20, what=f"lane {lane} paused with {events} event(s) kept")


def wait_resumed(sc: SidecarProcess, lane: str) -> None:
    """The status snapshot is refreshed every second: wait for it to show the lane running."""
    wait_until(lambda: lane_status(sc, lane)["paused"] is None and sc.cli("check").returncode == 0, timeout=10,
               what=f"lane {lane} running and check healthy")


def assert_reported_paused(sc: SidecarProcess, lane: str, reason: str, events: int) -> None:
    """`status`, `check` and /health all say why, and nothing more secret than that."""
    line = f"{lane}: paused: {reason}; {events} event(s) waiting"
    table = sc.cli("status")
    assert table.returncode == 0 and reason in table.stdout and f"problem: {line}" in table.stdout, table.stdout
    check = sc.cli("check")
    assert (check.returncode, check.stdout.strip()) == (1, f"WARNING: {line}")
    code, body = sc.get("/health")
    assert code == 503 and orjson.loads(body)["problems"] == [line]


def assert_no_secret_anywhere(sc: SidecarProcess, *secrets: str) -> None:
    text = sc.log_text() + sc.get("/metrics")[1].decode() + sc.get("/status")[1].decode()
    text += repr(sc.query("SELECT last_error FROM events")) + repr(sc.query("SELECT detail FROM dead_letters"))
    for secret in secrets:
        assert secret not in text


def test_a_wrong_notion_token_pauses_the_lane_and_sighup_with_the_right_one_delivers_each_page_once(
        short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = notion_sidecar(short_tmp, sim, WRONG_TOKEN)
    keys = [f"t{n}" for n in range(5)]
    with Client(sc.endpoint, strict=True) as client:
        for key in keys:
            client.emit("notion.page.create", create(db, key), key=key)
    wait_paused(sc, "notion", PAUSED_NOTION, 5)
    assert [r.status for r in sim.requests] == [401]  # one call told the lane all it needed
    assert sc.journal_count("dead_letters") == 0
    assert sc.query("SELECT DISTINCT attempts, unsure FROM events") == [(0, 0)]  # the refusal cost no attempt
    assert_reported_paused(sc, "notion", PAUSED_NOTION, 5)
    assert any("paused: credentials refused by Notion" in line for line in sc.log_lines)

    write_credentials(short_tmp, {"NOTION_TOKEN": sim.token})
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: drained(sc, client), timeout=20, what="the 5 creates after SIGHUP")
    assert sorted(property_value(p, "Name") for p in sim.pages()) == keys  # each exactly once
    assert len(sim.pages()) == 5 and sc.journal_count("dead_letters") == 0
    wait_resumed(sc, "notion")

    # A refusal of one object (403 restricted_resource, 404 object_not_found) is that event's alone.
    sim.inject(Fault(status=403, code="restricted_resource", method="POST", path_prefix="/v1/pages"))
    with Client(sc.endpoint, strict=True) as more:
        more.emit("notion.page.create", create(db, "forbidden"), key="forbidden")
        more.emit("notion.page.create", create("0" * 32, "nowhere"), key="nowhere")
        more.emit("notion.page.create", create(db, "fine"), key="fine")
    wait_until(lambda: drained(sc, more), timeout=20, what="403, 404 and a good create to settle")
    assert sorted(sc.query("SELECT key, reason, status FROM dead_letters")) == [
        ("forbidden", "http_403", 403), ("nowhere", "http_404", 404)]
    assert len(sim.pages()) == 6 and lane_status(sc, "notion")["paused"] is None
    assert_no_secret_anywhere(sc, WRONG_TOKEN, sim.token)
    assert sc.stop() == 0


def test_a_revoked_token_pauses_and_sidecar_reload_picks_up_its_replacement(
        short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = notion_sidecar(short_tmp, sim, sim.token)
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(db, "before"), key="before")
        wait_until(lambda: drained(sc, client), timeout=20, what="a create with the first token")
        sim.token = "secret_rotated" + "r" * 30  # revoked: the old token now answers 401
        for n in range(3):
            client.emit("notion.page.create", create(db, f"after{n}"), key=f"after{n}")
            client.emit("notion.page.update", {"properties": {"Price": {"number": n}}}, ref="before")
    wait_paused(sc, "notion", PAUSED_NOTION, 6)
    unchanged = sc.cli("reload")  # the file still holds the revoked token: one probe, still paused
    assert unchanged.returncode == 0 and f"pid {sc.proc.pid}" in unchanged.stdout  # type: ignore[union-attr]
    wait_until(lambda: "changed for: none" in sc.log_text(), timeout=10, what="the reload to be logged")
    wait_until(lambda: sum(r.status == 401 for r in sim.requests) == 2, timeout=10, what="the reload's probe")
    assert lane_status(sc, "notion")["paused"] == PAUSED_NOTION and sc.journal_count("events") == 6

    write_credentials(short_tmp, {"NOTION_TOKEN": sim.token})
    reloaded = sc.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    wait_until(lambda: drained(sc, client), timeout=20, what="the kept events after sidecar reload")
    assert len(sim.pages()) == 4 and sc.journal_count("dead_letters") == 0
    assert sorted(property_value(p, "Name") for p in sim.pages()) == ["after0", "after1", "after2", "before"]
    before = next(p for p in sim.pages() if property_value(p, "Name") == "before")
    assert property_value(before, "Price") == 2
    assert "changed for: notion" in sc.log_text()
    assert sc.stop() == 0


def test_the_lane_probes_by_itself_and_reads_a_rewritten_credential_file(
        short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = notion_sidecar(short_tmp, sim, WRONG_TOKEN, probe=0.5)
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(db, "p"), key="p")
    wait_paused(sc, "notion", PAUSED_NOTION, 1)
    wait_until(lambda: len(sim.requests) >= 3, timeout=10, what="probes every 0.5 s")
    assert {r.status for r in sim.requests} == {401} and sc.journal_count("dead_letters") == 0
    # Probes do not use up attempts: after three or more, the count is back to 0 between
    # them (a probe in flight counts 1 until its refusal hands it back).
    wait_until(lambda: sc.query("SELECT attempts FROM events") == [(0,)], timeout=10, what="the attempt handed back")
    write_credentials(short_tmp, {"NOTION_TOKEN": sim.token})  # no signal: the next probe reads it
    wait_until(lambda: drained(sc, client), timeout=10, what="the probe with the new file")
    assert len(sim.pages()) == 1
    wait_resumed(sc, "notion")
    assert sc.stop() == 0


def test_a_token_that_was_missing_at_start_is_taken_on_reload(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = notion_sidecar(short_tmp, sim, "")
    (short_tmp / "creds" / "NOTION_TOKEN").unlink()
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(db, "m"), key="m")
    wait_until(lambda: sc.journal_count("events") == 1, timeout=10, what="the event to wait")
    assert "no Notion token" in lane_status(sc, "notion")["paused"] and sim.requests == []
    write_credentials(short_tmp, {"NOTION_TOKEN": sim.token})
    assert sc.cli("reload").returncode == 0
    wait_until(lambda: drained(sc, client), timeout=20, what="delivery after the token appeared")
    assert len(sim.pages()) == 1
    wait_resumed(sc, "notion")
    assert sc.stop() == 0


# -- Naver: the token call refused ----------------------------------------------------

def test_a_refused_naver_token_call_pauses_and_the_right_secret_resumes(short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        for no in (1001, 1002):
            sim.add_product(no, sale_price=500, stock=5)
        wrong = bcrypt.gensalt(4).decode()  # a well-formed secret, not this application's
        sc = start(short_tmp, {"NAVER_CLIENT_ID": sim.client_id, "NAVER_CLIENT_SECRET": wrong},
                   naver={"base_url": sim.url + "/external", "rate_per_second": 20.0, "burst": 2.0, "timeout": 2.0})
        with Client(sc.endpoint, strict=True) as client:
            client.emit("naver.product.update", {"originProductNo": 1001, "salePrice": 1200})
            client.emit("naver.product.update", {"originProductNo": 1002, "stockQuantity": 0})
            client.emit("naver.product.update", {"originProductNo": 1001, "stockQuantity": 9})
        wait_paused(sc, "naver", PAUSED_NAVER, 3)
        assert [(r.path, r.status) for r in sim.requests] == [("/external/" + TOKEN_PATH, 401)]
        assert sc.journal_count("dead_letters") == 0
        assert_reported_paused(sc, "naver", PAUSED_NAVER, 3)
        assert (sim.product(1001)["salePrice"], sim.product(1002)["stockQuantity"]) == (500, 5)

        write_credentials(short_tmp, {"NAVER_CLIENT_SECRET": sim.client_secret})
        assert sc.cli("reload").returncode == 0
        wait_until(lambda: drained(sc, client), timeout=20, what="the kept updates after reload")
        assert (sim.product(1001)["salePrice"], sim.product(1001)["stockQuantity"]) == (1200, 9)
        assert sim.product(1002)["stockQuantity"] == 0
        assert sum(r.path == MULTI_UPDATE_PATH and r.status == 200 for r in sim.requests) == 1
        assert sim.token_issues == 1 and sc.journal_count("dead_letters") == 0
        wait_resumed(sc, "naver")
        assert_no_secret_anywhere(sc, wrong, sim.client_secret)
        assert sc.stop() == 0
