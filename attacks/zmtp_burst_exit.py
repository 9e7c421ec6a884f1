"""Burst-then-exit over ipc:// with the ZeroMQ transport: N events, the process exits at once after close();
all must be journaled exactly once. Also under a hostile neighbour holding 255 slots mid-message.
.venv/bin/python attacks/zmtp_burst_exit.py"""
import os, subprocess, sys, tempfile, time
from common import start, raw, frame
base = tempfile.mkdtemp(prefix="atk-be-")
sc, ep = start(f"ipc://{base}/ingest.sock")
PROD = f"""
import sys; sys.path.insert(0, "/work/wt/attack")
from client import Client
c = Client({ep!r}, transport="zmq", queue_size=100000)
n = sum(c.emit("notion.page.create", {{"parent": {{"database_id": "db"}}, "properties": {{}}}}, key=f"k{{i}}") for i in range(20000))
c.close(); print(c.client_id, n, c.stats().get("dropped"))
"""
try:
    for trial in range(3):
        out = subprocess.run([sys.executable, "-c", PROD], capture_output=True, text=True, timeout=60).stdout.split()
        cid, n = out[0], int(out[1])
        time.sleep(3)
        rows, distinct = sc.query("SELECT COUNT(*), COUNT(DISTINCT seq) FROM events WHERE client_id=?", cid)[0]
        print(f"trial {trial}: emitted {n}, journaled {rows} ({distinct} distinct); client drops {out[2:]}")
finally:
    sc.stop()
