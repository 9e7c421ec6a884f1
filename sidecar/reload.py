"""The configuration file read again (SIGHUP, `sidecar reload`): every live change applied, or none.

    running = reload_config(path, running, parts)    # the Config the sidecar runs with from now on

What applies live is declared by the setting itself (`setting(..., live=True)`
in `config.py`): each lane's `rate_per_second` and `burst`, `[retry] base`,
`cap`, `max_attempts`, `credentials_probe_seconds`, `[breaker]`, `[health]`,
`[log]`, `[journal] refs_keep_hours`, `rejects_keep_hours`, and
`drain_timeout`. Every other setting that changed (an endpoint, a URL, the
journal's directory, the metrics address, a webhook added or removed...) is
named in one warning as needing a restart, and the sidecar keeps its old value
until then (so a later reload names it again). A file that no longer loads
(not TOML, a value out of range: the checks of `sidecar validate`) is refused
with its message and nothing changes. Nothing here can fail half-way: the new
configuration is checked and every value computed before the first is set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Protocol

from sidecar.config import Config, compare, load_config, merge_live
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Rule
from sidecar.errors import ConfigError
from sidecar.housekeeping import Housekeeping
from sidecar.journal.store import Journal
from sidecar.ops.logs import RedactingFormatter

log = logging.getLogger("sidecar")

RESTART = "systemctl restart trading-sidecar, or stop and start `sidecar run`"


class Reloadable(Protocol):
    """What a reload changes: `build.Parts` has these."""

    @property
    def journal(self) -> Journal: ...

    @property
    def lanes(self) -> dict[str, Lane]: ...

    @property
    def house(self) -> Housekeeping: ...  # its cfg, restart_needed and reload_refused


def lane_rule(cfg: Config, lane: str, rule: Rule) -> Rule:
    """`rule` with the rate and burst `cfg` gives lane `lane` (notion, s3, naver, webhook.NAME).

        lane_rule(cfg, "webhook.alerts", rule).rate == cfg.webhooks["alerts"].rate_per_second
    """
    api, _, hook = lane.partition(".")
    section = cfg.webhooks.get(hook) if api == "webhook" else getattr(cfg, api, None)
    rate, burst = getattr(section, "rate_per_second", None), getattr(section, "burst", None)
    if rate is None or burst is None:
        return rule  # a lane the configuration does not pace
    return dataclasses.replace(rule, rate=rate, burst=burst)


def reload_config(path: str | os.PathLike[str] | None, running: Config, parts: Reloadable) -> Config:
    """Read `path` again and apply what can change live; return the configuration now in force."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        parts.house.reload_refused = str(exc)
        log.error("reload refused: %s; the sidecar keeps running with its configuration as it was", exc)
        return running
    changes = compare(running, new)
    cfg = merge_live(running, new)
    _apply(cfg, running, parts)
    parts.house.reload_refused = None
    parts.house.restart_needed = changes.restart
    where = path or "the built-in defaults"
    log.info("reload: configuration %s read again; applied: %s", where, ", ".join(changes.live) or "no change")
    if changes.restart:
        log.warning("reload: changed in %s but needing a restart to apply (running with the old values until "
                    "then: %s): %s", where, RESTART, ", ".join(changes.restart))
    return cfg


def _apply(cfg: Config, old: Config, parts: Reloadable) -> None:
    lanes = parts.lanes
    rules = {name: lane_rule(cfg, name, lane.limiter.rule) for name, lane in lanes.items()}  # computed first
    for name, lane in lanes.items():
        lane.reconfigure(rules[name], cfg.retry, cfg.breaker)
    parts.journal.refs_keep = cfg.journal.refs_keep_hours * 3600
    parts.house.cfg = cfg  # rejects_keep_hours and [health], from the next tick
    # Only a changed [log] setting: one given on the command line (--log-level) stays otherwise.
    root = logging.getLogger()
    if cfg.log.level != old.log.level:
        root.setLevel(cfg.log.level.upper())
    if cfg.log.json != old.log.json:
        for handler in root.handlers:
            if isinstance(handler.formatter, RedactingFormatter):
                handler.formatter.json_lines = cfg.log.json
