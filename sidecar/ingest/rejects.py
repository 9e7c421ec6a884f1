"""What ingest keeps of rejected frames: a bounded sample, and a log that cannot flood.

    sampler = Sampler()                       # 1,000 per reason in any hour
    if sampler.keep("bad_json", now):         # `now` from time.monotonic(), or a test's clock
        keep_the_row()
    else:
        count_it_only()

    throttle = Throttle()                     # one line per reason a minute
    held = throttle.due("bad_json", now, count=37)
    if held is not None:
        log.warning("rejected 37 frame(s) as bad_json; %d more since the last line", held)

    rejects = Rejects(metrics)                # both, for ingest's batches
    rejects.add(tallies, sample, "bad_json", detail, frame)   # per refused frame
    rejects.report(tallies)                   # after the batch's commit: counters and log lines

A flood of garbage (a misconfigured client, a port scan on a TCP endpoint)
must not grow the journal or the log without bound; the counters in the
journal's `reject_counts` and in metrics still see every frame. Both take
the clock as an argument, so their tests never sleep.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.ingest")

SAMPLE_PER_WINDOW = 1_000  # reject rows kept per reason...
SAMPLE_WINDOW_SECONDS = 3600.0  # ...in any hour
LOG_INTERVAL_SECONDS = 60.0  # one warning line per reason at most this often


class Sampler:
    """Keep at most `limit` items per key in any `window` seconds (a sliding window)."""

    def __init__(self, limit: int = SAMPLE_PER_WINDOW, window: float = SAMPLE_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._kept: dict[str, deque[float]] = {}  # per key, when each kept item came; at most `limit`

    def keep(self, key: str, now: float) -> bool:
        """True if this item joins the sample; False if it is only to be counted."""
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = deque()
        horizon = now - self.window
        while kept and kept[0] <= horizon:
            kept.popleft()
        if len(kept) >= self.limit:
            return False
        kept.append(now)
        return True


class Throttle:
    """At most one log line per key per `interval` seconds; counts what it held back.

    Keys are bounded (`max_keys`): keys whose interval has passed are forgotten
    when room is needed (at most once an interval), and a new key finding no
    room is held back like a repeated one, so a flood of distinct keys (made-up
    client ids) costs neither memory nor log lines."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._swept = float("-inf")

    def due(self, key: str, now: float, count: int = 1) -> int | None:
        """Note `count` occurrences. If a line is due, return how many occurrences
        were held back since the last line (the caller's line reports these
        `count` itself); otherwise hold them back and return None."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + count
            return None
        if last is None and len(self._last) >= self.max_keys and not self._sweep(now):
            return None  # no room: held back, uncounted here (the caller's counters have it)
        self._last[key] = now
        return self._held.pop(key, 0)

    def _sweep(self, now: float) -> bool:
        """Forget keys whose interval has passed; True if that made room."""
        if now - self._swept >= self.interval:
            self._swept = now
            for key in [k for k, t in self._last.items() if now - t >= self.interval]:
                del self._last[key]
                self._held.pop(key, None)
        return len(self._last) < self.max_keys


@dataclass
class RejectTally:
    """One reason's rejects in a batch: for the counters and the (throttled) log line."""

    detail: str  # the first one's, as an example
    error: BaseException | None = None  # internal_error: the first one's traceback
    count: int = 0
    unsampled: int = 0  # counted but not kept: the hour's sample of this reason is full


class Rejects:
    """Ingest's rejected frames: every one counted, a sample kept as rows, a log line per reason a minute."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._sample = Sampler()
        self._log = Throttle()

    def add(self, tallies: dict[str, RejectTally], sample: list[tuple[str, str, bytes | None]], reason: str,
            detail: str, frame: bytes | None, error: BaseException | None = None) -> None:
        """Count a refused frame in `tallies`; keep it in `sample` while its reason's hourly sample has room."""
        tally = tallies.get(reason)
        if tally is None:
            tally = tallies[reason] = RejectTally(detail, error)
        tally.count += 1
        if self._sample.keep(reason, time.monotonic()):
            sample.append((reason, detail, frame))
        else:
            tally.unsampled += 1

    def report(self, tallies: dict[str, RejectTally]) -> None:
        """Count every reject; log a reason at most once a minute, however many arrive."""
        now = time.monotonic()
        for reason, tally in tallies.items():
            self.metrics.rejected.labels(reason=reason).inc(tally.count)
            if tally.unsampled:
                self.metrics.rejects_unsampled.labels(reason=reason).inc(tally.unsampled)
            held = self._log.due(reason, now, tally.count)
            if held is not None:
                log.log(logging.ERROR if tally.error else logging.WARNING,
                        "rejected %d frame(s) as %s, the first: %s%s", tally.count, reason, tally.detail[:200],
                        f"; {held} more since the last such line" if held else "", exc_info=tally.error)
