"""Any local user: fill /proc/net/tcp with TIME_WAIT rows (no fds needed), then ask /status over and over;
each 403 costs the sidecar a full Python scan of /proc/net/tcp{,6} in its API thread (under the GIL).
Measures /health latency and a good producer's drain time with and without. argv: host port seconds
Run the client part as atkuser: runuser -u atkuser -- python3 api_scan_cost.py HOST PORT 6"""
import socket, sys, threading, time

host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# 1. TIME_WAIT rows: connect+close to our own listener (client closes first -> TIME_WAIT on our side)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(4096)
addr = lst.getsockname()
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < 3:
    c = socket.socket()
    try:
        c.connect(addr)
    except OSError:
        c.close(); break
    a, _ = lst.accept(); a.close(); c.close(); n += 1
rows = sum(1 for _ in open("/proc/net/tcp"))
print(f"made {n} connections in 3 s; /proc/net/tcp has {rows} rows", flush=True)
stop = threading.Event(); count = [0]
def hammer():
    REQ = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
    while not stop.is_set():
        try:
            s = socket.create_connection((host, port)); s.sendall(REQ); s.recv(4096); s.close(); count[0] += 1
        except OSError:
            pass
ts = [threading.Thread(target=hammer) for _ in range(4)]
[t.start() for t in ts]
time.sleep(secs)
stop.set(); [t.join() for t in ts]
print(f"{count[0]} /status 403s in {secs} s ({count[0]/secs:.0f}/s)")
