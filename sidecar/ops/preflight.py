"""Checks the CLI makes without a running sidecar, with the sidecar's own code.

    refused = event_verdict(cfg, "s3.put", {"key": "k"}, blobs=[b"x"])   # "bad_payload: s3.put: ..." or None
    for line, ok in secrets_report(cfg): ...                            # which lane has its secrets, by name

`event_verdict` builds the lanes' connectors as `sidecar run` does and asks
the one ingest would choose to `route` the event, after the same wire
decoding and size limits: what it refuses, ingest would refuse (given the
same config file). `secrets_report` names the secrets each lane reads,
never their values.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

from client import wire
from sidecar.config import Config
from sidecar.connectors import LaneSpec, build_lanes
from sidecar.connectors.base import Connector
from sidecar.errors import Reject


def _lanes(cfg: Config, *, instance_role: bool = True) -> dict[str, LaneSpec]:
    if not instance_role:
        # Checking an event needs no credential: on a host without AWS ones, do not
        # wait a second for the EC2 metadata service while botocore's chain looks.
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    return build_lanes(cfg)


def _close(specs: dict[str, LaneSpec]) -> None:
    async def close_all() -> None:
        for spec in specs.values():
            await spec.connector.aclose()

    asyncio.run(close_all())


def _connector_for(connectors: list[Connector], env: wire.Envelope) -> Connector:
    """The lane ingest hands the event to (one per kind, or the webhook whose name is the ref)."""
    candidates = [c for c in connectors if env.kind in c.kinds]
    if not candidates:
        raise Reject("unknown_kind", f"no connector delivers {env.kind!r}")
    for connector in candidates:
        if len(candidates) == 1 or connector.accepts(env):
            return connector
    raise Reject("unknown_target", f"no {env.kind} lane is configured for ref {env.ref!r}")


def event_verdict(cfg: Config, kind: str, payload: Any, *, key: str | None = None, ref: str | None = None,
                  blobs: list[bytes] | None = None) -> str | None:
    """None if ingest would journal the event, else `reason: detail` as it would count it."""
    blobs = blobs or []
    frame = wire.encode(f"cli-{os.getpid()}", 1, kind, key, ref, time.time_ns(), payload)
    specs = _lanes(cfg, instance_role=False)
    try:
        if len(frame) > cfg.ingest.max_message_bytes:
            raise Reject("too_large", f"event of {len(frame)} bytes, limit {cfg.ingest.max_message_bytes}")
        if sum(len(b) for b in blobs) > cfg.ingest.max_blob_bytes:
            raise Reject("too_large", f"blobs over {cfg.ingest.max_blob_bytes} bytes")
        try:
            env = wire.decode(frame)
        except wire.WireError as exc:
            raise Reject(exc.reason, str(exc)) from None
        _connector_for([s.connector for s in specs.values()], env).route(env, blobs)
    except Reject as exc:
        return f"{exc.reason}: {kind}: {exc.detail}"
    finally:
        _close(specs)
    return None


def _secret_names(cfg: Config, lane: str) -> list[str]:
    if lane == "notion":
        return [cfg.notion.token_env]
    if lane == "naver":
        return [cfg.naver.client_id_env, cfg.naver.client_secret_env]
    if lane == "s3":
        return ["botocore's credential chain"]
    return []  # a webhook: its URL is its secret, and it is in the config


def secrets_report(cfg: Config) -> Iterator[tuple[str, bool]]:
    """(a line naming a lane and the secrets it reads, whether it can call), one per lane."""
    specs = _lanes(cfg)
    try:
        for name, spec in specs.items():
            names = ", ".join(_secret_names(cfg, name))
            if spec.paused:
                yield f"{name}: off until its secrets are readable: {spec.paused}", False
            else:
                yield f"{name}: ready" + (f" ({names} readable)" if names else ""), True
    finally:
        _close(specs)
