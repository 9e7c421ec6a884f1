"""The status snapshot: one typed shape, through JSON and back, rendered by the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from client import wire
from sidecar.cli import render_status
from sidecar.config import from_dict
from sidecar.connectors import notion
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Limiter, MemoryStore
from sidecar.housekeeping import Housekeeping
from sidecar.ingest.core import Ingest
from sidecar.journal.health import JournalHealth
from sidecar.journal.repair import open_checked
from sidecar.journal.store import EventRow
from sidecar.ops.metrics import Metrics
from sidecar.ops.status import Health, IngestStatus, JournalStatus, LaneStatus, ProcessStatus, Status

pytestmark = pytest.mark.timeout(30)


def _lane(**changes: object) -> LaneStatus:
    fields: dict[str, object] = dict(state="running", depth=3, rate_per_second=3.0, rate_source="configured",
                                     store="memory", tokens=1.0, sidecars_sharing=1, configured_rate=3.0,
                                     breaker="closed", paused=None, delivered=7)
    fields.update(changes)
    return LaneStatus(**fields)  # type: ignore[arg-type]


STATUS = Status(
    time=1_000.0, uptime_seconds=12.5,
    ingest=IngestStatus(endpoint="ipc:///run/x.sock", alive=True, received=10, rejected=1, sequence_gaps=0),
    journal=JournalStatus(path="/var/lib/j/journal.db", bytes=2_000_000, pending=3, dead_letters=0, state="ok"),
    lanes={"notion": _lane(),
           "naver": _lane(state="off", depth=0, paused="no Naver credentials: set $NAVER_CLIENT_ID and ..."),
           "s3": _lane(state="paused", depth=2, paused="no AWS credentials ...")},
    process=ProcessStatus(pid=42, cpu_seconds=1.5, rss_bytes=30_000_000, open_fds=12, threads=5, cpu_affinity=(1,),
                          nice=0),
    health=Health.of(["s3: paused: no AWS credentials ...; 2 event(s) waiting"]),
)


def test_the_snapshot_survives_json_with_the_keys_scripts_read() -> None:
    wire = orjson.loads(orjson.dumps(STATUS.to_dict()))
    assert wire["lanes"]["notion"]["breaker"] == "closed" and wire["journal"]["state"] == "ok"
    assert wire["health"] == {"ok": False, "problems": ["s3: paused: no AWS credentials ...; 2 event(s) waiting"]}
    assert wire["process"]["cpu_affinity"] == [1]
    assert Status.from_dict(wire) == STATUS


def test_keys_a_newer_sidecar_adds_are_ignored() -> None:
    wire = orjson.loads(orjson.dumps(STATUS.to_dict()))
    wire["new_section"] = {}
    wire["lanes"]["notion"]["new_field"] = 1
    assert Status.from_dict(wire) == STATUS


def test_an_off_lane_is_one_short_line_and_a_paused_one_a_row_and_a_problem() -> None:
    text = render_status(STATUS)
    naver = [line for line in text.splitlines() if line.startswith("naver")]
    assert naver == ["naver                  off  not configured"]
    assert "Naver credentials" not in text
    s3 = next(line for line in text.splitlines() if line.startswith("s3"))
    assert "no AWS credentials" in s3
    assert "problem: s3: paused: no AWS credentials ...; 2 event(s) waiting" in text and "DEGRADED" in text


def test_health_reads_what_health_answers() -> None:
    assert Health.from_dict({"ok": True, "problems": []}) == Health(ok=True)
    assert Health.from_dict({}) == Health(ok=False)


def test_housekeeping_returns_a_snapshot_where_a_lane_without_credential_is_off_until_events_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTION_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = from_dict({"journal": {"dir": str(tmp_path)}})
    (spec,) = notion.build(cfg)
    assert spec.paused is not None
    metrics, store = Metrics(), MemoryStore()
    journal = open_checked(tmp_path, synchronous="NORMAL", recover=True, metrics=metrics)
    lane = Lane(spec.connector, journal, Limiter("notion", spec.rule, store), cfg.retry, metrics, paused=spec.paused)
    ingest = Ingest(cfg.ingest, journal, {}, metrics)  # never started: not alive
    house = Housekeeping(cfg, metrics, journal, ingest, {"notion": lane}, store, JournalHealth(tmp_path, metrics),
                         started=time.time())
    try:
        first = house.refresh()
        assert first.lanes["notion"].state == "off" and first.lanes["notion"].paused == spec.paused
        assert first.lanes["notion"].store == "memory" and first.lanes["notion"].sidecars_sharing == 1
        assert first.health.problems == ("ingest thread is not running",)
        journal.write_batch([EventRow("notion", "notion.page.create", "t", "k1", None, "c", 1, 1, 1,
                                      wire.encode("c", 1, "notion.page.create", "k1", None, 1, {}), None)])
        second = house.refresh()
        assert second.lanes["notion"].state == "paused" and second.journal.pending == 1
        assert second.health.problems == ("ingest thread is not running",
                                          f"notion: paused: {spec.paused}; 1 event(s) waiting")
        assert first.lanes["notion"].state == "off"  # each refresh returns its own snapshot
    finally:
        ingest.stop()
        journal.close()
