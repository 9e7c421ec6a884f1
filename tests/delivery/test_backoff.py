"""Backoff with full jitter and Retry-After, pure functions with an injected RNG and clock."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from sidecar.delivery.backoff import full_jitter, parse_retry_after, retry_delay

pytestmark = pytest.mark.timeout(30)


def test_full_jitter_stays_under_the_capped_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        samples = [full_jitter(attempt, base=0.5, cap=10.0, rng=rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling / 2  # spread over the whole range, not a constant


@pytest.mark.parametrize("header, expected", [
    ("3", 3.0), (" 10 ", 10.0), ("0", 0.0), ("", None), (None, None), ("soon", None),
    (formatdate(1_000_030, usegmt=True), 30.0), (formatdate(999_000, usegmt=True), 0.0),
])
def test_retry_after_in_seconds_or_http_date(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1_000_000) == expected


def test_retry_delay_never_shorter_than_retry_after() -> None:
    assert retry_delay(1, 5.0, base=0.1, cap=1.0, rng=random.Random(1)) == 5.0
