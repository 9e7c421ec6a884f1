"""A circuit breaker per lane: stop calling an API that keeps failing, then probe.

    breaker = Breaker(failures=5, cooldown=30.0)
    if breaker.allow(now): ...call...; breaker.record(ok, now)

closed: calls flow; `failures` failures in a row open it.
open: no calls for `cooldown` seconds; events simply wait in the journal.
half_open: one probe call; success closes, failure opens again.
Rate limiting (429) is not a failure here: the limiter handles it.
"""

from __future__ import annotations

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class Breaker:
    def __init__(self, *, failures: int = 5, cooldown: float = 30.0) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """May a call start now? In half_open only one probe at a time."""
        if self.state == OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
        if self.state == HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def record(self, ok: bool, now: float) -> None:
        self._probing = False
        if ok:
            self.state, self.failures = CLOSED, 0
            return
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at = OPEN, now

    def release(self) -> None:
        """A permitted call did not happen after all (nothing to send)."""
        self._probing = False

    def reopens_in(self, now: float) -> float:
        return max(0.0, self.cooldown - (now - self.opened_at)) if self.state == OPEN else 0.0
