"""Rate limiting: the rule (rate, burst, how to react to 429) apart from where
its counters live, so several sidecars can later share one quota in Redis.

    limiter = Limiter("notion", Rule(rate=3, burst=1), MemoryStore())
    wait = limiter.reserve(now)      # seconds to sleep before the call
    limiter.on_rate_limited(retry_after=2, now=now)   # a 429 arrived

On a 429 the lane pauses for at least Retry-After and halves its rate (never
below `min_fraction` of the configured rate); each success wins back a small
step, so the lane settles just under the real quota.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class Rule:
    rate: float            # requests per second allowed on average
    burst: float = 1.0     # requests allowed back to back after a quiet spell
    min_fraction: float = 0.1
    recovery_step: float = 0.02  # fraction of `rate` regained per success


class Store(Protocol):
    """Where token counts live. `take` reserves one token and says how long to wait."""

    def take(self, name: str, rate: float, burst: float, now: float) -> float: ...

    def tokens(self, name: str, rate: float, burst: float, now: float) -> float: ...


class MemoryStore:
    """Token buckets in this process (one sidecar per quota)."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, name: str, rate: float, burst: float, now: float) -> float:
        tokens, at = self._state.get(name, (burst, now))
        return min(burst, tokens + (now - at) * rate)

    def take(self, name: str, rate: float, burst: float, now: float) -> float:
        with self._lock:
            tokens = self._level(name, rate, burst, now) - 1.0
            self._state[name] = (tokens, now)
            # A negative level is a debt: the caller waits until it is repaid,
            # so reservations made back to back are spaced 1/rate apart.
            return 0.0 if tokens >= 0 else -tokens / rate

    def tokens(self, name: str, rate: float, burst: float, now: float) -> float:
        with self._lock:
            return self._level(name, rate, burst, now)


class Limiter:
    """One lane's limiter: a Rule, a Store, and the lane's current pace."""

    def __init__(self, name: str, rule: Rule, store: Store) -> None:
        self.name = name
        self.rule = rule
        self.store = store
        self.rate = rule.rate
        self.paused_until = 0.0

    def reserve(self, now: float) -> float:
        """Take a token; return the seconds to wait before using it."""
        wait = self.store.take(self.name, self.rate, self.rule.burst, now)
        return max(wait, self.paused_until - now)

    def on_success(self) -> None:
        if self.rate < self.rule.rate:
            self.rate = min(self.rule.rate, self.rate + self.rule.rate * self.rule.recovery_step)

    def on_rate_limited(self, retry_after: float | None, now: float) -> None:
        self.rate = max(self.rule.rate * self.rule.min_fraction, self.rate / 2)
        self.paused_until = max(self.paused_until, now + (retry_after if retry_after is not None else 1.0 / self.rate))

    def tokens(self, now: float) -> float:
        return self.store.tokens(self.name, self.rate, self.rule.burst, now)
