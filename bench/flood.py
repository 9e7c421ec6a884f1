"""Flood: garbage into the ingest socket and a corrupt ring, while good events flow.

    python bench/flood.py                  # 1,000,000 malformed frames
    python bench/flood.py --smoke          # 20,000, for CI

One process pushes malformed frames (not JSON, wrong envelopes, unknown
kinds) into the sidecar's ZeroMQ socket as fast as libzmq takes them; a
corrupt ring file is dropped into the ring directory; a well-behaved client
emits good events through its ring all the while. Measured: the sidecar's
peak RSS (sampled every 50 ms), how much the journal grew, how many rejects
it counted and kept, whether the corrupt ring was quarantined, and whether
every good event reached the journal. Goals (issue 8): the sidecar stays up,
RSS under 200 MB, journal growth under 64 MiB, no good event lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, bench_sidecar, parse_args, tempdir, write_json

FLOODER = """
import sys, zmq
endpoint, count = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
s = ctx.socket(zmq.PUSH)
s.setsockopt(zmq.SNDHWM, 0)
s.connect(endpoint)
bad = [b"not json at all", b"[1, 2, 3]", None, b'[9, "c", 1, "webhook.post", null, null, 0, {}]', b"\\xff" * 300]
for n in range(count):
    # an unknown kind, each with a new sequence number (a repeated one is a replay, not a reject)
    s.send(bad[n % 5] or b'[1, "flood", %d, "no.such.kind", null, null, 0, {}]' % (n + 1))
s.close(linger=120_000)
ctx.term()
"""


def journal_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("journal.db*"))


def main() -> int:
    args = parse_args(__doc__)
    frames = 20_000 if args.smoke else 1_000_000
    good = 2_000 if args.smoke else 20_000
    with tempdir() as d, bench_sidecar(d, synchronous="NORMAL") as sc:
        from client import Client

        proc = psutil.Process(sc.pid)
        peak = [proc.memory_info().rss]
        sampling = True

        def sample() -> None:
            while sampling:
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        journal_dir = d / "journal"
        before = journal_bytes(journal_dir)
        from client.ring import ring_dir

        rings = Path(str(ring_dir(sc.endpoint)))
        (rings / "evil.ring").write_bytes(os.urandom(200_000))
        started = time.perf_counter()
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, sc.endpoint, str(frames)], cwd=ROOT)
        with Client(sc.endpoint, strict=True) as client:
            for n in range(good):
                client.emit("notion.page.create", {"parent": {"database_id": "db"}, "n": n}, key=f"g{n}")
                if n % 100 == 0:
                    time.sleep(0.001)
            client_id = client.client_id
        flooder.wait(600)
        import sqlite3

        def closed() -> bool:  # the good client's closing message is journaled: all its events are
            conn = sqlite3.connect(f"file:{journal_dir}/journal.db?mode=ro", uri=True, timeout=10)
            try:
                return conn.execute("SELECT closed FROM clients WHERE client_id=?", (client_id,)).fetchall() == [(1,)]
            finally:
                conn.close()

        deadline = time.monotonic() + 600
        while (sc.scrape().get("sidecar_events_rejected_total", 0) < frames or not closed()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        sampling = False
        m = sc.scrape()
        conn = sqlite3.connect(f"file:{journal_dir}/journal.db?mode=ro", uri=True, timeout=10)
        kept = conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0]
        seqs = [s for (s,) in conn.execute("SELECT seq FROM events WHERE client_id=? ORDER BY seq", (client_id,))]
        conn.close()
        alive = sc.proc is not None and sc.proc.poll() is None
        result: dict[str, Any] = {
            "malformed_frames": frames,
            "rejected_counted": int(m.get("sidecar_events_rejected_total", 0)),
            "rejects_kept": kept,
            "rings_quarantined": int(m.get("sidecar_rings_quarantined_total", 0)),
            "good_events": good,
            "good_journaled_once": len(seqs) == good and seqs == list(range(1, good + 1)),
            "peak_rss_mb": round(peak[0] / 2**20, 1),
            "journal_growth_mib": round((journal_bytes(journal_dir) - before) / 2**20, 1),
            "sidecar_alive": alive,
            "seconds": round(seconds, 1),
        }
    print("## Flood\n")
    print(f"{frames:,} malformed frames into the ingest socket and a corrupt ring, while a client emits "
          f"{good:,} good events through its ring ({result['seconds']} s).\n")
    print("| | |\n|---|---|")
    for k, v in result.items():
        print(f"| {k.replace('_', ' ')} | {v} |")
    ok = (result["sidecar_alive"] and result["good_journaled_once"] and result["rings_quarantined"] == 1
          and result["rejected_counted"] >= frames)
    print(f"\nGoals: RSS < 200 MB: {result['peak_rss_mb'] < 200}; journal growth < 64 MiB: "
          f"{result['journal_growth_mib'] < 64}; no good event lost: {result['good_journaled_once']}.")
    write_json(args, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
