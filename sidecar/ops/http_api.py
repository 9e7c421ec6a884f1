"""The sidecar's own small HTTP server, on loopback: metrics, health, status.

    GET /metrics   Prometheus exposition (prometheus_client)
    GET /health    200 {"ok": true} or 503 {"ok": false, "problems": [...]}
    GET /status    the whole status snapshot as JSON (`status.Status`, what `sidecar status` prints)
    GET /refs/LANE/KEY   what a delivered event created, e.g. Naver image URLs

    api = ApiServer("127.0.0.1:9310", registry, status, health, lookup_ref)
    api.start()     # one thread
    api.stop()

The snapshot is built by the event loop once a second; this thread only
reads it, so a scrape never touches the journal or the loop.

Any local user can connect, so the server is bounded whatever they do: one
thread and a selector (not a thread a connection: 1,010 idle connections
once made 1,009 threads and ran out of descriptors), at most
`max_connections` open (a new one closes the oldest, so a flood of idle
connections cannot lock out `sidecar check`), `timeout` seconds for a
connection to send its request and again to take the answer, a request of
MAX_REQUEST_BYTES at most, and one request a connection (`Connection: close`).
/status and /refs name producers and what delivery made: with `readers`
(the sidecar passes its uid and group, peers.py) they answer only root, the
sidecar's uid and its group's members, anyone else 403; /metrics and
/health answer all.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.ops.peers import Readers, peer_uid
from sidecar.ops.status import Health, Status

log = logging.getLogger("sidecar.http")

MAX_CONNECTIONS = 64        # open at once; a new one closes the oldest
TIMEOUT_SECONDS = 5.0       # to send the request, and again to take the answer
MAX_REQUEST_BYTES = 8192    # request line and headers
JSON = "application/json"


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
    request: bytearray = field(default_factory=bytearray)
    answer: memoryview | None = None  # set once the request is read: what is left to send


class ApiServer:
    def __init__(self, address: str, registry: CollectorRegistry, status: Callable[[], Status | None],
                 health: Callable[[], Health], lookup_ref: Callable[[str, str], str | None], *,
                 max_connections: int = MAX_CONNECTIONS, timeout: float = TIMEOUT_SECONDS,
                 readers: Readers | None = None) -> None:
        host, _, port = address.rpartition(":")
        self.registry = registry
        self.status = status
        self.health = health
        self.lookup_ref = lookup_ref
        self.max_connections = max_connections
        self.timeout = timeout
        self.readers = readers  # who may read /status and /refs (None: anyone who can connect)
        self.evicted = 0  # connections closed to make room for a newer one
        self._listener = socket.create_server((host or "127.0.0.1", int(port)), backlog=128)
        self._listener.setblocking(False)
        bound_host, bound_port = self._listener.getsockname()[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._conns: dict[socket.socket, _Conn] = {}  # in the order accepted: the first is the oldest
        self._thread = threading.Thread(target=self._serve, name="http-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in list(self._conns):
            sock.close()
        self._conns.clear()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    # -- the loop -------------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                wait = min((c.deadline for c in self._conns.values()), default=time.monotonic() + 1.0)
                for key, _mask in sel.select(max(0.0, wait - time.monotonic())):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.data is not None and key.data.sock in self._conns:
                        self._step(sel, key.data)
                now = time.monotonic()
                for conn in [c for c in self._conns.values() if c.deadline <= now]:
                    self._close(sel, conn)  # too slow to ask, or to take the answer
        except Exception:  # the API is a window, never a reason to stop the sidecar
            log.exception("the HTTP API stopped on an unexpected error")
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(self.max_connections):  # then back to the others: a flood cannot hold the loop here
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the backlog waits for room
                log.warning("HTTP API cannot accept a connection: %s", exc.strerror)
                return
            if len(self._conns) >= self.max_connections:
                self.evicted += 1
                self._close(sel, next(iter(self._conns.values())))
            sock.setblocking(False)
            conn = self._conns[sock] = _Conn(sock, time.monotonic() + self.timeout)
            sel.register(sock, selectors.EVENT_READ, conn)

    def _step(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            if conn.answer is None:
                data = conn.sock.recv(4096)
                if not data:
                    self._close(sel, conn)
                    return
                conn.request += data
                end = conn.request.find(b"\r\n\r\n")
                if end < 0 and len(conn.request) < MAX_REQUEST_BYTES:
                    return
                status, body, ctype = (self.answer(bytes(conn.request[:end]), conn.sock) if end >= 0 else
                                       (431, b'{"error": "request too large"}', JSON))
                conn.answer = memoryview(_response(status, body, ctype))
                conn.deadline = time.monotonic() + self.timeout
                sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            sent = conn.sock.send(conn.answer)
            conn.answer = conn.answer[sent:]
            if not conn.answer:
                self._close(sel, conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the peer went away
            self._close(sel, conn)

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    # -- what is asked ----------------------------------------------------------

    def answer(self, head: bytes, sock: socket.socket | None = None) -> tuple[int, bytes, str]:
        """(status, body, content type) for a request's head (request line and headers), asked on `sock`."""
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            return 400, b'{"error": "bad request line"}', JSON
        if method != "GET":
            return 405, b'{"error": "GET only"}', JSON
        try:
            return self._route(target.split("?", 1)[0], sock)
        except Exception:  # one bad answer, not a stopped server
            log.exception("HTTP API failed to answer %s", target[:200])
            return 500, b'{"error": "internal error"}', JSON

    def _route(self, path: str, sock: socket.socket | None) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/health":
            health = self.health()
            return 200 if health.ok else 503, orjson.dumps(health.to_dict()), JSON
        if self.readers is not None and (path == "/status" or path.startswith("/refs/")) \
                and not self.readers.allow(None if sock is None else peer_uid(sock)):
            return 403, orjson.dumps({"error": f"{path.split('/')[1]} answers {self.readers.describe()} "
                                               "on this host; /metrics and /health answer anyone"}), JSON
        if path == "/status":
            status = self.status()
            if status is None:  # before the first snapshot: only the health, and 503
                return 503, orjson.dumps({"health": self.health().to_dict()}), JSON
            return 200, orjson.dumps(status.to_dict(), option=orjson.OPT_INDENT_2), JSON
        if path.startswith("/refs/") and path.count("/") >= 3:
            _, _, lane, key = path.split("/", 3)
            value = self.lookup_ref(unquote(lane), unquote(key))
            if value is None:
                return 404, orjson.dumps({"error": "no such ref"}), JSON
            return 200, orjson.dumps({"lane": lane, "key": unquote(key), "value": value}), JSON
        return 404, b'{"error": "try /metrics, /health, /status or /refs/LANE/KEY"}', JSON


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body
