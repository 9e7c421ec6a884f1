"""Every benchmark runs in --smoke mode and prints its table: that it works,
not how fast (no timing asserts; the numbers of a CI machine mean nothing).

Needs the [bench] extra (hdrhistogram, matplotlib, redis); skipped without
it. The Redis row needs `apt-get install redis-server`; without it the
latency benchmark must say so and still pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("hdrh", reason="benchmarks need the [bench] extra: pip install -e '.[bench]'")
pytest.importorskip("matplotlib", reason="benchmarks need the [bench] extra: pip install -e '.[bench]'")

pytestmark = pytest.mark.slow  # each script starts processes and runs for seconds to minutes

# script -> a line of the table it must print
TABLES = {
    "latency": "| **emit / bare send** |",
    "jitter": "| unpinned, emit |",
    "throughput": "| 4 |",
    "delivery": "| 429 responses, whole run |",
    "crash": "| transport | events emitted | kills |",
    "flood": "| malformed frames |",
    "wakeup": "| lone |",
    "blobs": "| ring 64 KiB |",
    "ring_stress": "| commit mark |",
    "soak": "| RSS growth from",
    "floors": "| ring write of a ready frame |",
    "frozen": "| default ring (8 MiB) |",
    "footprint": "| idle, a producer's ring open |",
}


def smoke(script: str, out: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--smoke", "--out", str(out),
         "--json", str(out / f"{script}.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", sorted(TABLES))
def test_benchmark_smoke(script: str, tmp_path: Path) -> None:
    proc = smoke(script, tmp_path)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    assert TABLES[script] in proc.stdout, proc.stdout
    assert json.loads((tmp_path / f"{script}.json").read_text())
    if script == "latency":
        assert (tmp_path / "latency.png").stat().st_size > 0
        has_redis = shutil.which("redis-server") is not None
        try:
            import redis  # noqa: F401
        except ImportError:
            has_redis = False
        if has_redis:
            assert "| redis LPUSH |" in proc.stdout
        else:
            assert "No redis LPUSH row" in proc.stdout
    if script == "jitter":
        assert (tmp_path / "jitter.png").stat().st_size > 0
    if script == "frozen":
        for run in json.loads((tmp_path / "frozen.json").read_text())["runs"].values():
            assert run["rows"] == run["distinct"] == run["sent"] and run["gaps"] == 0, run
    if script == "soak":
        assert (tmp_path / "soak.png").stat().st_size > 0
        assert "| final state of every API = what was emitted |" in proc.stdout
        info = json.loads((tmp_path / "soak.json").read_text())["info"]
        assert info["pending_after_drain"] == 0 and info["dead_letters"] == 0
        assert all(info["final_state"].values()), info["final_state"]
        assert info["refs_expired"] > 0  # refs unused for the run's 6 s window were forgotten...


@pytest.mark.timeout(360)
def test_run_all_smoke(tmp_path: Path) -> None:
    # Each script's own smoke run is a test above; this one checks what run_all adds (the machine,
    # the commands, the goals table, the scripts' sections) on two quick scripts.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke", "--out", str(tmp_path),
                           "--only", "latency", "flood"],
                          capture_output=True, text=True, cwd=ROOT, timeout=340, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    results = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Machine", "## Commands", "## Goals", "## Emit latency", "## Flood"):
        assert heading in results
    assert "| emit (ring) ≤ 1.0× bare send at p50" in results and "malformed frames and a corrupt ring" in results
