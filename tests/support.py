"""Helpers for tests that run a real sidecar process against loopback servers.

The process itself is `standins.process.SidecarProcess`, which the benchmarks
use too; what is here knows the product (its journal rows, its config).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client import wire
from sidecar.journal.store import Event
from standins.process import SidecarProcess, free_port, kill_leftovers

__all__ = ["ROOT", "FakePlanContext", "RedisServer", "SidecarProcess", "drained", "free_port", "journaled", "kill_leftovers",
           "sidecar_config", "wait_until"]

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


def sidecar_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config with a private endpoint and journal under `tmp`, plus overrides."""
    doc: dict[str, Any] = {
        "ingest": {"endpoint": f"ipc://{tmp}/ingest.sock"},
        "journal": {"dir": str(tmp / "journal"), "synchronous": "NORMAL"},
        "retry": {"base": 0.05, "cap": 0.5},
        "metrics": {"address": "127.0.0.1:0"},  # tests run side by side: never a fixed port (READY=1 names it)
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

    def start(self) -> RedisServer:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
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

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
