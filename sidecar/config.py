"""Settings: frozen dataclasses read from TOML at the edge; every field has a default.

    cfg = load_config("sidecar.toml")      # or load_config(None) for the defaults
    cfg.notion.rate_per_second             # 3.0

Unknown sections or keys are an error that names them, so a typo in a
config file cannot silently fall back to a default. Every field declares its
range (`setting(default, check=...)`) and every value read is checked against
its type and range here, at the edge, so that a bad value stops the sidecar
with a `ConfigError` naming the setting rather than a ValueError later.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from client import wire
from sidecar.errors import ConfigError


def _default_journal_dir() -> str:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; elsewhere use the user's state dir.
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return state.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "trading-sidecar")


@dataclass(frozen=True)
class Check:
    """A setting's range: `ok(value)` for a value of the right type; `says` completes "must be ..."."""

    ok: Callable[[Any], bool]
    says: str


def setting(default: Any = dataclasses.MISSING, *, check: Check, factory: Any = dataclasses.MISSING,
            live: bool = False) -> Any:
    """A field with its range: `rate_per_second: float = setting(3.0, check=POSITIVE, live=True)`.
    No default and no factory: the setting is required. `live`: a reload applies a new value
    to the running sidecar (`sidecar/reload.py`); otherwise a change waits for a restart."""
    return field(default=default, default_factory=factory, metadata={"check": check, "live": live})


def between(lo: int, hi: int) -> Check:
    return Check(lambda v: lo <= v <= hi, f"between {lo} and {hi}")


def one_of(*choices: str, any_case: bool = False) -> Check:
    def ok(v: str) -> bool:
        return (v.upper() if any_case else v) in choices
    return Check(ok, ", ".join(choices[:-1]) + " or " + choices[-1])


def _host_port(v: str) -> bool:
    _, colon, port = v.rpartition(":")
    return bool(colon) and port.isdigit() and int(port) <= 65535


ANY = Check(lambda v: True, "anything")
POSITIVE = Check(lambda v: v > 0, "greater than 0")
AT_LEAST_0 = Check(lambda v: v >= 0, "0 or more")
AT_LEAST_1 = Check(lambda v: v >= 1, "1 or more")
NOT_EMPTY = Check(lambda v: v.strip() != "", "a non-empty string")
HTTP_URL = Check(lambda v: v.startswith(("http://", "https://")) and bool(urlsplit(v).hostname),
                 "an http:// or https:// URL")
HTTP_URL_OR_EMPTY = Check(lambda v: v == "" or HTTP_URL.ok(v), "empty or an http:// or https:// URL")
HOST_PORT_OR_EMPTY = Check(lambda v: v == "" or _host_port(v), "empty (off) or HOST:PORT, e.g. 127.0.0.1:9464")
ZMQ_ENDPOINT = Check(lambda v: v.startswith(("ipc://", "tcp://")) and len(v) > 6,
                     "an ipc://PATH or tcp://HOST:PORT endpoint")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    endpoint: str = setting(factory=wire.default_endpoint, check=ZMQ_ENDPOINT)
    max_message_bytes: int = setting(wire.MAX_EVENT_BYTES, check=between(1, wire.MAX_EVENT_BYTES))
    max_blob_bytes: int = setting(wire.MAX_BLOB_BYTES, check=between(0, wire.MAX_BLOB_BYTES))
    batch_max: int = setting(4096, check=AT_LEAST_1)  # events per journal transaction (group commit)
    # ...or fewer, once the oldest of them has waited this long (seconds): at low rates a
    # commit (an fsync) for several events, not one each. 0 commits whatever a read found.
    commit_window: float = setting(0.010, check=Check(lambda v: 0 <= v <= 1, "between 0 and 1"))
    # While events keep flowing the window doubles at each commit, up to this (seconds): at
    # 100 events/s ten commits a second, not a hundred (an fsync each: most of ingest's CPU,
    # bench/footprint.py). What it costs: up to this much more emit -> journal while a flow
    # lasts; the first event after a quiet spell still commits at once. Below commit_window: commit_window.
    commit_window_max: float = setting(0.100, check=Check(lambda v: 0 <= v <= 1, "between 0 and 1"))
    # Where producers leave blobs of 64 KiB or more (client.blobs); "": beside the journal, <journal dir>.inbox.
    blob_dir: str = setting("", check=ANY)
    # A client heard of by nobody for this long is forgotten (its sequence state; the journal's clients table).
    clients_keep_hours: float = setting(168.0, check=POSITIVE)


@dataclass(frozen=True, kw_only=True)
class JournalConfig:
    dir: str = setting(factory=_default_journal_dir, check=NOT_EMPTY)
    # FULL survives power loss; NORMAL survives a killed process only.
    synchronous: str = setting("FULL", check=one_of("FULL", "NORMAL", "EXTRA", any_case=True))
    # A delivered event's ref (what its create made, or that its key was delivered) answers late
    # updates with ref=KEY and skips a re-sent duplicate for this long; then it is forgotten.
    refs_keep_hours: float = setting(168.0, check=POSITIVE, live=True)
    rejects_keep_hours: float = setting(168.0, check=POSITIVE, live=True)  # the sample of rejected frames


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    base: float = setting(0.5, check=POSITIVE, live=True)     # first backoff ceiling, seconds
    cap: float = setting(60.0, check=POSITIVE, live=True)     # largest backoff ceiling, seconds
    max_attempts: int = setting(30, check=AT_LEAST_0, live=True)  # then dead-letter as retries_exhausted; 0: never
    ref_wait: float = setting(600.0, check=AT_LEAST_0)  # how long an update may wait for an unknown ref
    # A lane paused on refused credentials tries them again this often.
    credentials_probe_seconds: float = setting(300.0, check=POSITIVE, live=True)


@dataclass(frozen=True, kw_only=True)
class NotionConfig:
    base_url: str = setting("https://api.notion.com/v1", check=HTTP_URL)
    token_env: str = setting("NOTION_TOKEN", check=NOT_EMPTY)
    # As the official SDKs (notion-sdk-js src/Client.ts `defaultNotionVersion`, notion-sdk-py): 2025-09-03.
    # 2022-06-28 still works for a database with one data source; 2026-03-11 places appends with `position`.
    version: str = setting("2025-09-03", check=one_of("2022-06-28", "2025-09-03", "2026-03-11"))
    rate_per_second: float = setting(3.0, check=POSITIVE, live=True)
    burst: float = setting(1.0, check=AT_LEAST_1, live=True)
    idempotency_property: str = setting("Idempotency Key", check=ANY)  # empty: no query before a create
    timeout: float = setting(30.0, check=POSITIVE)  # seconds for one HTTP call
    max_children_per_request: int = setting(100, check=between(1, 100))
    # Under Notion's 500 KB, leaving room for overhead.
    max_request_bytes: int = setting(450_000, check=between(1, 500_000))


@dataclass(frozen=True, kw_only=True)
class S3Config:
    endpoint_url: str = setting("", check=HTTP_URL_OR_EMPTY)  # empty: AWS's own endpoint for the region
    region: str = setting("us-east-1", check=NOT_EMPTY)
    concurrency: int = setting(4, check=AT_LEAST_1)  # calls in flight at once on the lane
    rate_per_second: float = setting(100.0, check=POSITIVE, live=True)
    burst: float = setting(20.0, check=AT_LEAST_1, live=True)
    timeout: float = setting(60.0, check=POSITIVE)


@dataclass(frozen=True, kw_only=True)
class NaverConfig:
    base_url: str = setting("https://api.commerce.naver.com/external", check=HTTP_URL)
    client_id_env: str = setting("NAVER_CLIENT_ID", check=NOT_EMPTY)
    client_secret_env: str = setting("NAVER_CLIENT_SECRET", check=NOT_EMPTY)
    rate_per_second: float = setting(2.0, check=POSITIVE, live=True)
    burst: float = setting(1.0, check=AT_LEAST_1, live=True)
    # Per-call maximum of multi-update: the Commerce API center's page for PATCH
    # /v1/products/origin-products/multi-update gives none (nor does API_FACTS.md's
    # source); 50 is ours. A call over the real maximum is refused whole (400) and
    # split in halves until the parts pass, so a value too high costs calls, never events.
    max_products_per_request: int = setting(50, check=AT_LEAST_1)
    timeout: float = setting(30.0, check=POSITIVE)
    # How long the lane waits on a 429 GW.QUOTA_LIMIT whose GNCP-GW-Quota-Period is not a
    # clock period (ROUND: a subscription round) or is missing; the documents give no reset time.
    quota_wait_seconds: float = setting(3600.0, check=POSITIVE)


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    url: str = setting(check=HTTP_URL)  # required
    rate_per_second: float = setting(1.0, check=POSITIVE, live=True)
    burst: float = setting(1.0, check=AT_LEAST_1, live=True)
    timeout: float = setting(10.0, check=POSITIVE)


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Where several sidecars share their API quotas; empty `url`: each sidecar alone, in memory."""

    url: str = setting("", check=ANY)  # redis://host:6379/0 or rediss://...; no password in it (_check_redis)
    # $CREDENTIALS_DIRECTORY/NAME, else $NAME; none: no AUTH
    password_env: str = setting("REDIS_PASSWORD", check=NOT_EMPTY)
    # Seconds for one Redis call on a lane's path.
    timeout: float = setting(0.05, check=Check(lambda v: 0 < v <= 1.0,
                                               "between 0 and 1 s (the bound on one call on a lane's path)"))
    key_prefix: str = setting("trading-sidecar", check=NOT_EMPTY)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    address: str = setting("127.0.0.1:9464", check=HOST_PORT_OR_EMPTY)  # /metrics, /health, /status; empty turns it off


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    failures: int = setting(5, check=AT_LEAST_1, live=True)  # failed calls in a row that open a lane's breaker
    cooldown: float = setting(30.0, check=POSITIVE, live=True)  # seconds before a probe call


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    """When a lane's recent calls make `check` degraded: more than `failing_share` of its last
    `recent_calls` calls (those of the last `recent_seconds`, at least `min_calls` of them)
    refused by the API or dead-lettered."""

    recent_calls: int = setting(20, check=between(1, 100), live=True)  # the lane keeps its last 100 outcomes
    recent_seconds: float = setting(600.0, check=POSITIVE, live=True)
    min_calls: int = setting(5, check=AT_LEAST_1, live=True)
    failing_share: float = setting(0.5, check=Check(lambda v: 0 <= v < 1, "0 or more and under 1"), live=True)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    # Keep the sidecar off the trading loop's core when not under systemd
    # (the unit's CPUAffinity= and Nice= do the same there).
    cpu_affinity: tuple[int, ...] = setting((), check=Check(lambda v: all(c >= 0 for c in v), "CPU numbers from 0"))
    nice: int = setting(0, check=between(-20, 19))


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    json: bool = setting(False, check=ANY, live=True)
    level: str = setting("INFO", check=one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", any_case=True), live=True)


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
    health: HealthConfig = field(default_factory=HealthConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    log: LogConfig = field(default_factory=LogConfig)
    drain_timeout: float = setting(10.0, check=AT_LEAST_0, live=True)  # seconds SIGTERM may spend finishing calls in flight


def _value(cls: type, name: str, value: Any, where: str) -> Any:
    """`value` for setting `name` of `cls`, checked against the field's type and range."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = get_type_hints(cls)[name]
    setting_name = f"[{where}] {name}" if where else name
    given = value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint == tuple[int, ...] and isinstance(value, list):
        value = tuple(value)  # TOML arrays are lists; frozen settings hold tuples
    if not _is_a(value, hint):
        raise ConfigError(f"{setting_name} must be {_type_name(hint)}, got {given!r}")
    check: Check = f.metadata["check"]
    if not check.ok(value):
        raise ConfigError(f"{setting_name} must be {check.says}, got {given!r}")
    return value


def _is_a(value: Any, hint: Any) -> bool:
    if hint == tuple[int, ...]:
        return isinstance(value, tuple) and all(_is_a(v, int) for v in value)
    if hint is int or hint is float:
        return isinstance(value, hint) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             tuple[int, ...]: "a list of integers"}
    return names.get(hint, str(hint))


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{where}]: {', '.join(unknown)}")
    return cls(**{name: _value(cls, name, value, where) for name, value in values.items()})


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
    "health": HealthConfig,
    "process": ProcessConfig,
    "log": LogConfig,
}


MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read a TOML file (None: all defaults). Raises ConfigError with the reason."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: a reload reads it inside the running sidecar
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8", errors="replace"))
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
            kwargs[name] = _value(Config, name, value, "")
        else:
            raise ConfigError(f"unknown section or setting {name!r}")
    if "redis" in kwargs:
        _check_redis(kwargs["redis"])
    if "retry" in kwargs and kwargs["retry"].cap < kwargs["retry"].base:
        raise ConfigError(f"[retry] cap must be at least base ({kwargs['retry'].base}), got {kwargs['retry'].cap}")
    return Config(**kwargs)


def _check_redis(cfg: RedisConfig) -> None:
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


@dataclass(frozen=True)
class Changes:
    """What differs between two configs, by setting name: `live` a reload applies, `restart` waits.

        changes = compare(running, load_config("sidecar.toml"))
        changes.live       # ["[notion] rate_per_second"]
        changes.restart    # ["[ingest] endpoint", "[webhooks.ops]"] (a webhook added or removed)
    """

    live: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()


def _section_changes(old: Any, new: Any, where: str) -> Iterator[tuple[str, bool]]:
    """(setting name, applies live) for each field of two section dataclasses that differs."""
    for f in dataclasses.fields(old):
        if getattr(old, f.name) != getattr(new, f.name):
            yield (f"[{where}] {f.name}" if where else f.name), bool(f.metadata.get("live"))


def compare(old: Config, new: Config) -> Changes:
    """Which settings differ from `old` to `new`, and which of those a reload can apply."""
    found: list[tuple[str, bool]] = [("drain_timeout", True)] if old.drain_timeout != new.drain_timeout else []
    for name in SECTIONS:
        found += _section_changes(getattr(old, name), getattr(new, name), name)
    for hook in sorted(old.webhooks.keys() | new.webhooks.keys()):
        if hook in old.webhooks and hook in new.webhooks:
            found += _section_changes(old.webhooks[hook], new.webhooks[hook], f"webhooks.{hook}")
        else:
            found.append((f"[webhooks.{hook}]", False))  # a lane added or removed: a restart builds lanes
    return Changes(live=tuple(n for n, live in found if live), restart=tuple(n for n, live in found if not live))


def _with_live(old: Any, new: Any) -> Any:
    live = {f.name: getattr(new, f.name) for f in dataclasses.fields(old) if f.metadata.get("live")}
    return dataclasses.replace(old, **live)


def merge_live(running: Config, new: Config) -> Config:
    """`running` with every live setting taken from `new`: what a reload runs with until a restart.

        merge_live(running, new).notion.rate_per_second == new.notion.rate_per_second   # live
        merge_live(running, new).notion.base_url == running.notion.base_url           # needs a restart
    """
    sections = {name: _with_live(getattr(running, name), getattr(new, name)) for name in SECTIONS}
    hooks = {name: _with_live(hook, new.webhooks[name]) if name in new.webhooks else hook
             for name, hook in running.webhooks.items()}
    return dataclasses.replace(running, **sections, webhooks=hooks, drain_timeout=new.drain_timeout)
