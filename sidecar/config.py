"""Settings: frozen dataclasses read from TOML at the edge; every field has a default.

    cfg = load_config("sidecar.toml")      # or load_config(None) for the defaults
    cfg.notion.rate_per_second             # 3.0

Unknown sections or keys are an error that names them, so a typo in a
config file cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import wire

from .errors import ExitCode, StartupError


def _default_journal_dir() -> str:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; elsewhere use the user's state dir.
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return state.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "trading-sidecar")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    endpoint: str = field(default_factory=wire.default_endpoint)
    max_message_bytes: int = wire.MAX_EVENT_BYTES
    max_blob_bytes: int = wire.MAX_BLOB_BYTES
    batch_max: int = 4096          # events per journal transaction (group commit)


@dataclass(frozen=True, kw_only=True)
class JournalConfig:
    dir: str = field(default_factory=_default_journal_dir)
    # FULL survives power loss; NORMAL survives a killed process only.
    synchronous: str = "FULL"


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    base: float = 0.5              # first backoff ceiling, seconds
    cap: float = 60.0              # largest backoff ceiling, seconds
    max_attempts: int = 30         # then dead-letter as retries_exhausted
    ref_wait: float = 600.0        # how long an update may wait for an unknown ref
    credentials_probe_seconds: float = 300.0  # a lane paused on refused credentials tries again this often


@dataclass(frozen=True, kw_only=True)
class NotionConfig:
    base_url: str = "https://api.notion.com/v1"
    token_env: str = "NOTION_TOKEN"
    version: str = "2022-06-28"
    rate_per_second: float = 3.0
    burst: float = 1.0
    idempotency_property: str = "Idempotency Key"
    timeout: float = 30.0          # seconds for one HTTP call
    max_children_per_request: int = 100
    max_request_bytes: int = 450_000  # under Notion's 500 KB, leaving room for overhead


@dataclass(frozen=True, kw_only=True)
class S3Config:
    endpoint_url: str = ""         # empty: AWS's own endpoint for the region
    region: str = "us-east-1"
    concurrency: int = 4           # calls in flight at once on the lane
    rate_per_second: float = 100.0
    burst: float = 20.0
    timeout: float = 60.0


@dataclass(frozen=True, kw_only=True)
class NaverConfig:
    base_url: str = "https://api.commerce.naver.com/external"
    client_id_env: str = "NAVER_CLIENT_ID"
    client_secret_env: str = "NAVER_CLIENT_SECRET"
    rate_per_second: float = 2.0
    burst: float = 1.0
    max_products_per_request: int = 50   # per-call maximum of multi-update (unconfirmed by Naver's docs)
    timeout: float = 30.0


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    url: str
    rate_per_second: float = 1.0
    burst: float = 1.0
    timeout: float = 10.0


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Where several sidecars share their API quotas; empty `url`: each sidecar alone, in memory."""

    url: str = ""                  # redis://host:6379/0 or rediss://...; no password in it
    password_env: str = "REDIS_PASSWORD"  # $CREDENTIALS_DIRECTORY/NAME, else $NAME; none: no AUTH
    timeout: float = 0.05          # seconds for one Redis call on a lane's path
    key_prefix: str = "trading-sidecar"


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    address: str = "127.0.0.1:9464"   # /metrics, /health, /status; empty turns it off


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    failures: int = 5              # failed calls in a row that open a lane's breaker
    cooldown: float = 30.0         # seconds before a probe call


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    # Keep the sidecar off the trading loop's core when not under systemd
    # (the unit's CPUAffinity= and Nice= do the same there).
    cpu_affinity: list[int] = field(default_factory=list)
    nice: int = 0


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    json: bool = False
    level: str = "INFO"


@dataclass(frozen=True, kw_only=True)
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    notion: NotionConfig = field(default_factory=NotionConfig)
    s3: S3Config = field(default_factory=S3Config)
    naver: NaverConfig = field(default_factory=NaverConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    webhooks: dict[str, WebhookConfig] = field(default_factory=dict)  # [webhooks.NAME]
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    log: LogConfig = field(default_factory=LogConfig)
    drain_timeout: float = 10.0    # seconds SIGTERM may spend finishing calls in flight


class ConfigError(StartupError, ValueError):
    exit_code = ExitCode.CONFIG


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{where}]: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        f = known[name]
        default: Any = ""  # a required setting: only strings are required today
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and not isinstance(value, type(default)):
            raise ConfigError(f"[{where}] {name} must be {type(default).__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "journal": JournalConfig,
    "retry": RetryConfig,
    "notion": NotionConfig,
    "s3": S3Config,
    "naver": NaverConfig,
    "redis": RedisConfig,
    "metrics": MetricsConfig,
    "breaker": BreakerConfig,
    "process": ProcessConfig,
    "log": LogConfig,
}


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read a TOML file (None: all defaults). Raises ConfigError with the reason."""
    if path is None:
        return Config()
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return from_dict(doc)


def from_dict(doc: dict[str, Any]) -> Config:
    kwargs: dict[str, Any] = {}
    for name, value in doc.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{name}] must be a table")
            kwargs[name] = _build(SECTIONS[name], value, name)
        elif name == "webhooks":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError("[webhooks.NAME] tables expected, e.g. [webhooks.alerts] url = \"https://...\"")
            hooks = {}
            for hook, table in value.items():
                if "url" not in table:
                    raise ConfigError(f"[webhooks.{hook}] needs url")
                hooks[hook] = _build(WebhookConfig, table, f"webhooks.{hook}")
            kwargs[name] = hooks
        elif name == "drain_timeout":
            kwargs[name] = float(value)
        else:
            raise ConfigError(f"unknown section or setting {name!r}")
    if "redis" in kwargs:
        _check_redis(kwargs["redis"])
    return Config(**kwargs)


def _check_redis(cfg: RedisConfig) -> None:
    from urllib.parse import urlsplit

    if not cfg.url:
        return
    parts = urlsplit(cfg.url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"[redis] url must start with redis:// or rediss://, got {parts.scheme or 'no'} scheme")
    if parts.password is not None:
        # The config file is readable by more people than a credential is.
        raise ConfigError(f"[redis] url must not carry a password: put it in ${cfg.password_env} "
                          "or a systemd credential of that name ([redis] password_env)")
    if not parts.hostname:
        raise ConfigError("[redis] url needs a host, e.g. redis://10.0.0.5:6379/0")
    if not 0 < cfg.timeout <= 1.0:
        raise ConfigError(f"[redis] timeout is the bound on one call on a lane's path: between 0 and 1 s, "
                          f"got {cfg.timeout}")
