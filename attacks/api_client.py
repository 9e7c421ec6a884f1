"""Run as an unprivileged user: try to read /status past the peer-uid check. argv: host port"""
import os, socket, sys, time

host, port = sys.argv[1], int(sys.argv[2])
REQ = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"

def status(s):
    s.settimeout(5)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            if b"\r\n\r\n" in data and len(data) > 200:
                break
    except OSError as exc:
        return f"error {exc}"
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "no answer"

def plain(src="127.0.0.1"):
    s = socket.socket(); s.bind((src, 0)); s.connect((host, port)); s.sendall(REQ); r = status(s); s.close(); return r

def shut_wr():
    s = socket.create_connection((host, port)); s.sendall(REQ); s.shutdown(socket.SHUT_WR); r = status(s); s.close(); return r

def v6mapped():
    s = socket.socket(socket.AF_INET6); s.connect(("::ffff:" + host, port)); s.sendall(REQ); r = status(s); s.close(); return r

def send_close_reconnect_same_port():
    # send, close at once (TIME_WAIT / FIN_WAIT), then bind the same source port again (SO_REUSEADDR) and ask again
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 0))
    sport = s.getsockname()[1]; s.connect((host, port)); s.sendall(REQ); s.close()
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        t.bind(("127.0.0.1", sport)); t.connect((host, port)); t.sendall(REQ); r = status(t)
    except OSError as exc:
        r = f"rebind: {exc}"
    t.close(); return r

def fork_child_owner():
    # socket created, passed to (inherited by) a child that exits: the row's uid is still the creator's
    s = socket.create_connection((host, port))
    if os.fork() == 0:
        s.sendall(REQ); os._exit(0)
    os.wait(); r = status(s); s.close(); return r

print("uid", os.getuid())
for name, fn in [("plain 127.0.0.1", plain), ("from 127.0.0.2", lambda: plain("127.0.0.2")), ("shutdown(WR) after request", shut_wr),
                 ("v4-mapped AF_INET6", v6mapped), ("close + reuse source port", send_close_reconnect_same_port),
                 ("request from a forked child", fork_child_owner)]:
    try:
        print(f"{name:32s} -> {fn()}")
    except OSError as exc:
        print(f"{name:32s} -> {exc}")
