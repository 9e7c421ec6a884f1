"""RSS under maximal messages: N connections each sending {event, 48 MiB blob} back to back
for a few seconds, plus header-only reservations. Prints VmHWM.

.venv/bin/python attacks/zmtp_rss.py [N] [SECONDS]
"""
import sys, threading, time
from client import wire
from common import start, raw, frame, header, stats, rejects, good_producer

MiB = 1 << 20
N = int(sys.argv[1]) if len(sys.argv) > 1 else 4
SECS = float(sys.argv[2]) if len(sys.argv) > 2 else 8
blob = b"b" * (48 * MiB)
sc, ep = start()
stop = threading.Event()
sent = [0] * N

def pusher(i):
    s = raw(ep)
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            ev = wire.encode(f"{4000+i}-00000000000{i}", seq, "s3.put", f"k{seq}", None, time.time_ns(),
                             {"bucket": "attack-bucket", "key": f"k{i}-{seq}", "content_type": "text/csv"})
            s.sendall(frame(ev, more=True) + header(len(blob))); s.sendall(blob); sent[i] += 1
    except OSError:
        pass
    s.close()

try:
    print("baseline:", stats(sc.pid))
    ts = [threading.Thread(target=pusher, args=(i,)) for i in range(N)]
    [t.start() for t in ts]
    peak = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < SECS:
        peak = max(peak, stats(sc.pid)["VmRSS"]); time.sleep(0.05)
    stop.set()
    [t.join(20) for t in ts]
    st = stats(sc.pid)
    print(f"{N} connections x 48 MiB messages for {SECS:.0f} s: sent {sum(sent)}; VmHWM {st['VmHWM']/1024:.0f} MiB,"
          f" sampled peak {peak/1024:.0f} MiB, threads {st['Threads']}, fds {st['fds']}", rejects(sc))
    cid, got = good_producer(ep, 100, sc=sc, wait=30)
    print("good producer after:", got, "/ 100")
finally:
    stop.set()
    sc.stop()
