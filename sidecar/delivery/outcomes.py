"""A lane's recent calls: delivered, refused by the API, or dead-lettered; for `check` and /health.

    recent = Outcomes()
    recent.add(OK, now)
    recent.add(DEAD, now, "400 invalid_request_url: Invalid request URL: POST /pages")
    recent.failing("notion", HealthConfig(), now)
    # None, or "notion: 18 of the last 20 calls refused or dead-lettered (last: 400 invalid_request_url: ...)"

Only calls the API answered for good count: a call delivered (OK), refused
whole and split to find the bad events (REFUSED), or whose events were
dead-lettered (DEAD: refused alone, or out of retries). Retries under way,
rate limits and refused credentials are not counted: the breaker, the
limiter and the pause say those. The lane keeps its last `KEEP` outcomes;
`[health]` says how many of them, how old, count, and what share failing is
"mostly" (`HealthConfig`), so a reload changes it at once.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Literal

import orjson

from sidecar.config import HealthConfig
from sidecar.errors import DeliveryError
from sidecar.ops.credentials import redact

Outcome = Literal["ok", "refused", "dead"]
OK: Outcome = "ok"
REFUSED: Outcome = "refused"
DEAD: Outcome = "dead"

KEEP = 100  # the most [health] recent_calls may ask for
DETAIL_CHARS = 160
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    """An API's words made safe for a status line: no control characters, no known secret, short.

        one_line('{"message": "bad"}\\n\\x1b[2J')   # '{"message": "bad"} [2J'
    """
    text = redact(_CONTROL.sub(" ", text)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: DeliveryError) -> str:
    """`STATUS code: message` from a refusal, the message from a JSON body's `message` if it has one.

        describe(Permanent("http_400", "validation_error", status=400, body='{"message": "bad title"}'))
        # '400 validation_error: bad title'
    """
    message = exc.body or ""
    try:
        doc = orjson.loads(message)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            message = doc["message"]
    except orjson.JSONDecodeError:
        pass
    head = " ".join(str(p) for p in (exc.status, exc.detail or exc.reason) if p)
    return f"{head}: {message}" if message else head


class Outcomes:
    """The last `KEEP` outcomes of one lane's calls, with when, and the last failure's words."""

    def __init__(self) -> None:
        self._seen: deque[tuple[float, Outcome]] = deque(maxlen=KEEP)
        self.last_failure = ""

    def add(self, outcome: Outcome, now: float, detail: str = "") -> None:
        self._seen.append((now, outcome))
        if outcome != OK:
            self.last_failure = one_line(detail)

    def recent(self, cfg: HealthConfig, now: float) -> tuple[int, int]:
        """(calls, failed): the last `recent_calls` calls of the last `recent_seconds`, and how many failed."""
        since = now - cfg.recent_seconds
        calls = [o for t, o in list(self._seen)[-cfg.recent_calls:] if t >= since]
        return len(calls), sum(o != OK for o in calls)

    def failing(self, lane: str, cfg: HealthConfig, now: float) -> str | None:
        """A problem line while the lane's recent calls mostly fail; None otherwise."""
        calls, failed = self.recent(cfg, now)
        if calls < cfg.min_calls or failed <= cfg.failing_share * calls:
            return None
        why = f" (last: {self.last_failure})" if self.last_failure else ""
        return f"{lane}: {failed} of the last {calls} calls refused or dead-lettered{why}"
