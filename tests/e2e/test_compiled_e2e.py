"""A real sidecar fed at once by a producer on the previous record format
(JSON frames: the pure-Python path, as every client before the compiled emit
wrote) and one on the compiled path (binary v1 records): both journaled
whole, each event once, as the same envelope."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from client import wire
from client.compiled import PURE_ENV

from ..support import ROOT, SidecarProcess, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(180)


def producer(endpoint: str, count: int, out: Path, pure: bool) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(f"""
        import json
        from client import Client
        from client.compiled import PATH
        c = Client({endpoint!r}, strict=True)
        for n in range({count}):
            assert c.emit("notion.page.create", {{"parent": {{"database_id": "db"}}, "n": n, "t": "é\\"\\n"}},
                          key=f"k{{n}}" if n % 2 else None, ref="r" if n % 3 else None)
        c.close()
        open({str(out)!r}, "w").write(json.dumps({{"client_id": c.client_id, "path": PATH, "stats": c.stats()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    if pure:
        env[PURE_ENV] = "1"
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)


def test_a_previous_format_producer_and_a_compiled_one_feed_one_sidecar(short_tmp: Path) -> None:
    sc = SidecarProcess(short_tmp, config=sidecar_config(short_tmp), env={"NOTION_TOKEN": ""}).start()
    count = 3_000
    procs = {pure: producer(sc.endpoint, count, short_tmp / f"p{pure}.json", pure) for pure in (True, False)}
    reports = {}
    for pure, proc in procs.items():
        assert proc.wait(60) == 0
        reports[pure] = orjson.loads((short_tmp / f"p{pure}.json").read_bytes())
    assert reports[True]["path"].startswith("pure-Python")
    built = importlib.util.find_spec("client._fastemit") is not None  # whatever this process was told
    assert reports[False]["path"].startswith("compiled" if built else "pure-Python")
    for report in reports.values():
        client_id = report["client_id"]
        assert report["stats"]["sent"] == count and report["stats"]["dropped"] == {}
        wait_until(lambda cid=client_id: sc.query("SELECT closed FROM clients WHERE client_id=?", cid) == [(1,)],
                   timeout=30, what="the producer's closing message journaled")
        rows = sc.query("SELECT seq, key, ref, frame FROM events WHERE client_id=? ORDER BY seq", client_id)
        assert [r[0] for r in rows] == list(range(1, count + 1))
        for seq, key, ref, frame in rows:
            env = wire.decode(frame)  # the journal keeps one envelope format, whatever the producer wrote
            n = seq - 1
            assert (env.client_id, env.seq, env.key, env.ref, key, ref) == (
                client_id, seq, f"k{n}" if n % 2 else None, "r" if n % 3 else None, env.key, env.ref)
            assert env.payload == {"parent": {"database_id": "db"}, "n": n, "t": 'é"\n'}
        assert sc.query("SELECT gaps FROM clients WHERE client_id=?", client_id) == [(0,)]
    assert sc.query("SELECT COUNT(*) FROM rejects") == [(0,)]
    assert sc.stop() == 0
