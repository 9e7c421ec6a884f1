"""The limiter's token bucket and 429 back-off in memory, at fixed times (the rule against Redis too:
test_shared_limiter.py)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.delivery.limiter import Limiter, MemoryStore, Rule

pytestmark = pytest.mark.timeout(30)


def test_token_bucket_spaces_calls_at_the_rate_after_the_burst() -> None:
    limiter = Limiter("t", Rule(rate=3, burst=2), MemoryStore())
    now = 100.0
    waits = [asyncio.run(limiter.reserve(now)) for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert limiter.view(now)["store"] == "memory" and limiter.tokens(now + 100) == 2  # the burst back, no more


def test_rate_limit_pauses_and_slows_then_recovers() -> None:
    limiter = Limiter("t", Rule(rate=4, burst=1, recovery_step=0.25), MemoryStore())
    asyncio.run(limiter.on_rate_limited(2.0, None, 10.0))
    assert limiter.rate == 2.0 and limiter.view(12.0)["rate_source"] == "backed off"
    assert asyncio.run(limiter.reserve(10.0)) == pytest.approx(2.0)
    for _ in range(10):
        asyncio.run(limiter.on_success(None, 12.0))
    assert limiter.rate == 4.0 and limiter.view(12.0)["rate_source"] == "configured"
    for n in range(10):
        asyncio.run(limiter.on_rate_limited(None, None, 20.0 + 20 * n))
    assert limiter.rate == pytest.approx(0.4)  # floor: min_fraction of the rule
