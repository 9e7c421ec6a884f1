"""The ring hand-off with a real sidecar process: nothing lost and nothing
doubled when the sidecar is killed, or is away while a producer exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ..support import ROOT, SidecarProcess, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(180)

# A Notion lane without a token is paused: every event stays in the journal,
# where it can be counted by (client_id, seq).
NO_TOKEN = {"NOTION_TOKEN": ""}


def producer(endpoint: str, count: int, rate: int, out: Path) -> subprocess.Popen[bytes]:
    """A paced producer process; writes its client id, close() time and stats to `out`."""
    script = textwrap.dedent(f"""
        import json, time
        from client import Client
        c = Client({endpoint!r}, strict=True)
        start = time.perf_counter()
        for n in range({count}):
            due = start + n / {rate}
            while time.perf_counter() < due:
                pass
            assert c.emit("notion.page.create", {{"parent": {{"database_id": "db"}}, "n": n}}, key=f"k{{n}}")
        stats = c.stats()
        t = time.perf_counter()
        c.close()
        closed = time.perf_counter() - t
        open({str(out)!r}, "w").write(json.dumps({{"client_id": c.client_id, "close_seconds": closed,
                                                   "stats": stats}}))
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)


def journaled_seqs(sc: SidecarProcess, client_id: str) -> list[int]:
    rows = sc.query("SELECT seq FROM events WHERE client_id=? UNION ALL "
                    "SELECT seq FROM dead_letters WHERE client_id=?", client_id, client_id)
    return sorted(seq for (seq,) in rows)


def sidecar(tmp: Path) -> SidecarProcess:
    return SidecarProcess(tmp, config=sidecar_config(tmp), env=NO_TOKEN)


def test_kill_9_twice_while_emitting_loses_nothing_and_doubles_nothing(short_tmp: Path) -> None:
    import orjson

    sc = sidecar(short_tmp).start()
    out = short_tmp / "producer.json"
    count, rate = 12_000, 3_000
    proc = producer(sc.endpoint, count, rate, out)
    for _ in range(2):
        time.sleep(1.0)
        sc.kill()               # SIGKILL: no drain, no goodbye
        time.sleep(1.0)         # the producer keeps emitting into its ring meanwhile
        sc.start()
    assert proc.wait(60) == 0
    report = orjson.loads(out.read_bytes())
    assert report["stats"]["dropped"] == {}
    client_id = report["client_id"]
    wait_until(lambda: sc.query("SELECT closed FROM clients WHERE client_id=?", client_id) == [(1,)],
               timeout=30, what="the producer's closing message journaled")
    assert journaled_seqs(sc, client_id) == list(range(1, count + 1))  # each once: none lost, none doubled
    assert sc.query("SELECT gaps FROM clients WHERE client_id=?", client_id) == [(0,)]
    wait_until(lambda: not [n for n in os.listdir(short_tmp / "ingest.rings") if n.endswith(".ring")],
               timeout=10, what="the drained ring of the exited producer removed")
    assert sc.stop() == 0


def test_a_producer_that_exits_while_the_sidecar_is_down_is_delivered_when_it_starts(short_tmp: Path) -> None:
    import orjson

    sc = sidecar(short_tmp).start()
    assert sc.stop() == 0       # down, as during an upgrade
    out = short_tmp / "producer.json"
    count = 20_000
    proc = producer(sc.endpoint, count, 1_000_000, out)
    assert proc.wait(60) == 0
    report = orjson.loads(out.read_bytes())
    assert report["stats"]["sent"] == count and report["stats"]["dropped"] == {}
    sc.start()
    client_id = report["client_id"]
    wait_until(lambda: sc.query("SELECT closed FROM clients WHERE client_id=?", client_id) == [(1,)],
               timeout=30, what="the producer's closing message journaled")
    assert journaled_seqs(sc, client_id) == list(range(1, count + 1))
    assert sc.stop() == 0


def test_a_corrupt_ring_beside_a_good_one_is_quarantined_and_the_good_one_flows(short_tmp: Path) -> None:
    from client import Client

    sc = sidecar(short_tmp).start()
    rings = short_tmp / "ingest.rings"
    (rings / "evil.ring").write_bytes(os.urandom(70_000))
    with Client(sc.endpoint, strict=True) as c:
        for n in range(500):
            c.emit("notion.page.create", {"parent": {"database_id": "db"}, "n": n}, key=f"k{n}")
    wait_until(lambda: len(journaled_seqs(sc, c.client_id)) == 500, timeout=20, what="the good ring journaled")
    wait_until(lambda: os.listdir(rings / "quarantine"), timeout=10, what="the evil ring moved aside")
    _status, body = sc.get("/metrics")
    assert b'sidecar_rings_quarantined_total{reason="corrupt"} 1.0' in body
    assert "quarantined ring 'evil.ring'" in sc.log_text()  # names quoted: a name may hold anything
    assert sc.stop() == 0


def test_zmq_burst_then_exit_into_the_bounded_receive_queue_loses_nothing(short_tmp: Path) -> None:
    # The sidecar holds a bounded number of bytes (zmtp.py); a burst of 25 MB from a
    # producer that exits at once must still arrive whole (README: the sidecar).
    sc = sidecar(short_tmp).start()
    count = 100_000
    script = textwrap.dedent(f"""
        import json
        from client import Client
        c = Client({sc.endpoint!r}, strict=True, transport="zmq")
        for n in range(count := {count}):
            c.emit("notion.page.create", {{"parent": {{"database_id": "db"}}, "n": n, "pad": "x" * 200}}, key=f"k{{n}}")
        c.close(linger=40)  # 25 MB: on a loaded host the sidecar may need more than the default 5 s
        print(json.dumps({{"client_id": c.client_id, "dropped": c.stats()["dropped"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=90,
                         check=True)
    import orjson

    report = orjson.loads(out.stdout)
    assert report["dropped"] == {}
    wait_until(lambda: sc.query("SELECT closed FROM clients WHERE client_id=?", report["client_id"]) == [(1,)],
               timeout=30, what="the producer's closing message journaled")
    assert journaled_seqs(sc, report["client_id"]) == list(range(1, count + 1))
    assert sc.stop() == 0
