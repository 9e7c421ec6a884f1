"""A journal on a full (3 MB) filesystem, with a real sidecar process, a real
client emitting 60,000 events through its ring and the Notion simulator:
ingest stops taking events without stopping the sidecar, status, check and
/health say so in one line, and once space returns every event reaches
Notion exactly once, in order."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from standins.base import Fault
from standins.notion import NotionSimulator

from ..support import ROOT, SidecarProcess, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(300)

EVENTS = 60_000
PAGES = 4


@pytest.fixture
def small_fs(short_tmp: Path) -> Iterator[Path]:
    """A 3 MB tmpfs for the journal (root only: skipped where mount is not permitted)."""
    mount = short_tmp / "journal"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def producer(endpoint: str, db: str, out: Path) -> subprocess.Popen[bytes]:
    """PAGES creates, then EVENTS appends spread over them, through a ring big enough for all."""
    script = textwrap.dedent(f"""
        import json
        from client import Client
        c = Client({endpoint!r}, strict=True, ring_bytes=64 << 20)
        for p in range({PAGES}):
            c.emit("notion.page.create", {{"parent": {{"database_id": {db!r}}},
                   "properties": {{"Name": {{"title": [{{"text": {{"content": f"page {{p}}"}}}}]}}}}}}, key=f"p{{p}}")
        for n in range({EVENTS}):
            c.emit("notion.blocks.append", {{"children": [{{"object": "block", "type": "paragraph", "paragraph":
                   {{"rich_text": [{{"type": "text", "text": {{"content": f"e{{n}}"}}}}]}}}}]}}, ref=f"p{{n % {PAGES}}}")
        stats = c.stats()
        c.close()
        open({str(out)!r}, "w").write(json.dumps({{"client_id": c.client_id, "stats": stats}}))
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)


def status(sc: SidecarProcess) -> dict[str, Any]:
    return orjson.loads(sc.get("/status")[1])


def texts(sim: NotionSimulator, page_id: str) -> list[str]:
    return ["".join(t["plain_text"] for t in b["paragraph"]["rich_text"]) for b in sim.children(page_id)]


def test_disk_full_holds_events_in_the_ring_and_delivers_each_once_when_space_returns(
        short_tmp: Path, small_fs: Path, fast_notion: NotionSimulator) -> None:
    sim = fast_notion
    # Appends fail until the disk has filled: the lane can free nothing meanwhile,
    # and its own journal writes (deferring the retries) hit the full disk too.
    sim.inject(Fault(status=503, code="service_unavailable", method="PATCH", path_prefix="/v1/blocks",
                     count=10**9))
    cfg = sidecar_config(short_tmp, journal={"dir": str(small_fs)},
                         notion={"base_url": sim.url + "/v1", "rate_per_second": 200.0, "burst": 50.0,
                                 "timeout": 2.0},
                         breaker={"failures": 5, "cooldown": 0.5}, retry={"max_attempts": 0},
                         metrics={"address": f"127.0.0.1:{free_port()}"})
    sc = SidecarProcess(short_tmp, config=cfg, env={"NOTION_TOKEN": sim.token}).start()
    out = short_tmp / "producer.json"
    proc = producer(sc.endpoint, sim.database_id, out)  # type: ignore[attr-defined]
    assert proc.wait(120) == 0
    report = orjson.loads(out.read_bytes())
    assert report["stats"]["dropped"] == {}  # the ring held what the journal could not

    wait_until(lambda: status(sc)["journal"]["state"] == "disk full", timeout=60, what="the journal full")
    assert sc.proc is not None and sc.proc.poll() is None
    code, body = sc.get("/health")
    assert code == 503 and b"journal disk full" in body
    check = sc.cli("check")
    assert check.returncode == 1 and len(check.stdout.strip().splitlines()) == 1
    assert "journal disk full" in check.stdout
    shown = sc.cli("status")
    assert shown.returncode == 0 and "disk full" in shown.stdout
    journaled = status(sc)["ingest"]["received"]
    assert journaled < EVENTS  # the rest waits in the ring
    _, metrics = sc.get("/metrics")
    assert b'sidecar_journal_state{sidecar_journal_state="disk full"} 1.0' in metrics

    # Space returns as the lane delivers (each delivered row frees its pages).
    sim.reset_faults_and_log()
    page_ids = {}
    try:
        for p in range(PAGES):
            page_ids[p] = wait_until(lambda p=p: sc.query("SELECT target_id FROM refs WHERE key=?", f"p{p}"),
                                     timeout=60, what=f"page p{p} created")[0][0]
        wait_until(lambda: sum(len(sim.children(pid)) for pid in page_ids.values()) >= EVENTS,
                   timeout=150, interval=0.5, what="every append delivered")
    except AssertionError:
        raise AssertionError(f"{status(sc)}\n{sc.log_text()[-6000:]}") from None
    for p, pid in page_ids.items():
        assert texts(sim, pid) == [f"e{n}" for n in range(p, EVENTS, PAGES)]  # each once, in order
    assert len(sim.pages()) == PAGES
    wait_until(lambda: status(sc)["journal"]["state"] == "ok" and sc.journal_count("events") == 0, timeout=30,
               what="the journal writable and empty")
    assert sc.query("SELECT last_seq, gaps FROM clients WHERE client_id=?", report["client_id"]) \
        == [(PAGES + EVENTS, 0)]
    wait_until(lambda: sc.cli("check").returncode == 0, timeout=10, what="check healthy again")

    def changes() -> list[str]:
        return [line for line in sc.log_text().splitlines()
                if "journal disk full" in line or "journal writable again" in line]

    # The log ends on the state as it is: a journal that filled again and again while the
    # backlog flowed through it logs its changes at most once per journal_health.LOG_EVERY.
    wait_until(lambda: "journal writable again" in changes()[-1], timeout=30, what="the log's last word: writable")
    assert "Traceback" not in sc.log_text()
    assert 2 <= len(changes()) <= 20, changes()  # a line per change of state, not one per failed write
    assert not list((small_fs / "blobs").iterdir())
    assert sc.stop() == 0
