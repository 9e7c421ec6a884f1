"""What an API says about its own quota: plain data that a connector reads off
an answer and the lane's limiter adopts (`sidecar.delivery.limiter`).

    ApiQuota(rate=1.0, burst=1.0, remaining=0.0)   # Naver's GNCP-GW-RateLimit-* headers
    ApiQuota()                                      # the API said nothing: every field NONE

A module of its own, importing nothing, so that the low modules that name it
(`errors.RateLimited.told`, `connectors`) need not import the limiter above them.
"""

from __future__ import annotations

from dataclasses import dataclass

NONE = -1.0  # "not given" in an Op (the Lua script takes plain numbers)


@dataclass(frozen=True)
class ApiQuota:
    """What an API said about its own quota on an answer; NONE where it said nothing."""

    rate: float = NONE
    burst: float = NONE
    remaining: float = NONE
