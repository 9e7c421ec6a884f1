"""Sidecar (root, ring dir chgrp'd to atktrade as Group=atktrade would make it), thief and victim as users.
.venv/bin/python attacks/ring_race_run.py   (needs users atkvictim, atkthief in group atktrade)"""
import os, subprocess, sys, tempfile, time, grp
from common import start
from client.ring import ring_dir
base = tempfile.mkdtemp(prefix="atk-ring-"); os.chmod(base, 0o755)
sc, ep = start(f"ipc://{base}/ingest.sock")
PY = "/work/wt/attack/.venv/bin/python"
try:
    rd = ring_dir(ep); gid = grp.getgrnam("atktrade").gr_gid
    os.chown(rd, -1, gid); os.chown(ep[6:], -1, gid); os.chmod(rd, 0o3770)
    thief = subprocess.Popen([PY, "/work/wt/attack/attacks/asuser.py", "atkthief", "/work/wt/attack/attacks/ring_thief.py", rd, "12"])
    time.sleep(1)
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        v = subprocess.run([PY, "/work/wt/attack/attacks/asuser.py", "atkvictim", "/work/wt/attack/attacks/ring_victim.py", ep],
                           capture_output=True, text=True, timeout=60)
        print(v.stdout.strip(), v.stderr.strip()[-800:])
        cid = v.stdout.split()[1] if v.stdout else "?"
        time.sleep(2)
        print("  journaled for", cid, ":", sc.query("SELECT COUNT(*) FROM events WHERE client_id=?", cid)[0][0],
              "| owner bound:", sc.query("SELECT uid FROM client_owners WHERE client_id=?", cid))
    thief.kill(); thief.wait(30)
    print("ring dir:", sorted(os.listdir(rd)))
    print("rejects/quarantine log:", [l for l in sc.log_lines if "wrong_owner" in l or "quarantin" in l][:4])
finally:
    sc.stop()
