"""Config is checked at the edge: every setting's type and range, with a message naming it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sidecar.config import SECTIONS, Config, WebhookConfig, from_dict
from sidecar.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("doc, message", [
    ({"drain_timeout": "soon"}, "drain_timeout must be a number, got 'soon'"),
    ({"drain_timeout": -1}, "drain_timeout must be 0 or more, got -1"),
    ({"journal": {"synchronous": "fast"}}, "[journal] synchronous must be FULL, NORMAL or EXTRA, got 'fast'"),
    ({"journal": {"refs_keep_hours": 0}}, "[journal] refs_keep_hours must be greater than 0, got 0"),
    ({"journal": {"dir": ""}}, "[journal] dir must be a non-empty string"),
    ({"ingest": {"endpoint": "/run/x.sock"}}, "[ingest] endpoint must be an ipc://PATH or tcp://HOST:PORT endpoint"),
    ({"ingest": {"batch_max": 0}}, "[ingest] batch_max must be 1 or more, got 0"),
    ({"ingest": {"max_message_bytes": 2 << 20}}, "[ingest] max_message_bytes must be between 1 and 1048576"),
    ({"retry": {"base": 0}}, "[retry] base must be greater than 0, got 0"),
    ({"retry": {"max_attempts": 2.5}}, "[retry] max_attempts must be an integer, got 2.5"),
    ({"retry": {"base": 5, "cap": 1}}, "[retry] cap must be at least base (5.0), got 1.0"),
    ({"notion": {"rate_per_second": -3}}, "[notion] rate_per_second must be greater than 0, got -3"),
    ({"notion": {"burst": 0.5}}, "[notion] burst must be 1 or more, got 0.5"),
    ({"notion": {"max_children_per_request": 101}}, "[notion] max_children_per_request must be between 1 and 100"),
    ({"notion": {"base_url": "api.notion.com"}}, "[notion] base_url must be an http:// or https:// URL"),
    ({"notion": {"timeout": True}}, "[notion] timeout must be a number, got True"),
    ({"s3": {"concurrency": 0}}, "[s3] concurrency must be 1 or more, got 0"),
    ({"s3": {"endpoint_url": "localhost:9000"}}, "[s3] endpoint_url must be empty or an http:// or https:// URL"),
    ({"naver": {"max_products_per_request": 0}}, "[naver] max_products_per_request must be 1 or more"),
    ({"naver": {"client_id_env": ""}}, "[naver] client_id_env must be a non-empty string"),
    ({"webhooks": {"alerts": {"url": "ftp://x"}}}, "[webhooks.alerts] url must be an http:// or https:// URL"),
    ({"webhooks": {"alerts": {"url": "http://x", "timeout": 0}}}, "[webhooks.alerts] timeout must be greater than 0"),
    ({"redis": {"timeout": 5}}, "[redis] timeout must be between 0 and 1 s"),
    ({"metrics": {"address": "9464"}}, "[metrics] address must be empty (off) or HOST:PORT"),
    ({"breaker": {"failures": 0}}, "[breaker] failures must be 1 or more, got 0"),
    ({"breaker": {"cooldown": "30s"}}, "[breaker] cooldown must be a number, got '30s'"),
    ({"process": {"cpu_affinity": 1}}, "[process] cpu_affinity must be a list of integers, got 1"),
    ({"process": {"cpu_affinity": [1, "2"]}}, "[process] cpu_affinity must be a list of integers, got [1, '2']"),
    ({"process": {"cpu_affinity": [-1]}}, "[process] cpu_affinity must be CPU numbers from 0, got [-1]"),
    ({"process": {"nice": 40}}, "[process] nice must be between -20 and 19, got 40"),
    ({"log": {"level": "LOUD"}}, "[log] level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'LOUD'"),
    ({"log": {"json": "yes"}}, "[log] json must be true or false, got 'yes'"),
])
def test_a_bad_value_is_refused_with_a_message_naming_the_setting(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        from_dict(doc)
    assert str(refused.value).startswith(message)


def test_good_values_are_kept_and_sequences_become_tuples() -> None:
    cfg = from_dict({"drain_timeout": 3, "journal": {"synchronous": "normal"}, "process": {"cpu_affinity": [1, 3]},
                     "log": {"level": "debug"}, "metrics": {"address": ""}, "retry": {"max_attempts": 0}})
    assert cfg.drain_timeout == 3.0 and isinstance(cfg.drain_timeout, float)
    assert cfg.journal.synchronous == "normal" and cfg.retry.max_attempts == 0
    assert cfg.process.cpu_affinity == (1, 3)
    assert cfg.metrics.address == ""


def test_every_setting_declares_its_range_and_no_setting_holds_a_list() -> None:
    for cls in [*SECTIONS.values(), WebhookConfig, Config]:
        for f in dataclasses.fields(cls):
            if cls is Config and f.name != "drain_timeout":
                continue  # the sections themselves
            assert "check" in f.metadata, f"{cls.__name__}.{f.name} has no check"
            assert "list" not in str(f.type), f"{cls.__name__}.{f.name} is a list: use a tuple"
