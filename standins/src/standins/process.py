"""A real sidecar in a child process, for the tests and the benchmarks alike.

    with SidecarProcess(workdir, config={"ingest": {...}, "journal": {...}}, env={"NOTION_TOKEN": t}) as sc:
        sc.endpoint, sc.pid, sc.api_address      # the ingest endpoint, the child, /metrics's host:port
        sc.get("/status"), sc.scrape()           # (status, body); {metric: value summed over labels}
        sc.journal_count("events"), sc.query("SELECT ...")
        sc.cli("check")                          # `sidecar check --config <this config>`
    # or sc.start() ... sc.stop() (SIGTERM, returns the exit code); start() again is a restart

It is ready when it says so as systemd hears it: the helper binds a notify
socket, passes it as $NOTIFY_SOCKET, and waits for READY=1, which the sidecar
sends once its ingest socket is bound, its journal open and its HTTP API
serving. The same message names the API's address (`X_SIDECAR_METRICS=`),
so `[metrics] address = "127.0.0.1:0"` works and nothing reads the log.

It drives the sidecar from outside only (a command line, a config file, a
socket, HTTP and the journal's SQLite file) and imports nothing of it, like
the other stand-ins. Its log (stdout and stderr, every start appended) is
`workdir/sidecar.log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

READY_TIMEOUT = 30.0
# Inherited from the caller's environment, these would reach the child unasked:
# a developer's real token, or the notify socket of the shell's own service.
NOT_INHERITED = ("NOTION_TOKEN", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_running: list[SidecarProcess] = []


def kill_leftovers() -> None:
    """Kill the sidecars a failed test or benchmark left running."""
    while _running:
        sc = _running.pop()
        if sc.proc is not None and sc.proc.poll() is None:
            sc.proc.kill()
            sc.proc.wait(10)


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (for configs that must name one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
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


class SidecarProcess:
    """`python -m sidecar run --config workdir/sidecar.toml` in a child process.

    `config` is the TOML as a dict, written at each start (change it between
    a stop and a start). `env` is laid over the caller's environment, less
    NOT_INHERITED; `self.env` is what the child gets. `remove_on_exit` lists
    directories the `with` block deletes after the stop (a socket directory
    on tmpfs, say).
    """

    def __init__(self, workdir: Path, *, config: dict[str, Any], env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), remove_on_exit: tuple[Path, ...] = ()) -> None:
        self.workdir = workdir
        self.config = config
        self.env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        self.env.update(env or {})
        self.args = args
        self.remove_on_exit = remove_on_exit
        self.endpoint: str = config["ingest"]["endpoint"]
        self.journal_path = Path(config["journal"]["dir"]) / "journal.db"
        self.config_path = write_toml(workdir / "sidecar.toml", config)  # cli() may come before start()
        self.log_path = workdir / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._api_address: str | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self, *, wait_ready: bool = True, timeout: float = READY_TIMEOUT) -> SidecarProcess:
        """Start the child; unless `wait_ready` is False, return once it sent READY=1.

        With `wait_ready=False` the caller may pass its own NOTIFY_SOCKET in `env`."""
        write_toml(self.config_path, self.config)
        env = dict(self.env)
        notify = None
        if wait_ready:
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            name = f"sidecar-ready-{uuid.uuid4().hex}"  # abstract: no path, nothing to clean up
            notify.bind("\0" + name)
            env["NOTIFY_SOCKET"] = "@" + name
        self._api_address = None
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "--config",
                                              str(self.config_path), *self.args],
                                             env=env, stdout=log, stderr=subprocess.STDOUT)
            _running.append(self)
            if notify is not None:
                self._wait_ready(notify, timeout)
        except BaseException:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            raise
        finally:
            if notify is not None:
                notify.close()
        return self

    def notified(self, message: str) -> bool:
        """Read one notify message; True (and the API's address kept) if it is READY=1.

        For a test that binds NOTIFY_SOCKET itself (a watchdog test) and starts
        with `wait_ready=False`: `wait_until(lambda: any(sc.notified(m) for m in messages))`."""
        fields = dict(line.partition("=")[::2] for line in message.splitlines())
        if fields.get("READY") != "1":
            return False
        self._api_address = fields.get("X_SIDECAR_METRICS") or None
        return True

    def _wait_ready(self, notify: socket.socket, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        notify.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if self.notified(message):
                return
        raise AssertionError(f"sidecar did not become ready (exit {self.proc.poll()}):\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code; killed (and an AssertionError) if it outlives `timeout`."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("sidecar did not exit after SIGTERM:\n" + self.log_text()[-3000:]) from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            code = self.stop(60) if self.proc is not None else None
            if code not in (0, None):
                print(f"sidecar exited {code}:\n{self.log_text()[-3000:]}", file=sys.stderr)
        finally:
            for directory in self.remove_on_exit:
                shutil.rmtree(directory, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- what it says -----------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    @property
    def api_address(self) -> str:
        """host:port of /metrics, /health and /status, as READY=1 named it (else as configured)."""
        address = self._api_address or self.config.get("metrics", {}).get("address", "127.0.0.1:9464")
        if not address or address.endswith(":0"):
            raise AssertionError("no API address: the sidecar was not started with wait_ready, or serves none")
        return str(address)

    def get(self, path: str) -> tuple[int, bytes]:
        """GET from the sidecar's HTTP API: (status, body), 503 included."""
        try:
            with urllib.request.urlopen(f"http://{self.api_address}{path}", timeout=10) as response:
                return response.status, bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, bytes(exc.read())

    def scrape(self) -> dict[str, float]:
        """/metrics, each sample name summed over its labels."""
        totals: dict[str, float] = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                name_labels, _, value = line.rpartition(" ")
                name = name_labels.split("{", 1)[0]
                totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `sidecar ARGS --config <this sidecar's config>`."""
        return subprocess.run([sys.executable, "-m", "sidecar", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, env=self.env, timeout=timeout)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the journal (read-only, beside the running sidecar)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=10)) as conn:
            return conn.execute(sql, args).fetchall()

    def journal_count(self, table: str = "events") -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table}")[0][0])
