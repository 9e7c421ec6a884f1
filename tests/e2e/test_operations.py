"""Operating the sidecar: systemd notify and watchdog, metrics, health, CLI, breaker, logs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from client import Client
from sidecar.cli import build_parser
from sidecar.errors import ExitCode
from standins.base import Fault
from standins.notion import NotionSimulator

from ..support import ROOT, SidecarProcess, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)


def notion_config(tmp: Path, sim: NotionSimulator, **extra: Any) -> dict[str, Any]:
    return sidecar_config(tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 50.0, "burst": 5.0,
                                       "timeout": 2.0},
                          metrics={"address": f"127.0.0.1:{free_port()}"}, **extra)


def create(db: str, key: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": key}}]}}}


def test_systemd_ready_watchdog_and_stopping(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    path = str(short_tmp / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(path)
    notify.settimeout(20)
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, notion_sim),
                        env={"NOTION_TOKEN": notion_sim.token, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    sc.start(wait_ready=False)
    messages = [notify.recv(4096).decode() for _ in range(4)]
    assert messages[0].startswith("READY=1")
    assert f"MAINPID={sc.proc.pid}" in messages[0]  # type: ignore[union-attr]
    assert messages[1:] == ["WATCHDOG=1"] * 3
    # READY came only after the ingest socket was bound and the journal opened.
    assert (short_tmp / "ingest.sock").exists() and sc.journal_path.exists()
    assert sc.stop() == 0
    rest = []
    while True:
        try:
            rest.append(notify.recv(4096).decode())
        except TimeoutError:
            break
        if rest[-1] == "STOPPING=1":
            break
    assert rest[-1] == "STOPPING=1"
    notify.close()


def test_unit_file_verifies() -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "systemd" / "trading-sidecar.service").read_text()
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RuntimeDirectory=", "StateDirectory=",
                   "LoadCredential=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "MemoryMax=",
                   "TimeoutStopSec=", "CPUAffinity=", "Nice="):
        assert needed in unit, needed
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    sidecar = shutil.which("sidecar") or str(Path(sys.executable).parent / "sidecar")
    local = unit.replace("/opt/trading-sidecar/venv/bin/sidecar", sidecar)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"trading-sidecar-{os.getpid()}.service"
    out.write_text(local)
    try:
        result = subprocess.run(["systemd-analyze", "verify", str(out)], capture_output=True, text=True, timeout=60)
    finally:
        out.unlink()
    assert result.returncode == 0, result.stderr
    assert "trading-sidecar" not in result.stderr, result.stderr


def test_one_scrape_shows_every_metric_with_real_values(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, sim), env={"NOTION_TOKEN": sim.token}).start()
    with Client(sc.endpoint, strict=True) as client:
        for n in range(20):
            client.emit("notion.page.create", create(db, f"m{n}"), key=f"m{n}")
        client.emit("notion.page.create", create("0" * 32, "nowhere"), key="nowhere")  # 404: dead letter
        client.emit("notion.page.update", {"properties": {"Price": {"number": 1}}}, ref="m0")
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(sc.endpoint)
    raw.send(b"garbage")
    # A client whose events 2..4 never arrived: a gap of 3.
    for seq in (1, 5):
        raw.send(orjson.dumps([1, "gappy", seq, "notion.page.create", f"g{seq}", None, 0, create(db, f"g{seq}")]))
    raw.close(linger=2000)
    ctx.term()
    wait_until(lambda: len(sim.pages()) == 22 and sc.journal_count("events") == 0, timeout=30,
               what="deliveries to finish")
    wait_until(lambda: b"sidecar_dead_letters 1.0" in sc.get("/metrics")[1], timeout=10, what="gauges to refresh")
    status, body = sc.get("/metrics")
    text = body.decode()
    assert status == 200

    def value(sample: str) -> float:
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{sample} not in the scrape")

    assert value('sidecar_events_received_total{kind="notion.page.create"}') == 23
    assert value('sidecar_events_journaled_total{kind="notion.page.create"}') == 23
    assert value('sidecar_events_delivered_total{kind="notion.page.create"}') == 22
    assert value('sidecar_events_delivered_total{kind="notion.page.update"}') == 1
    assert value('sidecar_events_dead_lettered_total{kind="notion.page.create",reason="http_404"}') == 1
    assert value('sidecar_events_rejected_total{reason="bad_json"}') == 1
    assert value("sidecar_client_sequence_gaps_total") == 3  # no label per client: ids are the clients' choice
    assert value('sidecar_api_calls_total{api="notion",status="ok"}') == 23
    assert value('sidecar_api_calls_total{api="notion",status="404"}') == 1
    assert value('sidecar_api_call_duration_seconds_count{api="notion"}') == 24
    assert value('sidecar_emit_to_delivery_seconds_count{lane="notion"}') == 23
    assert value('sidecar_queue_depth{lane="notion"}') == 0
    assert value('sidecar_limiter_rate_per_second{lane="notion",source="configured"}') == 50
    assert value('sidecar_limiter_sidecars_sharing{lane="notion"}') == 1
    assert 0 <= value('sidecar_limiter_tokens{lane="notion"}') <= 5
    assert value('sidecar_circuit_breaker_state{lane="notion"}') == 0
    assert value("sidecar_dead_letters") == 1
    assert value("sidecar_journal_size_bytes") > 0
    assert value("sidecar_process_cpu_seconds_total") > 0
    assert value("sidecar_process_resident_memory_bytes") > 10e6
    assert value("sidecar_process_open_fds") > 3
    assert value("sidecar_client_sent_total") == 22
    assert client.client_id not in text
    assert sc.stop() == 0


def test_client_drops_reach_the_sidecar(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, notion_sim),
                        env={"NOTION_TOKEN": notion_sim.token}).start()
    with Client(sc.endpoint) as client:
        client.emit("notion.page.craete", {})  # a typo: counted, not raised
        client.emit("notion.page.update", {"page_id": "x", "properties": {"A": {1, 2}}})
    sample = 'sidecar_client_dropped_total{reason="unknown_kind"} 1.0'
    wait_until(lambda: sample.encode() in sc.get("/metrics")[1], timeout=10, what="the client's drops in a scrape")
    assert b'reason="unserializable"' in sc.get("/metrics")[1]
    assert sc.stop() == 0


def test_status_check_and_health(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, notion_sim),
                        env={"NOTION_TOKEN": notion_sim.token}).start()
    wait_until(lambda: sc.get("/health")[0] == 200, timeout=10, what="health")
    table = sc.cli("status")
    assert table.returncode == 0, table.stderr
    assert "notion" in table.stdout and "breaker" in table.stdout and "dead letters 0" in table.stdout
    status = orjson.loads(sc.cli("status", "--json").stdout)
    assert status["lanes"]["notion"]["breaker"] == "closed"
    assert status["process"]["pid"] == sc.proc.pid  # type: ignore[union-attr]
    check = sc.cli("check")
    assert (check.returncode, check.stdout.strip()) == (0, "OK: sidecar healthy")
    assert sc.stop() == 0
    gone = sc.cli("check")
    assert gone.returncode == 2 and "not reachable" in gone.stdout


def test_missing_token_is_reported_and_events_wait(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTION_TOKEN"}
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, notion_sim))
    sc.env = env
    sc.start()
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(notion_sim.database_id, "w"), key="w")
    wait_until(lambda: sc.journal_count("events") == 1, timeout=10, what="the event to wait in the journal")
    check = wait_until(lambda: (c := sc.cli("check")).returncode == 1 and c, timeout=10,
                       what="check to report the missing token")
    assert "no Notion token" in check.stdout and "NOTION_TOKEN" in check.stdout
    assert "no Notion token" in sc.log_text()
    assert sc.stop() == 0
    assert notion_sim.requests == []


def test_breaker_opens_on_repeated_failures_and_keeps_events(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sim.inject(Fault(status=500, count=4))
    cfg = notion_config(short_tmp, sim, breaker={"failures": 3, "cooldown": 5.0}, retry={"base": 0.01, "cap": 0.02})
    sc = SidecarProcess(short_tmp, config=cfg, env={"NOTION_TOKEN": sim.token}).start()
    with Client(sc.endpoint, strict=True) as client:
        for n in range(5):
            client.emit("notion.page.create", create(db, f"b{n}"), key=f"b{n}")
    wait_until(lambda: orjson.loads(sc.get("/status")[1])["lanes"]["notion"]["breaker"] == "open", timeout=10,
               what="the breaker to open")
    wait_until(lambda: sc.cli("check").returncode == 1, timeout=10, what="check to report the open breaker")
    assert len(sim.requests) == 3  # no calls while open
    assert sc.journal_count("events") == 5  # nothing dropped
    wait_until(lambda: len(sim.pages()) == 5, timeout=20, what="delivery after the probe")
    assert sc.journal_count("dead_letters") == 0
    wait_until(lambda: orjson.loads(sc.get("/status")[1])["lanes"]["notion"]["breaker"] == "closed", timeout=10,
               what="the breaker to close")
    assert sc.stop() == 0


def test_dlq_list_show_retry_purge(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sim.inject(Fault(status=400, code="validation_error", count=2))
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, sim), env={"NOTION_TOKEN": sim.token}).start()
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(db, "d1"), key="d1")
        client.emit("notion.page.create", create(db, "d2"), key="d2")
    wait_until(lambda: sc.journal_count("dead_letters") == 2, timeout=10, what="two dead letters")
    listing = sc.cli("dlq", "list")
    assert listing.returncode == 0 and "http_400" in listing.stdout and "2 dead letter(s)" in listing.stdout
    rows = orjson.loads(sc.cli("dlq", "list", "--json").stdout)
    ids = sorted(r["id"] for r in rows)
    shown = orjson.loads(sc.cli("dlq", "show", str(ids[0])).stdout)
    assert shown["reason"] == "http_400" and "validation_error" in shown["detail"] and shown["key"] == "d1"
    retried = sc.cli("dlq", "retry", str(ids[0]))
    assert retried.returncode == 0 and "1 event(s) queued again" in retried.stdout
    wait_until(lambda: len(sim.pages()) == 1, timeout=10, what="the retried event to be delivered")
    purged = sc.cli("dlq", "purge", "--all", "--yes")
    assert "1 dead letter(s) purged" in purged.stdout
    assert sc.journal_count("dead_letters") == 0
    assert sc.stop() == 0


def test_emit_command_for_scripts(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = SidecarProcess(short_tmp, config=notion_config(short_tmp, sim), env={"NOTION_TOKEN": sim.token})
    down = sc.cli("emit", "notion.page.create", orjson.dumps(create(db, "h")).decode(), "--key", "h")
    assert down.returncode == 3 and "not running" in down.stderr
    sc.start()
    up = sc.cli("emit", "notion.page.create", orjson.dumps(create(db, "h")).decode(), "--key", "h")
    assert up.returncode == 0, up.stderr
    wait_until(lambda: len(sim.pages()) == 1, timeout=10, what="the emitted page")
    bad = sc.cli("emit", "notion.page.craete", "{}")
    assert bad.returncode == 1 and "unknown_kind" in bad.stderr
    assert sc.stop() == 0


def test_startup_errors_say_what_to_do(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    blocker = short_tmp / "a-file"
    blocker.write_text("")
    cfg = notion_config(short_tmp, notion_sim)
    cfg["journal"]["dir"] = str(blocker / "journal")
    bad_dir = SidecarProcess(short_tmp, config=cfg).start(wait_ready=False)
    assert bad_dir.proc is not None and bad_dir.proc.wait(30) == ExitCode.CANNOT_START
    wait_until(lambda: "not writable" in bad_dir.log_text(), timeout=5, what="the journal error")
    assert "set [journal] dir" in bad_dir.log_text()

    first = SidecarProcess(short_tmp, config=notion_config(short_tmp, notion_sim),
                           env={"NOTION_TOKEN": notion_sim.token}).start()
    (short_tmp / "second").mkdir()
    cfg2 = notion_config(short_tmp / "second", notion_sim)
    cfg2["ingest"]["endpoint"] = first.endpoint
    second = SidecarProcess(short_tmp / "second", config=cfg2).start(wait_ready=False)
    assert second.proc is not None and second.proc.wait(30) == ExitCode.CANNOT_START
    wait_until(lambda: "in use" in second.log_text(), timeout=5, what="the socket-in-use error")
    assert first.stop() == 0


def test_a_config_error_a_usage_error_and_not_reachable_have_their_own_exit_codes(short_tmp: Path) -> None:
    sidecar = [sys.executable, "-m", "sidecar"]
    bad = short_tmp / "bad.toml"
    bad.write_text("[notion]\nrate_per_secnod = 2\n")
    for command in ("run", "check", "status"):
        run = subprocess.run([*sidecar, command, "--config", str(bad)], capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == ExitCode.CONFIG == 78, run.stderr
        assert "rate_per_secnod" in run.stderr and "Traceback" not in run.stderr
    usage = subprocess.run([*sidecar, "check", "--no-such-flag"], capture_output=True, text=True, cwd=ROOT)
    assert usage.returncode == ExitCode.USAGE == 64
    unreachable = short_tmp / "unreachable.toml"
    unreachable.write_text(f'[metrics]\naddress = "127.0.0.1:{free_port()}"\n')
    check = subprocess.run([*sidecar, "check", "--config", str(unreachable)], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == ExitCode.UNAVAILABLE == 2 and "not reachable" in check.stdout


def test_help_lists_every_exit_code_with_its_meaning() -> None:
    listing = build_parser().format_help().split("exit codes:\n", 1)[1]
    codes = [int(line.split()[0]) for line in listing.splitlines() if line.split() and line.split()[0].isdigit()]
    assert codes == [int(code) for code in ExitCode]  # each once, in order
    flat = " ".join(listing.split())  # as wrapped for the terminal
    for code in ExitCode:
        assert f"{code.value} {code.meaning}" in flat


@pytest.mark.parametrize("command, extra", [("run", "sidecar"), ("demo", "demo")])
def test_without_the_extra_a_command_prints_one_line_naming_the_install(command: str, extra: str) -> None:
    # As in a venv with only `pip install trading-sidecar`: psutil (of [sidecar]) cannot be imported.
    hide = "import sys; sys.modules['psutil'] = None; from sidecar.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", hide, command], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == ExitCode.UNAVAILABLE == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"pip install 'trading-sidecar[{extra}]'" in run.stderr and "psutil is not installed" in run.stderr


def test_no_secret_reaches_a_log_line(short_tmp: Path) -> None:
    secret = "secret_Zq8Tk3" + "x" * 30
    with NotionSimulator(token="a-different-token", rate_per_second=50, burst=50) as sim:
        db = sim.create_database(title="T", properties={"Name": "title", "Idempotency Key": "rich_text"})
        cfg = notion_config(short_tmp, sim, log={"json": True, "level": "DEBUG"})
        sc = SidecarProcess(short_tmp, config=cfg, env={"NOTION_TOKEN": secret}).start()
        with Client(sc.endpoint, strict=True) as client:
            client.emit("notion.page.create", create(db, "s"), key="s")  # 401: the token is wrong
        wait_until(lambda: sc.query("SELECT last_error FROM events WHERE last_error IS NOT NULL"), timeout=10,
                   what="the 401 to pause the lane, the event kept")
        assert sc.stop() == 0
    lines = sc.log_lines
    assert any("credentials refused by Notion" in line for line in lines)
    for line in lines:
        assert secret not in line
        orjson.loads(line)  # every line is JSON
    error = sc.query("SELECT last_error FROM events")[0][0]
    assert secret not in error and "unauthorized" in error
