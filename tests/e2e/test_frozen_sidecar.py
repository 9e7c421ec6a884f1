"""A frozen or slow sidecar, over a real process: SIGSTOP, the systemd watchdog, a lane stuck in a call;
and a lane working off the backlog a freeze leaves.

No systemd runs here (no PID 1 in this container: `systemctl` answers
"offline"), so a test binds the notify socket itself, as systemd would, and
reads the pings; systemd kills a service whose pings stop for `WatchdogSec`
(`systemd/trading-sidecar.service`: 20 s, Restart=on-failure).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from client import Client, wire
from client.wire import Envelope
from sidecar.config import RetryConfig
from sidecar.connectors.base import Delivered, Pace, Plan, PlanContext, Send
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Limiter, MemoryStore, Rule
from sidecar.journal.store import Event, EventRow, Journal
from sidecar.ops.metrics import Metrics
from standins.base import Fault
from standins.notion import NotionSimulator
from standins.webhook import WebhookReceiver

from ..support import SidecarProcess, drained, sidecar_config, wait_until
from .test_notion_e2e import create_body, page_by_key, paragraph, texts

pytestmark = pytest.mark.timeout(120)

WATCHDOG_SEC = 1.0  # the sidecar pings every half of it


class NotifySocket:
    """What systemd listens on: a Unix datagram socket; keeps (arrival time, message)."""

    def __init__(self, path: Path, watchdog_sec: float = WATCHDOG_SEC) -> None:
        self.path = str(path)
        self.watchdog_sec = watchdog_sec
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if m == "WATCHDOG=1" and t >= since]

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(int(self.watchdog_sec * 1e6))}

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self.sock.close()


def ready(sc: SidecarProcess, notify: NotifySocket) -> SidecarProcess:
    """Start `sc` with the test's own NOTIFY_SOCKET: readiness comes from that socket."""
    sc.start(wait_ready=False)
    wait_until(lambda: any(sc.notified(m) for _, m in list(notify.messages)), timeout=30, what="READY=1")
    return sc


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(short_tmp / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


def start(tmp: Path, sim: NotionSimulator, notify: NotifySocket | None = None,
          **sections: dict[str, object]) -> SidecarProcess:
    cfg = sidecar_config(tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 50.0, "burst": 10.0,
                                      "timeout": 2.0}, **sections)
    sc = SidecarProcess(tmp, config=cfg, env={"NOTION_TOKEN": sim.token, **(notify.env() if notify else {})})
    return ready(sc, notify) if notify else sc.start()


def test_sigstopped_sidecar_catches_up_and_journals_every_event_once(short_tmp: Path,
                                                                     notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start(short_tmp, sim)
    lines: list[str] = []
    with Client(sc.endpoint, strict=True) as client:
        assert client.emit("notion.page.create", create_body(db, "log"), key="log")

        def emit(count: int) -> None:
            for _ in range(count):
                lines.append(f"line {len(lines)}")
                assert client.emit("notion.blocks.append", {"children": [paragraph(lines[-1])]}, ref="log")

        emit(500)
        assert sc.proc is not None
        os.kill(sc.proc.pid, signal.SIGSTOP)
        try:
            emit(5000)  # the sidecar reads nothing now: the events wait in the client's ring
            assert client.stats()["dropped"] == {}
        finally:
            os.kill(sc.proc.pid, signal.SIGCONT)
        emit(500)
    wait_until(lambda: drained(sc, client), timeout=60, what="the sidecar to catch up and deliver")
    assert texts(sim.children(page_by_key(sim, "log")["id"])) == lines  # every line once, in order
    assert sc.query("SELECT last_seq, gaps FROM clients WHERE client_id=?", client.client_id) == [(6001, 0)]
    assert sc.stop() == 0


def test_watchdog_pings_stop_while_the_loop_is_frozen_and_resume_after(short_tmp: Path, notion_sim: NotionSimulator,
                                                                       notify: NotifySocket) -> None:
    sc = start(short_tmp, notion_sim, notify)
    wait_until(lambda: len(notify.pings()) >= 3, timeout=20, what="watchdog pings")
    assert sc.proc is not None
    os.kill(sc.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # The freeze itself, not a wait for something: three watchdog periods with the loop stopped.
        time.sleep(3 * WATCHDOG_SEC)
    finally:
        os.kill(sc.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_until(lambda: notify.pings(since=resumed), timeout=10, what="pings after SIGCONT")
    before = [t for t in notify.pings() if t < stopped]
    # systemd sees no ping for longer than WatchdogSec: it would kill and restart the service here.
    assert notify.pings(since=resumed)[0] - before[-1] > 2 * WATCHDOG_SEC
    assert not [t for t in notify.pings() if stopped + 0.1 < t < resumed]
    assert sc.stop() == 0


def test_a_lane_stuck_in_a_call_past_watchdogsec_never_stalls_the_loop(short_tmp: Path,
                                                                       notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    # The answer to the create drips for ever: the call is cut at its 5 s deadline, 2.5 WatchdogSec.
    sim.inject(Fault(when="after", drip=0.1, method="POST", path_prefix="/v1/pages"))
    with closing(NotifySocket(short_tmp / "notify.sock", watchdog_sec=2.0)) as notify, WebhookReceiver() as hook:
        cfg = {"webhooks": {"alerts": {"url": hook.url + "/alerts", "rate_per_second": 50.0, "burst": 10.0}}}
        sc = SidecarProcess(short_tmp, config=sidecar_config(
            short_tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 50.0, "burst": 10.0, "timeout": 5.0},
            **cfg), env={"NOTION_TOKEN": sim.token, **notify.env()})
        ready(sc, notify)
        with Client(sc.endpoint, strict=True) as client:
            client.emit("notion.page.create", create_body(db, "k"), key="k")
            # (2025-09-03: a look-up of the database's data source comes first.)
            wait_until(lambda: [r.method for r in sim.requests][-1:] == ["POST"], timeout=10,
                       what="the create to be stuck")
            stuck = time.monotonic()
            for n in range(5):
                client.emit("webhook.post", {"n": n}, ref="alerts")
            hook.wait_for(5, timeout=10)  # another lane delivers meanwhile
        wait_until(lambda: drained(sc, client), timeout=30, what="the create, retried after its deadline")
        done = time.monotonic()
        assert done - stuck > 2 * notify.watchdog_sec  # the stuck call lasted past WatchdogSec...
        pings = [stuck, *notify.pings(since=stuck), done]
        assert max(b - a for a, b in itertools.pairwise(pings)) < notify.watchdog_sec  # ...and pings never stopped
        assert len(sim.pages()) == 1 and page_by_key(sim, "k")
        assert hook.bodies() == [{"n": n} for n in range(5)]
        assert sc.stop() == 0


class OneCallPerEvent:
    """Every event its own group (a Notion create each): a backlog of many groups."""

    lane = "each"
    kinds = frozenset({"webhook.post"})

    def accepts(self, env: Envelope) -> bool:
        return True

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        return f"t{env.seq}"

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan:
        return Send(group[:1], None)

    async def send(self, plan: Send[None], pace: Pace) -> Delivered:
        return Delivered()

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        return []

    def refresh_credentials(self) -> bool:
        return False

    async def aclose(self) -> None:
        pass


def test_a_backlog_of_many_groups_is_worked_off_without_reading_all_of_it_per_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # After a freeze the backlog is large; a lane that scanned all of it for
    # every call fell further behind the longer it was (bench/soak.py).
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    journal.write_batch([EventRow("each", "webhook.post", f"t{n}", None, None, "c", n, 1, 1,
                                  wire.encode("c", n, "webhook.post", None, None, 1, {}), None)
                         for n in range(1, 3001)])
    whole_backlog_reads = []
    ready_heads = journal.ready_heads

    def counted(lane: str, now: float, limit: int = 512, *, per_target: bool = False) -> list[tuple[int, str]]:
        if per_target:
            whole_backlog_reads.append(now)
        return ready_heads(lane, now, limit, per_target=per_target)

    monkeypatch.setattr(journal, "ready_heads", counted)
    lane = Lane(OneCallPerEvent(), journal, Limiter("each", Rule(rate=1e6, burst=1e6), MemoryStore()),
                RetryConfig(), Metrics())

    async def run() -> None:
        task = asyncio.create_task(lane.run())
        while lane.delivered < 3000:
            await asyncio.sleep(0.01)
        await lane.stop(5)
        await task

    asyncio.run(run())
    assert journal.count("events") == 0
    assert whole_backlog_reads == []  # the oldest page always had a group ready
