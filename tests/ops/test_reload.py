"""A reload: which settings apply live, which wait for a restart, and a bad file changes nothing."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import SECTIONS, Config, WebhookConfig, compare, from_dict, merge_live
from sidecar.connectors import build_lanes
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Limiter, MemoryStore
from sidecar.housekeeping import Housekeeping
from sidecar.ingest.core import Ingest
from sidecar.journal.health import JournalHealth
from sidecar.journal.repair import open_checked
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics
from sidecar.reload import reload_config

pytestmark = pytest.mark.timeout(30)

# What a reload applies; README's "Reloading" lists the same. Everything else needs a restart.
LIVE = {
    "[journal] refs_keep_hours", "[journal] rejects_keep_hours",
    "[retry] base", "[retry] cap", "[retry] max_attempts", "[retry] credentials_probe_seconds",
    "[notion] rate_per_second", "[notion] burst", "[s3] rate_per_second", "[s3] burst",
    "[naver] rate_per_second", "[naver] burst", "[webhooks.NAME] rate_per_second", "[webhooks.NAME] burst",
    "[breaker] failures", "[breaker] cooldown", "[log] json", "[log] level",
    "[health] recent_calls", "[health] recent_seconds", "[health] min_calls", "[health] failing_share",
    "drain_timeout",
}


def declared_live() -> set[str]:
    sections = {**SECTIONS, "webhooks.NAME": WebhookConfig}
    found = {f"[{name}] {f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)
             if f.metadata["live"]}
    return found | {f.name for f in dataclasses.fields(Config) if f.metadata.get("live")}


def test_the_settings_a_reload_applies_are_the_documented_ones() -> None:
    assert declared_live() == LIVE


def test_compare_names_each_changed_setting_as_live_or_needing_a_restart() -> None:
    old = from_dict({"webhooks": {"ops": {"url": "http://127.0.0.1:1/a"}, "gone": {"url": "http://127.0.0.1:1/g"}}})
    new = from_dict({"ingest": {"endpoint": "ipc:///tmp/other.sock"}, "notion": {"rate_per_second": 9.0},
                     "drain_timeout": 3.0, "health": {"min_calls": 2},
                     "webhooks": {"ops": {"url": "http://127.0.0.1:1/b", "burst": 2.0},
                                  "new": {"url": "http://127.0.0.1:1/n"}}})
    changes = compare(old, new)
    assert changes.live == ("drain_timeout", "[notion] rate_per_second", "[health] min_calls", "[webhooks.ops] burst")
    assert changes.restart == ("[ingest] endpoint", "[webhooks.gone]", "[webhooks.new]", "[webhooks.ops] url")
    assert compare(old, old) == compare(new, new) == type(changes)()


def test_merge_live_takes_the_live_values_and_keeps_the_running_ones_that_need_a_restart() -> None:
    old = from_dict({"webhooks": {"ops": {"url": "http://127.0.0.1:1/a"}}})
    new = from_dict({"ingest": {"endpoint": "ipc:///tmp/other.sock"}, "notion": {"rate_per_second": 9.0},
                     "retry": {"base": 0.1, "cap": 0.2}, "webhooks": {"ops": {"url": "http://x.test/b", "burst": 3.0}}})
    merged = merge_live(old, new)
    assert merged.notion.rate_per_second == 9.0 and merged.retry == new.retry
    assert merged.webhooks["ops"].burst == 3.0 and merged.webhooks["ops"].url == "http://127.0.0.1:1/a"
    assert merged.ingest == old.ingest
    assert compare(merged, new).live == ()  # applied: a second reload finds only what waits for a restart


# -- reload_config over real lanes, journal and housekeeping -------------------------------------------


@dataclass
class Running:
    """What `Sidecar` hands a reload: `build.Parts` has the same three."""

    journal: Journal
    lanes: dict[str, Lane]
    house: Housekeeping


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Config, Running]]:
    monkeypatch.setenv("NOTION_TOKEN", "secret_reload_test")
    cfg = from_dict({"journal": {"dir": str(tmp_path / "j")}, "notion": {"rate_per_second": 3.0},
                     "webhooks": {"ops": {"url": "http://127.0.0.1:9/hook"}}})
    metrics, store = Metrics(), MemoryStore()
    journal = open_checked(cfg.journal.dir, synchronous="NORMAL", recover=True, metrics=metrics)
    lanes = {name: Lane(spec.connector, journal, Limiter(name, spec.rule, store), cfg.retry, metrics,
                        breaker=cfg.breaker) for name, spec in build_lanes(cfg).items()}
    ingest = Ingest(cfg.ingest, journal, {}, metrics)
    house = Housekeeping(cfg, metrics, journal, ingest, lanes, store, JournalHealth(cfg.journal.dir, metrics),
                         started=time.time())
    try:
        yield cfg, Running(journal, lanes, house)
    finally:
        ingest.stop()
        journal.close()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_reload_applies_rates_retry_breaker_and_keeps_and_names_what_needs_a_restart(
        tmp_path: Path, running: tuple[Config, Running], caplog: pytest.LogCaptureFixture) -> None:
    cfg, parts = running
    path = write(tmp_path / "sidecar.toml", f"""
[journal]
dir = "{cfg.journal.dir}"
refs_keep_hours = 2
[notion]
rate_per_second = 50.0
burst = 4
base_url = "http://127.0.0.1:1/v1"
[retry]
base = 0.25
cap = 2
credentials_probe_seconds = 7
[breaker]
failures = 9
[health]
min_calls = 2
[webhooks.ops]
url = "http://127.0.0.1:9/hook"
rate_per_second = 5
""")
    with caplog.at_level(logging.INFO, logger="sidecar"):
        now = reload_config(path, cfg, parts)
    notion, hook = parts.lanes["notion"], parts.lanes["webhook.ops"]
    assert (notion.limiter.rule.rate, notion.limiter.rule.burst) == (50.0, 4.0)
    assert notion.limiter.view(time.time())["rate_per_second"] == 50.0  # status shows it before the next call
    assert hook.limiter.rule.rate == 5.0
    assert notion.retry.base == 0.25 and notion._settle.retry.cap == 2.0 and notion._pause.probe_seconds == 7.0
    assert notion.breaker.threshold == 9 and parts.journal.refs_keep == 7200
    assert parts.house.cfg is now and now.health.min_calls == 2
    assert now.notion.base_url == cfg.notion.base_url  # the old URL runs until a restart
    status = parts.house.refresh()
    assert status.lanes["notion"].configured_rate == 50.0
    assert status.restart_needed == ("[notion] base_url",) and status.reload_refused is None
    assert "[notion] base_url" in next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "secret_reload_test" not in caplog.text


@pytest.mark.parametrize(("text", "says"), [
    ("[notion\nrate_per_second = 50", "is not valid TOML"),
    ("[notion]\nrate_per_second = 50\nburst = 0.5", "[notion] burst must be 1 or more, got 0.5"),
    ("[notion]\nrate_per_second = 50\n[retry]\nbase = 5\ncap = 1", "[retry] cap must be at least base"),
    ("[notoin]\nrate_per_second = 50", "unknown section or setting 'notoin'"),
])
def test_a_file_that_no_longer_loads_is_refused_with_its_message_and_nothing_changes(
        tmp_path: Path, running: tuple[Config, Running], caplog: pytest.LogCaptureFixture, text: str,
        says: str) -> None:
    cfg, parts = running
    before: dict[str, Any] = {name: (lane.limiter.rule, lane.retry) for name, lane in parts.lanes.items()}
    with caplog.at_level(logging.INFO, logger="sidecar"):
        assert reload_config(write(tmp_path / "sidecar.toml", text), cfg, parts) is cfg
    assert {name: (lane.limiter.rule, lane.retry) for name, lane in parts.lanes.items()} == before
    assert says in (parts.house.reload_refused or "")
    assert parts.house.refresh().reload_refused == parts.house.reload_refused
    assert [r.levelname for r in caplog.records] == ["ERROR"] and says in caplog.records[0].getMessage()


def test_a_changed_log_level_applies_and_an_unchanged_one_leaves_the_command_lines(
        tmp_path: Path, running: tuple[Config, Running]) -> None:
    cfg, parts = running
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.DEBUG)  # as `run --log-level DEBUG` would
        path = write(tmp_path / "sidecar.toml", f'[journal]\ndir = "{cfg.journal.dir}"\n'
                     '[webhooks.ops]\nurl = "http://127.0.0.1:9/hook"\n[notion]\nrate_per_second = 3.0\n')
        reload_config(path, cfg, parts)
        assert root.level == logging.DEBUG
        write(path, path.read_text() + '[log]\nlevel = "warning"\n')
        reload_config(path, cfg, parts)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(level)
