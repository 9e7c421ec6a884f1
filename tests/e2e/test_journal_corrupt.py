"""A corrupt journal at start, with a real sidecar process, a real client
emitting through its ring, and the Notion simulator: the file is set aside,
what it held comes back and is delivered exactly once, `check` stays degraded
until an operator acknowledges it, and `--no-recover` refuses to start."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from client import Client
from standins.notion import NotionSimulator, property_value

from ..support import SidecarProcess, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(180)

PAGE = 4096


def config(tmp: Path, sim: NotionSimulator) -> dict[str, Any]:
    # A fixed port: `sidecar check` reads it from the config.
    return sidecar_config(tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 30.0, "burst": 10.0,
                                       "timeout": 2.0}, metrics={"address": f"127.0.0.1:{free_port()}"})


def create(db: str, key: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": key}}]}}}


def keys_in(sim: NotionSimulator) -> list[str]:
    return sorted(property_value(p, "Idempotency Key") for p in sim.pages())


def journal_events(sc: SidecarProcess, client: Client, count: int, prefix: str) -> list[str]:
    """Emit `count` creates through the ring and wait until all are journaled."""
    keys = [f"{prefix}-{n:04d}" for n in range(count)]
    for key in keys:
        assert client.emit("notion.page.create", create(client.db, key), key=key)  # type: ignore[attr-defined]
    wait_until(lambda: sc.query("SELECT last_seq FROM clients WHERE client_id=?", client.client_id)
               == [(client.stats()["sent"],)], timeout=30, what="every event journaled")
    return keys


def break_index_page(journal: Path) -> None:
    """Overwrite the root page of an index with garbage: quick_check fails,
    every table row is still readable."""
    conn = sqlite3.connect(journal)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='events_by_target'").fetchone()
    conn.close()
    with open(journal, "r+b") as f:
        f.seek((root - 1) * PAGE)
        f.write(b"\xa5" * PAGE)


def recover_works(tmp: Path) -> bool:
    """Whether this machine's sqlite3 tool can .recover (some builds lack sqlite_dbpage)."""
    tool = shutil.which("sqlite3")
    if tool is None:
        return False
    db = tmp / "probe.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    out = subprocess.run([tool, str(db), ".recover"], capture_output=True, timeout=30)
    db.unlink()
    return out.returncode == 0


def check(sc: SidecarProcess) -> tuple[int, str]:
    out = sc.cli("check")
    return out.returncode, out.stdout.strip()


@pytest.mark.parametrize("tool", ["sqlite3 .recover", "row by row"])
def test_a_corrupt_journal_is_set_aside_and_every_event_it_held_reaches_notion_once(
        short_tmp: Path, notion_sim: NotionSimulator, tool: str) -> None:
    sim = notion_sim
    env = {"NOTION_TOKEN": ""}  # paused: the events stay in the journal for the damage to hit
    if tool == "sqlite3 .recover" and not recover_works(short_tmp):
        pytest.skip("this machine's sqlite3 tool cannot .recover (built without sqlite_dbpage)")
    if tool == "row by row":
        env["PATH"] = "/nonexistent"  # no sqlite3 tool: the fallback reads the old file itself
    cfg = config(short_tmp, sim)
    sc = SidecarProcess(short_tmp, config=cfg, env=env).start()
    client = Client(sc.endpoint, strict=True)
    client.db = sim.database_id  # type: ignore[attr-defined]
    before = journal_events(sc, client, 300, "old")
    assert sc.stop() == 0
    break_index_page(sc.journal_path)

    sc = SidecarProcess(short_tmp, config=cfg, env={**env, "NOTION_TOKEN": sim.token}).start()
    log = sc.log_text()
    assert "is corrupt" in log
    assert "recovered 300 event(s)" in log
    assert f"{tool})" in log
    assert "Traceback" not in log
    aside = [n for n in os.listdir(sc.journal_path.parent) if n.startswith("journal.db.corrupt-")]
    assert len(aside) == 1 and not aside[0].endswith(".recovered")
    # The same client goes on after the restart: nothing doubled, nothing lost.
    after = journal_events(sc, client, 50, "new")
    client.close()
    wait_until(lambda: len(sim.pages()) >= 350 and sc.journal_count("events") == 0, timeout=60,
               what="every event delivered")
    assert keys_in(sim) == sorted(before + after)  # each exactly once
    assert sc.query("SELECT gaps FROM clients WHERE client_id=?", client.client_id) == [(0,)]
    _, metrics = sc.get("/metrics")
    assert b"sidecar_journal_corrupt_total 1.0" in metrics
    assert b"sidecar_journal_recovered_events_total 300.0" in metrics

    code, line = check(sc)
    assert code == 1 and "journal was corrupt" in line and "300 event(s) recovered" in line
    assert sc.get("/health")[0] == 503
    ack = sc.cli("ack-corrupt-journal")
    assert ack.returncode == 0 and aside[0] in ack.stdout
    wait_until(lambda: check(sc)[0] == 0, timeout=10, what="check healthy after the acknowledgement")
    assert sc.stop() == 0


def test_a_file_that_is_not_a_database_starts_a_fresh_journal(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim = notion_sim
    cfg = config(short_tmp, sim)
    journal = Path(cfg["journal"]["dir"])
    journal.mkdir()
    garbage = os.urandom(64 * 1024)
    (journal / "journal.db").write_bytes(garbage)
    sc = SidecarProcess(short_tmp, config=cfg, env={"NOTION_TOKEN": sim.token}).start()
    log = sc.log_text()
    assert "file is not a database" in log and "recovered 0 event(s)" in log and "Traceback" not in log
    aside = [journal / n for n in os.listdir(journal) if n.startswith("journal.db.corrupt-")]
    assert [p.read_bytes() for p in aside] == [garbage]  # kept as it was, for the operator
    with Client(sc.endpoint, strict=True) as client:
        for n in range(20):
            client.emit("notion.page.create", create(sim.database_id, f"k{n}"), key=f"k{n}")
    wait_until(lambda: len(sim.pages()) == 20 and sc.journal_count("events") == 0, timeout=30,
               what="the new events delivered")
    assert keys_in(sim) == sorted(f"k{n}" for n in range(20))
    assert check(sc)[0] == 1
    assert sc.stop() == 0


def test_no_recover_refuses_to_start_and_leaves_the_file_alone(short_tmp: Path,
                                                              notion_sim: NotionSimulator) -> None:
    cfg = config(short_tmp, notion_sim)
    journal = Path(cfg["journal"]["dir"])
    journal.mkdir()
    garbage = os.urandom(16 * 1024)
    (journal / "journal.db").write_bytes(garbage)
    sc = SidecarProcess(short_tmp, config=cfg)
    out = sc.cli("run", "--no-recover")
    assert out.returncode == 4
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is corrupt" in errors[0] and "--no-recover" in errors[0]
    # The journal is as it was, beside the lock every start takes (sidecar/ops/lock.py).
    assert sorted(os.listdir(journal)) == ["blobs", "journal.db", "lock"]
    assert (journal / "journal.db").read_bytes() == garbage


def test_row_by_row_recovery_skips_only_the_rows_of_a_broken_page(tmp_path: Path) -> None:
    from sidecar.journal.repair import recover_into, set_aside
    from sidecar.journal.store import EventRow, Journal

    journal = Journal.open(tmp_path / "old", synchronous="NORMAL")
    journal.write_batch([EventRow("notion", "notion.page.create", f"t{n}", f"k{n}", None, "c", n, 0, 0,
                                  b"x" * 300, None) for n in range(1, 1001)],
                        clients={"c": (1000, 0, False, None)})
    journal.close()
    path = tmp_path / "old" / "journal.db"
    conn = sqlite3.connect(path)
    # A leaf page of the events table in the middle of the file.
    (_first,) = conn.execute("SELECT rowid FROM events WHERE seq=500").fetchone()
    conn.close()
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(b"k500")  # somewhere in the page holding event 500
        f.seek(at - at % PAGE)
        f.write(b"\xa5" * PAGE)
    aside = set_aside(path)
    fresh = Journal.open(tmp_path / "old", synchronous="NORMAL")
    recovered, _ = recover_into(aside, fresh)
    seqs = [seq for (seq,) in fresh.conn.execute("SELECT seq FROM events ORDER BY id")]
    assert 900 < recovered == len(seqs) < 1000  # one page of ~12 rows lost, the rest back
    assert seqs == sorted(seqs) and seqs[0] == 1 and seqs[-1] == 1000 and 500 not in seqs
    # The client's sequence survives in full: a resend of any old number is a replay.
    assert fresh.clients.states()["c"].last_seq == 1000
    fresh.close()


def test_recovered_refs_keep_their_age_order_so_expiry_takes_the_oldest_first(tmp_path: Path) -> None:
    from sidecar.journal.repair import recover_into, set_aside
    from sidecar.journal.store import Journal

    journal = Journal.open(tmp_path / "old", synchronous="NORMAL")
    journal.conn.executemany("INSERT INTO refs (lane, key, target_id, created_at) VALUES (?,?,?,?)",
                             [("notion", f"ref{n:04d}", "p" * 200, float(n)) for n in range(1, 1001)])
    journal.close()
    path = tmp_path / "old" / "journal.db"
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(b"ref0500")  # a leaf page of refs in the middle: the rows behind it are read backwards
        f.seek(at - at % PAGE)
        f.write(b"\xa5" * PAGE)
    aside = set_aside(path)
    fresh = Journal.open(tmp_path / "old", synchronous="NORMAL")
    recover_into(aside, fresh)
    ages = [at for (at,) in fresh.conn.execute("SELECT created_at FROM refs ORDER BY rowid")]
    assert 900 < len(ages) < 1000 and ages == sorted(ages)
    assert fresh.expire(refs_before=101.0, rejects_before=0.0) == (100, 0)  # refs 1..100, and only those
    fresh.close()
