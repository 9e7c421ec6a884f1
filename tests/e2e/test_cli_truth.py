"""The CLI and the unit tell the truth: each behaviour over the real `sidecar` command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from client import Client
from sidecar.errors import ExitCode
from sidecar.ops.credentials import how_to_provide
from standins.base import Fault
from standins.notion import NotionSimulator
from standins.process import SidecarProcess

from ..support import ROOT, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)

SIDECAR = [sys.executable, "-m", "sidecar"]
UNIT = ROOT / "systemd" / "trading-sidecar.service"


def sidecar(*args: str, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIDECAR, *args], capture_output=True, text=True, cwd=ROOT, env=env, stdin=stdin,
                          timeout=60)


def notion_sidecar(tmp: Path, sim: NotionSimulator, env: dict[str, str] | None = None) -> SidecarProcess:
    cfg = sidecar_config(tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 50.0, "burst": 5.0,
                                      "timeout": 2.0},
                         metrics={"address": f"127.0.0.1:{free_port()}"})
    return SidecarProcess(tmp, config=cfg, env=env if env is not None else {"NOTION_TOKEN": sim.token})


def create(db: str, key: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": key}}]}}}


# -- sidecar --version ------------------------------------------------------------------------------


def test_version_prints_the_installed_version_and_exits_0() -> None:
    from importlib.metadata import version

    run = sidecar("--version")
    assert (run.returncode, run.stdout.strip()) == (0, f"sidecar {version('trading-sidecar')}")


# -- sidecar emit refuses what ingest would refuse, and `sidecar rejects` shows what ingest refused ----

REFUSED = [  # (kind, payload, blob, reason, words of the detail)
    ("s3.put", {"key": "reports/a.csv"}, b"a,b\n", "bad_payload", "bucket"),
    ("notion.page.update", {"properties": {"Price": {"number": 1}}}, None, "bad_payload", "page_id"),
    ("webhook.post", {"text": "no webhook is configured"}, None, "unknown_kind", "no connector delivers"),
]


def test_emit_exits_1_for_an_event_the_sidecar_refuses_with_ingests_own_reason(
        short_tmp: Path, notion_sim: NotionSimulator, tmp_path: Path) -> None:
    sc = notion_sidecar(short_tmp, notion_sim)
    # No sidecar needed to refuse: the check runs before the socket is looked for.
    for kind, payload, blob, reason, words in REFUSED:
        files = []
        if blob is not None:
            (tmp_path / "blob").write_bytes(blob)
            files = ["--blob", str(tmp_path / "blob")]
        run = sc.cli("emit", kind, orjson.dumps(payload).decode(), *files)
        assert run.returncode == ExitCode.FAILED == 1, run.stderr
        assert f"event refused: {reason}: {kind}" in run.stderr and words in run.stderr, run.stderr
    sc.start()
    good = sc.cli("emit", "notion.page.create", orjson.dumps(create(notion_sim.database_id, "ok")).decode(),
                  "--key", "ok")
    assert good.returncode == 0, good.stderr
    # The same events sent past the CLI: ingest rejects each, for the reason the CLI gave.
    with Client(sc.endpoint) as client:
        for kind, payload, blob, _, _ in REFUSED:
            assert client.emit(kind, payload, blob=blob)
    wait_until(lambda: sc.journal_count("rejects") == len(REFUSED), timeout=10, what="ingest to reject them all")
    listed = sc.cli("rejects", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = orjson.loads(listed.stdout)
    assert doc["counts"] == {"bad_payload": {"total": 2, "unsampled": 0},
                             "unknown_kind": {"total": 1, "unsampled": 0}}
    details = " ".join(s["detail"] for s in doc["samples"])
    assert all(words in details for *_, words in REFUSED), details
    table = sc.cli("rejects", "--reason", "unknown_kind")
    assert table.returncode == 0, table.stderr
    assert "bad_payload" in table.stdout and "unknown_kind" in table.stdout  # the counts: every reason
    assert table.stdout.count("\n#") == 1 and "webhook.post" in table.stdout  # the samples: that reason's
    wait_until(lambda: len(notion_sim.pages()) == 1, timeout=10, what="the good event delivered")
    assert sc.stop() == 0


def test_rejects_without_a_journal_says_where_it_looked(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    run = notion_sidecar(short_tmp, notion_sim).cli("rejects")
    assert run.returncode == 1 and "no journal at" in run.stderr


# -- dlq: usage errors and a purge that asks ------------------------------------------------------------


def test_dlq_retry_without_ids_is_a_usage_error_and_purge_all_asks(
        short_tmp: Path, notion_sim: NotionSimulator) -> None:
    notion_sim.inject(Fault(status=400, code="validation_error", count=2))
    sc = notion_sidecar(short_tmp, notion_sim).start()
    with Client(sc.endpoint, strict=True) as client:
        for key in ("d1", "d2"):
            client.emit("notion.page.create", create(notion_sim.database_id, key), key=key)
    wait_until(lambda: sc.journal_count("dead_letters") == 2, timeout=10, what="two dead letters")

    for action in ("retry", "purge"):
        run = sc.cli("dlq", action)
        assert run.returncode == ExitCode.USAGE == 64 and "--all" in run.stderr, run.stderr
    refused = sc.cli("dlq", "purge", "--all")  # stdin is not a terminal
    assert refused.returncode == 64 and "add --yes" in refused.stderr
    assert sc.journal_count("dead_letters") == 2

    def on_a_terminal(answer: bytes) -> subprocess.CompletedProcess[str]:
        main, other = os.openpty()
        os.write(main, answer)
        try:
            return subprocess.run([*SIDECAR, "dlq", "purge", "--all", "--config", str(sc.config_path)],
                                  stdin=other, capture_output=True, text=True, env=sc.env, timeout=60)
        finally:
            os.close(main)
            os.close(other)

    no = on_a_terminal(b"n\n")
    assert no.returncode == 64 and "purge every dead letter for good? [y/N]" in no.stdout
    assert sc.journal_count("dead_letters") == 2
    yes = on_a_terminal(b"y\n")
    assert yes.returncode == 0 and "2 dead letter(s) purged" in yes.stdout, yes.stderr
    notion_sim.inject(Fault(status=400, code="validation_error", count=1))
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(notion_sim.database_id, "d3"), key="d3")
    wait_until(lambda: sc.journal_count("dead_letters") == 1, timeout=10, what="a third dead letter")
    forced = sc.cli("dlq", "purge", "--all", "--yes")
    assert forced.returncode == 0 and "1 dead letter(s) purged" in forced.stdout
    assert sc.stop() == 0


# -- sidecar validate ---------------------------------------------------------------------------------


def test_validate_checks_the_config_and_names_the_secrets_never_their_values(tmp_path: Path) -> None:
    token = "secret_validate_" + "q" * 30
    good = tmp_path / "good.toml"
    good.write_text(f'[journal]\ndir = "{tmp_path}"\n[webhooks.alerts]\nurl = "http://127.0.0.1:9/hook"\n')
    base = {k: v for k, v in os.environ.items()
            if k not in ("NOTION_TOKEN", "NAVER_CLIENT_ID", "NAVER_CLIENT_SECRET", "CREDENTIALS_DIRECTORY")}
    without = sidecar("validate", "--config", str(good), env=base)
    assert without.returncode == 0, without.stderr
    assert f"config {good}: every setting is valid" in without.stdout
    assert "notion: off until its secrets are readable: no Notion token: set $NOTION_TOKEN" in without.stdout
    assert "$NAVER_CLIENT_ID and $NAVER_CLIENT_SECRET" in without.stdout
    assert "alerts: ready" in without.stdout

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "NOTION_TOKEN").write_text(token)
    withtoken = sidecar("validate", "--config", str(good), env={**base, "CREDENTIALS_DIRECTORY": str(creds)})
    assert withtoken.returncode == 0 and "notion: ready (NOTION_TOKEN readable)" in withtoken.stdout
    assert token not in withtoken.stdout + withtoken.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[notion]\nburst = 0.5\n")
    wrong = sidecar("validate", "--config", str(bad), env=base)
    assert wrong.returncode == ExitCode.CONFIG == 78
    assert "[notion] burst must be 1 or more, got 0.5" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = sidecar("validate", "--config", str(tmp_path / "nope.toml"), env=base)
    assert missing.returncode == 78 and "does not exist" in missing.stderr


# -- a missing credential says what will fix it, and that fix works -----------------------------------


def test_a_missing_token_message_names_the_file_reload_reads_and_following_it_delivers(
        short_tmp: Path, notion_sim: NotionSimulator) -> None:
    creds = short_tmp / "creds"
    creds.mkdir()
    sc = notion_sidecar(short_tmp, notion_sim, env={"CREDENTIALS_DIRECTORY": str(creds)})
    sc.env.pop("NOTION_TOKEN", None)
    sc.start()
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create(notion_sim.database_id, "w"), key="w")
    check = wait_until(lambda: (c := sc.cli("check")).returncode == 1 and c, timeout=10,
                       what="check to report the missing token")
    fix = f"write {creds}/NOTION_TOKEN, then `sidecar reload`"
    assert fix in check.stdout and fix in sc.log_text()
    (creds / "NOTION_TOKEN").write_text(notion_sim.token)  # what the message says, and nothing else
    assert sc.cli("reload").returncode == 0
    wait_until(lambda: len(notion_sim.pages()) == 1, timeout=20, what="the waiting page after the reload")
    assert sc.stop() == 0


def test_under_systemd_a_missing_credential_asks_for_a_restart_not_a_reload() -> None:
    systemd = {"CREDENTIALS_DIRECTORY": "/run/credentials/trading-sidecar.service", "INVOCATION_ID": "0" * 32}
    said = how_to_provide("NOTION_TOKEN", environ=systemd)
    assert "/etc/trading-sidecar/credentials/notion-token (LoadCredential=NOTION_TOKEN:)" in said
    assert "`systemctl restart trading-sidecar`" in said and "then `sidecar reload`" not in said
    bare = how_to_provide("NAVER_CLIENT_ID", "NAVER_CLIENT_SECRET", environ={})
    assert bare.startswith("set $NAVER_CLIENT_ID and $NAVER_CLIENT_SECRET and restart the sidecar")


# -- the unit -----------------------------------------------------------------------------------------


def local_unit(tmp: Path) -> Path:
    """The unit with ExecStart on this checkout's entry point (verify checks that it exists)."""
    entry = shutil.which("sidecar") or str(Path(sys.executable).parent / "sidecar")
    out = tmp / "trading-sidecar.service"
    out.write_text(UNIT.read_text().replace("/opt/trading-sidecar/venv/bin/sidecar", entry))
    return out


def test_the_unit_scores_4_or_lower_on_systemd_analyze_security(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    run = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(local_unit(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    if "--offline" in run.stderr and "unrecognized" in run.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout)
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= 4.0, run.stdout


def test_the_unit_does_not_restart_on_errors_only_an_operator_can_fix() -> None:
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line
                    and not line.startswith("#"))
    assert set(settings["RestartPreventExitStatus"].split()) == {
        str(int(code)) for code in (ExitCode.USAGE, ExitCode.CANNOT_START, ExitCode.CONFIG)}
    assert int(settings["LimitNOFILE"]) >= 65536


MDWE_SITE = """
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0:
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("MDWE on: a writable+executable mapping is refused", file=sys.stderr, flush=True)
"""


def test_the_sidecar_runs_and_delivers_under_memory_deny_write_execute(
        short_tmp: Path, notion_sim: NotionSimulator) -> None:
    # The kernel's PR_SET_MDWE is what MemoryDenyWriteExecute= enforces; set in a
    # sitecustomize, it holds for the whole sidecar process from its first line.
    site = short_tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(MDWE_SITE)
    sc = notion_sidecar(short_tmp, notion_sim, env={"NOTION_TOKEN": notion_sim.token, "PYTHONPATH": str(site)})
    sc.start()
    if "MDWE on" not in sc.log_text():
        sc.stop()
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    with Client(sc.endpoint, strict=True) as client:  # rings, the doorbell, pyzmq, orjson, httpx, psutil
        for n in range(5):
            client.emit("notion.page.create", create(notion_sim.database_id, f"m{n}"), key=f"m{n}")
    wait_until(lambda: len(notion_sim.pages()) == 5, timeout=20, what="deliveries under MDWE")
    assert sc.get("/metrics")[0] == 200
    assert sc.stop() == 0
    assert "Traceback" not in sc.log_text()


# -- stand-ins on their own ---------------------------------------------------------------------------


def start_standin(module: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"{module} exited {proc.wait()} before printing its URL")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    return proc.wait(30)


def test_the_notion_stand_in_runs_on_its_own_port_and_answers() -> None:
    port = free_port()
    proc, info = start_standin("standins.notion", "--port", str(port), "--token", "secret_own")
    try:
        assert info["url"] == f"http://127.0.0.1:{port}"
        request = urllib.request.Request(f"{info['url']}/v1/databases/{info['database_id']}", headers={
            "Authorization": "Bearer secret_own", "Notion-Version": "2022-06-28"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200 and json.load(answer)["id"] == info["database_id"]
    finally:
        assert stop(proc) == 0


def test_the_naver_stand_in_seeds_products_and_the_s3_one_has_its_bucket() -> None:
    proc, info = start_standin("standins.naver", "--products", "7,8")
    try:
        assert info["products"] == [7, 8] and info["url"].startswith("http://127.0.0.1:")
    finally:
        assert stop(proc) == 0
    import boto3
    import botocore.config

    proc, info = start_standin("standins.s3", "--bucket", "reports")
    try:
        s3 = boto3.client("s3", endpoint_url=info["url"], region_name=info["region"],
                          aws_access_key_id=info["access_key"], aws_secret_access_key=info["secret_key"],
                          config=botocore.config.Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="reports", Key="a.csv", Body=b"a,b\n")  # signed with its key, in its bucket
        assert s3.get_object(Bucket="reports", Key="a.csv")["Body"].read() == b"a,b\n"
    finally:
        assert stop(proc) == 0
