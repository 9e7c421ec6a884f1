"""Start a sidecar, measure /health latency and a 20,000-event drain alone, then with api_scan_cost.py running as atkuser."""
import subprocess, time, urllib.request, urllib.error, sys, psutil
from common import start, good_producer
sc, ep = start()
def health_ms():
    t = time.monotonic()
    try:
        urllib.request.urlopen(f"http://{sc.api_address}/health", timeout=30).read()
    except urllib.error.HTTPError:
        pass  # 503: no Notion token, as configured
    return (time.monotonic() - t) * 1000
try:
    host, port = sc.api_address.rsplit(":", 1)
    p = psutil.Process(sc.pid)
    t = time.monotonic(); _, got = good_producer(ep, 20000, sc=sc, wait=60); base = time.monotonic() - t
    print(f"alone: 20000 events journaled {got} in {base:.1f} s; /health {health_ms():.1f} ms")
    atk = subprocess.Popen(["runuser", "-u", "atkuser", "--", "/usr/bin/python3", "/tmp/api_scan_cost.py", host, port, "8"])
    time.sleep(3.5)
    cpu0 = p.cpu_times(); t = time.monotonic()
    h = [health_ms() for _ in range(5)]
    _, got = good_producer(ep, 20000, sc=sc, wait=60); dt = time.monotonic() - t
    cpu1 = p.cpu_times()
    print(f"under attack: 20000 events journaled {got} in {dt:.1f} s; /health {max(h):.1f} ms max;"
          f" sidecar CPU {(cpu1.user+cpu1.system-cpu0.user-cpu0.system)/dt*100:.0f}%")
    atk.wait(60)
finally:
    sc.stop()
