"""A battery of malformed / hostile ZMTP peers against one sidecar, a good producer after each;
prints the rejects, RSS, fds, threads, and whether every good event was journaled once.

.venv/bin/python attacks/zmtp_fuzz.py [ipc]
"""
import os, socket, sys, threading, time
from common import start, raw, frame, header, cmd, stats, rejects, good_producer, GREETING, READY_PUSH, SIGNATURE

ipc = len(sys.argv) > 1 and sys.argv[1] == "ipc"
sc, ep = start(f"ipc:///tmp/atk-fuzz-{os.getpid()}.sock" if ipc else None)
results = []

def check(name, fn):
    t0 = time.monotonic()
    try:
        fn()
        err = ""
    except Exception as exc:  # noqa: BLE001
        err = f" (attacker side: {type(exc).__name__}: {exc})"
    alive = sc.proc.poll() is None
    cid, got = good_producer(ep, 50, sc=sc, wait=15) if alive else ("", 0)
    dup = sc.query("SELECT COUNT(*) - COUNT(DISTINCT seq) FROM events WHERE client_id=?", cid)[0][0] if alive else -1
    st = stats(sc.pid) if alive else {}
    line = f"{name:48s} alive={alive} good={got}/50 dup={dup} {st} {time.monotonic()-t0:.1f}s{err}"
    print(line, flush=True)

def closed_soon(s, t=2.0):
    s.settimeout(t)
    try:
        while s.recv(65536):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True

def one(payload, handshake=False):
    s = raw(ep, handshake=handshake); s.sendall(payload); c = closed_soon(s); s.close()
    assert c, "not closed"

check("garbage greeting", lambda: one(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 100))
check("version 2 greeting", lambda: one(SIGNATURE + bytes([2, 0]) + bytes(52)))
check("version 1 greeting", lambda: one(SIGNATURE + bytes([1]) + bytes(53)))
check("mechanism PLAIN", lambda: one(SIGNATURE + bytes([3, 0]) + b"PLAIN".ljust(20, b"\0") + bytes(32)))
check("mechanism CURVE", lambda: one(SIGNATURE + bytes([3, 1]) + b"CURVE".ljust(20, b"\0") + bytes(32)))
check("READY Socket-Type PUB", lambda: one(GREETING + cmd(b"READY", b"\x0bSocket-Type\0\0\0\x03PUB")))
check("READY name len 255, value len 2^32-1", lambda: one(GREETING + cmd(b"READY", b"\xff" + b"a" * 255 + b"\xff\xff\xff\xff" + b"v" * 100)))
check("READY 4096 bytes of props", lambda: one(GREETING + cmd(b"READY", (b"\x01a" + (4080).to_bytes(4, "big") + b"v" * 4080))))
check("READY over 4096 (LONG command 2^63)", lambda: one(GREETING + bytes([6]) + (1 << 63).to_bytes(8, "big")))
check("data frame before READY", lambda: one(GREETING + frame(b"{}")))
check("LONG frame 2^63", lambda: one(header(1 << 63), True))
check("LONG frame 2^64-1", lambda: one(bytes([3]) + b"\xff" * 8, True))
check("flags 0x80", lambda: one(bytes([0x80, 1, 0]), True))
check("command mid-message", lambda: one(frame(b"{}", True) + cmd(b"PING", b"\0\0"), True))
check("empty command body", lambda: None if raw(ep).sendall(bytes([4, 0])) else None)

def endless_more():
    s = raw(ep); t0 = time.monotonic(); chunk = frame(b"x", True) * 50000
    while time.monotonic() - t0 < 3:
        s.sendall(chunk)
    s.close()
check("endless 1-byte MORE frames, 3 s", endless_more)

def ping_noread():
    s = raw(ep); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    p = cmd(b"PING", b"\0\x01" + b"c" * 16 + b"z" * 3000)
    s.settimeout(5); t0 = time.monotonic(); n = 0
    try:
        while time.monotonic() - t0 < 3:
            s.sendall(p * 20); n += 20
    except (socket.timeout, TimeoutError, OSError):
        pass
    s.close()
check("PING flood, never reading PONGs, 3 s", ping_noread)

def many():
    ss = []
    for _ in range(1200):
        try:
            ss.append(raw(ep, handshake=False))
        except OSError:
            break
    time.sleep(1)
    print("   1200 connections held:", stats(sc.pid), rejects(sc))
    for s in ss: s.close()
check("1200 connections, no greeting", many)

def hold_stages():
    ss = []
    for stage in range(200):
        s = raw(ep, handshake=False)
        s.sendall([b"", GREETING[:5], GREETING, GREETING + READY_PUSH[:3], GREETING + READY_PUSH + header(100, True)][stage % 5])
        ss.append(s)
    time.sleep(1)
    for s in ss: s.shutdown(socket.SHUT_WR)
    time.sleep(1)
    for s in ss: s.close()
check("hold at each stage then half-close", hold_stages)

def slowloris():
    s = raw(ep, handshake=False)
    for b in (GREETING + READY_PUSH)[:5]:
        s.send(bytes([b])); time.sleep(1)
    s.close()
check("slowloris 1 byte/s (5 s)", slowloris)

def interleave():
    stop = threading.Event()
    def bad():
        while not stop.is_set():
            try:
                s = raw(ep, handshake=False); s.send(b"\xff" + bytes(8) + b"\x7f\x02"); s.close()
            except OSError:
                pass
    t = threading.Thread(target=bad); t.start()
    try:
        cid, got = good_producer(ep, 200, sc=sc, wait=15)
        print("   good producer amid bad-greeting churn:", got, "/ 200")
    finally:
        stop.set(); t.join()
check("bad-greeting churn interleaved", interleave)

print("rejects:", rejects(sc))
sc.stop()
