"""A trading-group member makes rings under fresh client ids as fast as it can for a few seconds (each closed at once);
every adopted one adds a client_owners row, kept until the 7-day prune. argv via ring_owner_run.py"""
import os, sys, time, uuid
sys.path.insert(0, "/work/wt/attack")
from client.ring import RingWriter
d, secs = sys.argv[1], float(sys.argv[2])
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < secs:
    try:
        w = RingWriter.create(d, f"x{uuid.uuid4().hex[:20]}", capacity=1 << 16)
        w.close(); n += 1
    except Exception as exc:  # noqa: BLE001
        print("create failed:", exc); time.sleep(0.01)
print("rings made:", n, flush=True)
