"""Helpers for tests that run a real sidecar process against loopback servers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from client import wire
from sidecar.journal import Event

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it is truthy; fail loudly with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def _toml_table(prefix: str, table: dict[str, Any]) -> list[str]:
    lines = [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for name, sub in table.items():
        if isinstance(sub, dict):
            header = f"{prefix}.{name}" if prefix else name
            lines += [f"[{header}]", *_toml_table(header, sub)]
    return lines


def write_toml(path: Path, doc: dict[str, Any]) -> Path:
    """Write a nested dict as TOML ({"webhooks": {"alerts": {...}}} -> [webhooks.alerts])."""
    path.write_text("\n".join(_toml_table("", doc)) + "\n")
    return path


_running: list["SidecarProcess"] = []


def kill_leftovers() -> None:
    """Kill sidecars a failed test left running (conftest calls this after each test)."""
    while _running:
        sc = _running.pop()
        if sc.proc is not None and sc.proc.poll() is None:
            sc.proc.kill()
            sc.proc.wait(10)


class SidecarProcess:
    """`python -m sidecar run` in a subprocess, with its log captured.

        sc = SidecarProcess(tmp_path, config={...}, env={"NOTION_TOKEN": ...}).start()
        sc.journal_count("events"); sc.stop()  # SIGTERM, expects exit 0
    """

    def __init__(self, workdir: Path, *, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.endpoint: str = config["ingest"]["endpoint"]
        self.journal_path = Path(config["journal"]["dir"]) / "journal.db"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_lines: list[str] = []
        self._ready = threading.Event()
        self.config_path = write_toml(workdir / "sidecar.toml", config)

    def start(self, *, wait_ready: bool = True) -> "SidecarProcess":
        cfg = write_toml(self.config_path, self.config)
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(cfg)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
        )
        _running.append(self)
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        if wait_ready:
            if not self._ready.wait(30):
                raise AssertionError("sidecar did not become ready:\n" + self.log_text())
        return self

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines.append(line)
            if "sidecar ready" in line:
                self._ready.set()

    @property
    def api_address(self) -> str:
        """host:port of /metrics, /health and /status, from the ready line of the log."""
        for line in self.log_lines:
            if "sidecar ready" in line:
                return line.split(" metrics ", 1)[1].split(",", 1)[0]
        raise AssertionError("sidecar not ready")

    def get(self, path: str) -> tuple[int, bytes]:
        import http.client

        host, _, port = self.api_address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `sidecar ARGS --config <this sidecar's config>`."""
        return subprocess.run([sys.executable, "-m", "sidecar", *args, "--config", str(self.workdir / "sidecar.toml")],
                              capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout)

    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("sidecar did not exit after SIGTERM:\n" + self.log_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def journal_count(self, table: str) -> int:
        return self.query(f"SELECT COUNT(*) FROM {table}")[0][0]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config with a private endpoint and journal under `tmp`, plus overrides."""
    doc: dict[str, Any] = {
        "ingest": {"endpoint": f"ipc://{tmp}/ingest.sock"},
        "journal": {"dir": str(tmp / "journal"), "synchronous": "NORMAL"},
        "retry": {"base": 0.05, "cap": 0.5},
        "metrics": {"address": "127.0.0.1:0"},  # tests run side by side: never a fixed port
    }
    for name, table in sections.items():
        doc.setdefault(name, {}).update(table)
    return doc


def drained(sc: SidecarProcess, *clients: Any) -> bool:
    """Every event of `clients` has reached the journal, and the journal is empty."""
    for client in clients:
        seen = sc.query("SELECT last_seq FROM clients WHERE client_id=?", client.client_id)
        if not seen or seen[0][0] < client.stats()["sent"]:
            return False
    return sc.journal_count("events") == 0


class FakePlanContext:
    """What a connector's plan() sees of the journal, as plain dicts, for unit tests."""

    def __init__(self, refs: dict[str, str] | None = None, pending: set[str] | None = None,
                 dead: dict[str, str] | None = None, now: float = 1000.0) -> None:
        self.refs, self.pending, self.dead, self.now = refs or {}, pending or set(), dead or {}, now

    def ref(self, key: str) -> str | None:
        return self.refs.get(key)

    def has_target(self, target: str) -> bool:
        return target in self.pending

    def dead_key(self, kind: str, key: str) -> str | None:
        return self.dead.get(key)


def journaled(n: int, lane: str, kind: str, target: str, payload: Any, *, key: str | None = None,
              ref: str | None = None, blob_path: str | None = None, received_ns: int = 0) -> Event:
    """Event number `n` of client "c" as the journal hands it to plan(), for unit tests."""
    frame = wire.encode("c", n, kind, key, ref, 0, payload)
    return Event(id=n, lane=lane, kind=kind, target=target, key=key, ref=ref, client_id="c", seq=n,
                 emitted_ns=0, received_ns=received_ns, frame=frame, blob_path=blob_path)


class RedisServer:
    """A real `redis-server` on a free 127.0.0.1 port, no persistence; killable and restartable
    on the same port (what a sidecar sees as Redis going away and coming back).

        with RedisServer() as r:
            r.url            # "redis://127.0.0.1:PORT/0"
            r.kill(); r.start()
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisServer":
        import shutil

        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
