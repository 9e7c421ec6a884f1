"""Connectors, one module per outside API, and the table that builds their lanes.

    specs = build_lanes(cfg)      # {"notion": LaneSpec(connector, rule, concurrency, paused), ...}

Adding an API means one module with a `build(cfg) -> list[LaneSpec]` function
and one entry in the list `_builders()` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sidecar.config import Config
from sidecar.connectors.base import Connector
from sidecar.delivery.limiter import Rule


@dataclass
class LaneSpec:
    connector: Connector
    rule: Rule
    concurrency: int = 1
    paused: str | None = None  # why the lane cannot call yet (a missing secret); events wait meanwhile
    # What the API's quota belongs to (a token, an application id, a URL): lanes
    # of sidecars with the same one share a quota in Redis. Only its hash leaves the process.
    quota_id: str = ""


def _builders() -> list[Callable[[Config], list[LaneSpec]]]:
    from sidecar.connectors import naver, notion, s3, webhook

    return [notion.build, s3.build, naver.build, webhook.build]


def build_lanes(cfg: Config) -> dict[str, LaneSpec]:
    specs: dict[str, LaneSpec] = {}
    for build in _builders():
        for spec in build(cfg):
            specs[spec.connector.lane] = spec
    return specs
