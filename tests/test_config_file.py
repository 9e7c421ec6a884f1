"""Reading a config file: the defaults, and unknown keys or wrong types refused by name (each
setting's checks: test_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_config_defaults_and_strict_keys(tmp_path: Path) -> None:
    cfg = load_config(None)
    assert cfg.notion.version == "2025-09-03"  # as the official SDKs
    assert cfg.notion.rate_per_second == 3.0
    assert cfg.notion.token_env == "NOTION_TOKEN"
    assert cfg.notion.idempotency_property == "Idempotency Key"
    path = tmp_path / "c.toml"
    path.write_text('[notion]\nrate_per_second = 2\nbase_url = "http://x/v1"\n[journal]\ndir = "/tmp/j"\n')
    cfg = load_config(path)
    assert cfg.notion.rate_per_second == 2.0 and cfg.journal.dir == "/tmp/j"
    path.write_text("[notion]\nrate_per_secnod = 2\n")
    with pytest.raises(ConfigError, match="rate_per_secnod"):
        load_config(path)
    path.write_text('[notion]\nrate_per_second = "fast"\n')
    with pytest.raises(ConfigError, match="rate_per_second"):
        load_config(path)
