"""Retry timing: capped exponential backoff with full jitter, and Retry-After.

    >>> import random
    >>> 0 <= full_jitter(3, base=0.5, cap=60, rng=random.Random(1)) <= 4.0
    True
    >>> parse_retry_after("7", now=0)
    7.0
"""

from __future__ import annotations

import email.utils
import random


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry)."""
    ceiling = min(cap, base * (2 ** min(60, max(0, attempt - 1))))  # no float overflow after many attempts
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Retry-After as seconds from `now` (wall clock): whole seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def retry_delay(attempt: int, retry_after: float | None, *, base: float, cap: float,
                rng: random.Random | None = None) -> float:
    """Backoff, but never shorter than what the server asked for."""
    delay = full_jitter(attempt, base=base, cap=cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
