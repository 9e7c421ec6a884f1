"""Shared bits for the attack scripts: a real sidecar on a temp dir, raw ZMTP peers, measurements."""
from __future__ import annotations

import os, socket, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "standins" / "src")]
from standins.process import SidecarProcess, free_port  # noqa: E402
from client import Client  # noqa: E402
from sidecar.ingest.zmtp import SIGNATURE  # noqa: E402

GREETING = SIGNATURE + bytes([3, 1]) + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
NO_TOKEN = {"NOTION_TOKEN": ""}


def cmd(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    return (bytes([4, len(data)]) if len(data) < 256 else bytes([6]) + len(data).to_bytes(8, "big")) + data


READY_PUSH = cmd(b"READY", b"\x0bSocket-Type" + (4).to_bytes(4, "big") + b"PUSH")


def frame(body: bytes, more: bool = False) -> bytes:
    f = 1 if more else 0
    return (bytes([f, len(body)]) if len(body) < 256 else bytes([f | 2]) + len(body).to_bytes(8, "big")) + body


def header(size: int, more: bool = False) -> bytes:
    return bytes([(1 if more else 0) | 2]) + size.to_bytes(8, "big")


def start(endpoint: str | None = None, **ingest) -> tuple[SidecarProcess, str]:
    tmp = Path(tempfile.mkdtemp(prefix="atk-"))
    endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
    doc = {"ingest": {"endpoint": endpoint, **ingest}, "journal": {"dir": str(tmp / "journal"), "synchronous": "NORMAL"},
           "retry": {"base": 0.05, "cap": 0.5}, "metrics": {"address": f"127.0.0.1:{free_port()}"}}
    sc = SidecarProcess(tmp, config=doc, env=NO_TOKEN).start()
    return sc, endpoint


def tcp_addr(endpoint: str) -> tuple[str, int]:
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    return host, int(port)


def raw(endpoint: str, handshake: bool = True) -> socket.socket:
    if endpoint.startswith("ipc://"):
        s = socket.socket(socket.AF_UNIX); s.connect(endpoint[6:])
    else:
        s = socket.create_connection(tcp_addr(endpoint))
    if handshake:
        s.sendall(GREETING + READY_PUSH)
    return s


def stats(pid: int) -> dict[str, int]:
    st = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            st[k] = int(v.split()[0])
    st["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return st


def rejects(sc: SidecarProcess) -> dict[str, float]:
    out = {}
    for line in sc.get("/metrics")[1].decode().splitlines():
        if line.startswith("sidecar_events_rejected_total{"):
            name, _, v = line.rpartition(" ")
            out[name.split('reason="')[1].split('"')[0]] = out.get(name.split('reason="')[1].split('"')[0], 0) + float(v)
    return out


def good_producer(endpoint: str, n: int = 100, blob: bytes | None = None, wait: float = 20.0,
                  sc: SidecarProcess | None = None) -> tuple[str, int]:
    """Emit n events through a real pyzmq PUSH (the Client's zmq transport); (client id, rows journaled)."""
    with Client(endpoint, transport="zmq") as c:
        for i in range(n):
            c.emit("notion.page.create", {"parent": {"database_id": "db"}, "properties": {}, "pad": "x" * 300},
                   key=f"k{i}", blob=blob)
        cid = c.client_id
    deadline = time.monotonic() + wait
    got = 0
    while time.monotonic() < deadline and sc is not None:
        got = sc.query("SELECT COUNT(*) FROM events WHERE client_id=?", cid)[0][0]
        if got >= n:
            break
        time.sleep(0.2)
    return cid, got
