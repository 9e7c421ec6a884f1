import grp, os, subprocess, sys, tempfile, time
from common import start, stats
from client.ring import ring_dir
base = tempfile.mkdtemp(prefix="atk-own-"); os.chmod(base, 0o755)
sc, ep = start(f"ipc://{base}/ingest.sock")
PY = "/work/wt/attack/.venv/bin/python"
try:
    rd = ring_dir(ep); os.chown(rd, -1, grp.getgrnam("atktrade").gr_gid); os.chmod(rd, 0o3770)
    from common import good_producer
    from client import Client
    def ring_producer(n):
        t = time.monotonic()
        with Client(ep) as c:
            for i in range(n):
                c.emit("notion.page.create", {"parent": {"database_id": "db"}, "properties": {}}, key=f"k{i}")
            cid = c.client_id
        while sc.query("SELECT COUNT(*) FROM events WHERE client_id=?", cid)[0][0] < n and time.monotonic() - t < 60:
            time.sleep(0.05)
        return sc.query("SELECT COUNT(*) FROM events WHERE client_id=?", cid)[0][0], time.monotonic() - t
    print("good ring producer alone: (journaled, seconds) =", ring_producer(5000))
    atk = subprocess.Popen([PY, "/work/wt/attack/attacks/asuser.py", "atkthief", "/work/wt/attack/attacks/ring_owner_growth.py", rd, "5"])
    time.sleep(2)
    print("good ring producer during the flood:", ring_producer(5000))
    atk.wait(60)
    time.sleep(3)
    print("client_owners rows:", sc.query("SELECT COUNT(*) FROM client_owners")[0][0], "clients rows:",
          sc.query("SELECT COUNT(*) FROM clients")[0][0], "files left:", len(os.listdir(rd)), stats(sc.pid))
finally:
    sc.stop()
