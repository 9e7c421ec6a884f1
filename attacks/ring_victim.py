"""The victim producer (trading group member): Client over ipc:// (rings), 100 events. argv: ENDPOINT"""
import sys, time
sys.path.insert(0, "/work/wt/attack")
from client import Client
with Client(sys.argv[1]) as c:
    ok = sum(c.emit("notion.page.create", {"parent": {"database_id": "db"}, "properties": {}}, key=f"k{i}") for i in range(100))
    time.sleep(1)
    print("victim", c.client_id, "emit True:", ok, "stats:", {k: v for k, v in c.stats().items() if v}, flush=True)
