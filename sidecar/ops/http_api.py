"""The sidecar's own small HTTP server, on loopback: metrics, health, status.

    GET /metrics   Prometheus exposition (prometheus_client)
    GET /health    200 {"ok": true} or 503 {"ok": false, "problems": [...]}
    GET /status    the whole status snapshot as JSON (`status.Status`, what `sidecar status` prints)
    GET /refs/LANE/KEY   what a delivered event created, e.g. Naver image URLs

The snapshot is built by the event loop once a second; this thread only
reads it, so a scrape never touches the journal or the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.ops.status import Health, Status


class ApiServer:
    def __init__(self, address: str, registry: CollectorRegistry, status: Callable[[], Status | None],
                 health: Callable[[], Health], lookup_ref: Callable[[str, str], str | None]) -> None:
        host, _, port = address.rpartition(":")
        self.registry = registry
        self.status = status
        self.health = health
        self.lookup_ref = lookup_ref
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would flood the journal

        self.httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(h, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/health":
            health = self.health()
            self._send(h, 200 if health.ok else 503, orjson.dumps(health.to_dict()), "application/json")
        elif path == "/status":
            status = self.status()
            if status is None:  # before the first snapshot: only the health, and 503
                self._send(h, 503, orjson.dumps({"health": self.health().to_dict()}), "application/json")
            else:
                self._send(h, 200, orjson.dumps(status.to_dict(), option=orjson.OPT_INDENT_2), "application/json")
        elif path.startswith("/refs/") and path.count("/") >= 3:
            _, _, lane, key = path.split("/", 3)
            value = self.lookup_ref(unquote(lane), unquote(key))
            if value is None:
                self._send(h, 404, orjson.dumps({"error": "no such ref"}), "application/json")
            else:
                self._send(h, 200, orjson.dumps({"lane": lane, "key": unquote(key), "value": value}),
                           "application/json")
        else:
            self._send(h, 404, b'{"error": "try /metrics, /health, /status or /refs/LANE/KEY"}',
                       "application/json")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
