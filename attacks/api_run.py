"""Start a sidecar (as root), run api_client.py as atkuser (not in the group) and as atkthief (not in root's group
either), print what each got. Needs users atkuser (see the report). .venv/bin/python attacks/api_run.py"""
import subprocess, sys
from common import start
sc, ep = start()
try:
    host, port = sc.api_address.rsplit(":", 1)
    print("root:", sc.get("/status")[0])
    for user in ("atkuser",):
        out = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "/tmp/api_client.py", host, port],
                             capture_output=True, text=True, timeout=60)
        print(user, out.stdout, out.stderr[-500:])
finally:
    sc.stop()
