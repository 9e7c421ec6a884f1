"""A journal whose filesystem goes read-only under a running sidecar (an ext4
error with errors=remount-ro), with a real sidecar process, a real client
emitting through its ring and the Notion simulator: ingest stops taking
events (they wait in the ring), status, check and /health say so in one
line, the log says it once, the sidecar stops on SIGTERM; after what an
operator does (unmount, e2fsck, mount, start) every event reaches Notion
exactly once, in order."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from client import Client
from standins.notion import NotionSimulator

from ..support import SidecarProcess, free_port, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(300)

BEFORE, AFTER = 40, 60  # appends delivered before the filesystem fails, and emitted after


class Ext4:
    """A 64 MiB ext4 image loop-mounted with errors=remount-ro (root only)."""

    def __init__(self, image: Path, mount: Path) -> None:
        self.image, self.mount = image, mount

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)

    def attach(self) -> str:
        """Mount the image; '' or why it cannot be."""
        done = self.run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mount))
        return done.stderr.strip() if done.returncode else ""

    def fail(self) -> None:
        """What a failing disk does: an ext4 error, the filesystem remounted read-only."""
        Path(self.trigger()).write_text("1")

    def trigger(self) -> str:
        source = self.run("findmnt", "-no", "SOURCE", str(self.mount)).stdout.strip()  # /dev/loopN
        return f"/sys/fs/ext4/{os.path.basename(source)}/trigger_fs_error"

    def repair(self) -> None:
        """What the operator does once the sidecar is stopped: unmount, e2fsck, mount."""
        assert self.run("umount", str(self.mount)).returncode == 0
        fsck = self.run("e2fsck", "-fy", str(self.image))
        assert fsck.returncode in (0, 1), fsck  # 1: errors corrected
        assert not self.attach()


@pytest.fixture
def ext4(short_tmp: Path) -> Iterator[Ext4]:
    fs = Ext4(short_tmp / "journal.img", short_tmp / "journal")
    fs.mount.mkdir()
    with open(fs.image, "wb") as f:
        f.truncate(64 << 20)
    made = fs.run("mkfs.ext4", "-q", str(fs.image))
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image here: {made.stderr.strip()}")
    why = fs.attach()
    if why:
        pytest.skip(f"cannot loop-mount an ext4 image here: {why}")
    try:
        if not os.access(fs.trigger(), os.W_OK):
            pytest.skip(f"this kernel has no writable {fs.trigger()} to fail the filesystem with")
        yield fs
    finally:
        fs.run("umount", "-l", str(fs.mount))


def status(sc: SidecarProcess) -> dict[str, Any]:
    return orjson.loads(sc.get("/status")[1])


def texts(sim: NotionSimulator, page_id: str) -> list[str]:
    return ["".join(t["plain_text"] for t in b["paragraph"]["rich_text"]) for b in sim.children(page_id)]


def emit(c: Client, db: str, page: str, first: int, count: int) -> None:
    assert c.emit("notion.page.create", {"parent": {"database_id": db},
                  "properties": {"Name": {"title": [{"text": {"content": page}}]}}}, key=page)
    for n in range(first, first + count):
        assert c.emit("notion.blocks.append", {"children": [{"object": "block", "type": "paragraph", "paragraph": {
            "rich_text": [{"type": "text", "text": {"content": f"e{n}"}}]}}]}, ref=page)


def page_id(sc: SidecarProcess, key: str) -> str | None:
    rows = sc.query("SELECT target_id FROM refs WHERE key=?", key)
    return str(rows[0][0]) if rows else None


def test_read_only_journal_holds_events_in_the_ring_and_delivers_each_once_after_repair(
        short_tmp: Path, ext4: Ext4, fast_notion: NotionSimulator) -> None:
    sim, db = fast_notion, fast_notion.database_id  # type: ignore[attr-defined]
    # synchronous=FULL (the default): a commit, after which the ring is acknowledged, is on
    # the disk. Under NORMAL the commits of the last seconds before an ext4 error vanish with
    # its aborted journal (this test then finds the first client's rows gone: a gap).
    cfg = sidecar_config(short_tmp, journal={"dir": str(ext4.mount / "sidecar"), "synchronous": "FULL"},
                         notion={"base_url": sim.url + "/v1", "rate_per_second": 200.0, "burst": 50.0,
                                 "timeout": 2.0},
                         metrics={"address": f"127.0.0.1:{free_port()}"})
    sc = SidecarProcess(short_tmp, config=cfg, env={"NOTION_TOKEN": sim.token}).start()
    c = Client(sc.endpoint, strict=True, transport="ring")
    try:
        emit(c, db, "before", 0, BEFORE)
        first = wait_until(lambda: page_id(sc, "before"), timeout=30, what="page 'before' created")
        wait_until(lambda: len(sim.children(first)) == BEFORE and sc.journal_count("events") == 0, timeout=30,
                   what="the first events delivered")

        ext4.fail()
        emit(c, db, "after", BEFORE, AFTER)
        try:  # what an ext4 error looks like to SQLite: "disk I/O error", on a mount still flagged rw
            wait_until(lambda: status(sc)["journal"]["state"] == "read-only", timeout=30, what="the journal read-only")
        except AssertionError:
            raise AssertionError(f"{status(sc)}\n{sc.log_text()[-6000:]}") from None
        assert sc.proc is not None and sc.proc.poll() is None
        code, body = sc.get("/health")
        assert code == 503 and b"journal read-only" in body
        check = sc.cli("check")
        assert check.returncode == 1 and len(check.stdout.strip().splitlines()) == 1, check
        assert "journal read-only" in check.stdout and "fsck" in check.stdout  # what to do, too
        shown = sc.cli("status")
        assert shown.returncode == 0 and "read-only" in shown.stdout
        # Ingest retries every second meanwhile: a few of those cost no log lines.
        retried = status(sc)["time"]
        wait_until(lambda: status(sc)["time"] > retried + 3, timeout=30, interval=0.5, what="three seconds on")
        log = sc.log_text()
        assert "Traceback" not in log, log[-6000:]
        said = [line for line in log.splitlines() if "journal read-only" in line]
        assert len(said) == 1, said
        assert len(sim.pages()) == 1 and len(sim.children(first)) == BEFORE  # the rest waits in the ring
        assert c.stats()["dropped"] == {}

        assert sc.stop(60) == 0  # SIGTERM: it exits, its last commit and checkpoint failing
        log = sc.log_text()
        assert "Traceback" not in log, log[-6000:]
        assert "stay in the producers' rings for the next start" in log
        ext4.repair()
        sc.start()
        second = wait_until(lambda: page_id(sc, "after"), timeout=30, what="page 'after' created")
        wait_until(lambda: len(sim.children(second)) >= AFTER, timeout=60, interval=0.2,
                   what="the events emitted after the failure delivered")
        wait_until(lambda: sc.journal_count("events") == 0, timeout=30, what="the journal empty")
        assert texts(sim, first) == [f"e{n}" for n in range(BEFORE)]  # each once, in order
        assert texts(sim, second) == [f"e{n}" for n in range(BEFORE, BEFORE + AFTER)]
        assert sorted(p["id"] for p in sim.pages()) == sorted([first, second])
        assert status(sc)["journal"]["state"] == "ok"
        wait_until(lambda: sc.cli("check").returncode == 0, timeout=10, what="check healthy again")
        assert sc.query("SELECT last_seq, gaps FROM clients WHERE client_id=?", c.client_id) \
            == [(2 + BEFORE + AFTER, 0)]
        assert c.stats()["dropped"] == {} and c.stats()["sent"] == 2 + BEFORE + AFTER
    finally:
        c.close(linger=1.0)
    assert sc.stop() == 0
    assert "Traceback" not in sc.log_text()
