"""Shared bench plumbing: a Notion simulator and a real sidecar process, both on loopback.

    with Stack() as stack:
        stack.endpoint, stack.sim, stack.page_id
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar.simulators.notion import NotionSimulator

ROOT = Path(__file__).resolve().parent.parent


class Stack:
    """Notion simulator in this process, sidecar in a child process."""

    def __init__(self, *, rate: float = 3.0, sidecar_cpus: list[int] | None = None, **notion: Any) -> None:
        self.rate = rate
        self.sidecar_cpus = sidecar_cpus
        self.notion = notion
        self.tmp = tempfile.TemporaryDirectory(prefix="scb-")
        self.dir = Path(self.tmp.name)
        self.endpoint = f"ipc://{self.dir}/ingest.sock"
        self.sim = NotionSimulator(rate_per_second=rate, burst=max(1, rate))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Stack":
        self.sim.start()
        self.db = self.sim.create_database(title="Bench", properties={
            "Name": "title", "Idempotency Key": "rich_text", "Price": "number", "Side": "select"})
        notion = {"base_url": self.sim.url + "/v1", "rate_per_second": self.rate, "burst": 1.0, **self.notion}
        lines = [f'[ingest]\nendpoint = "{self.endpoint}"', f'[journal]\ndir = "{self.dir}/journal"',
                 '[metrics]\naddress = "127.0.0.1:0"', "[notion]"]
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in notion.items()]
        (self.dir / "sidecar.toml").write_text("\n".join(lines) + "\n")
        env = {**os.environ, "NOTION_TOKEN": self.sim.token}
        cmd = [sys.executable, "-m", "sidecar", "run", "--config", str(self.dir / "sidecar.toml"),
               "--log-level", "WARNING"]
        if self.sidecar_cpus is not None:
            cmd = ["taskset", "-c", ",".join(map(str, self.sidecar_cpus))] + cmd
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
        sock = self.dir / "ingest.sock"
        deadline = time.monotonic() + 20
        while not sock.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("sidecar did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.sim.stop()
        self.tmp.cleanup()


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import orjson
    import zmq

    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "orjson": orjson.__version__,
    }
