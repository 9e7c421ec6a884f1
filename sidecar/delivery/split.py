"""Find the event that sank a combined call, by splitting it.

Several events often go out as one call (appends to one parent, merged page
updates, a multi-product update), and an API that finds one bad item in the
body refuses the whole call: Notion answers 400 `validation_error` ("A
request that exceeds any of these limits will return validation_error ...",
developers.notion.com/reference/request-limits), Naver answers 400 for the
whole multi-update. Dead-lettering every event of such a call loses the good
ones, so the lane sends the call again in halves, in emit order, each half
taking a token from the limiter first, and halves again whatever is refused,
down to single events: only an event refused alone is dead-lettered, with
the API's own message.

    if worth_splitting(plan.events, exc):
        settled = await bisect(plan.events, plan_part=..., deliver=lane_deliver, pace=take_token)

`deliver(plan)` is the lane's own delivery of one call (which may split
again); it answers True when the call's events are settled (delivered or
dead-lettered) and False when they wait for a retry, where splitting stops:
the events after them keep their place in the journal behind them, so emit
order holds. A refused call of n events costs at most about 2·log2(n) calls
per bad event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from sidecar.connectors.base import Pace, Plan, Send
from sidecar.errors import DeliveryError, Permanent
from sidecar.journal.store import Event

# A 400 refuses a call for what is in its body; other refusals (401, 403,
# 404 on the parent...) would refuse every part alike.
SPLIT_STATUSES = frozenset({400})
# Notion's 400 codes that say the request as a whole is wrong, not one item of
# it (developers.notion.com/reference/status-codes): every part would get them.
WHOLE_REQUEST_CODES = frozenset({"invalid_json", "invalid_request_url", "missing_version", "invalid_request"})


def _code(body: str | None) -> str:
    """The `code` of a JSON error body, else ""."""
    try:
        doc = orjson.loads(body or "")
    except orjson.JSONDecodeError:
        return ""
    code = doc.get("code") if isinstance(doc, dict) else None
    return code if isinstance(code, str) else ""


def worth_splitting(events: Sequence[Event], exc: DeliveryError) -> bool:
    """Was a call of several events refused for what one of them holds?

    Copies of one create (one key) stand or fall together: they are one page.
    """
    if not isinstance(exc, Permanent) or exc.status not in SPLIT_STATUSES or len(events) < 2:
        return False
    if events[0].key is not None and all(e.key == events[0].key for e in events):
        return False
    return _code(exc.body) not in WHOLE_REQUEST_CODES


def halves(events: Sequence[Event]) -> list[list[Event]]:
    """[a, b, c] -> [[a], [b, c]]: the first half is the smaller, so a bad
    event early in a long batch is found with fewer calls than one late."""
    mid = len(events) // 2
    return [list(events[:mid]), list(events[mid:])]


async def bisect(
    events: Sequence[Event],
    *,
    plan_part: Callable[[list[Event]], Plan[Any]],
    deliver: Callable[[Send[Any]], Awaitable[bool]],
    pace: Pace,
) -> bool:
    """Deliver `events` in two halves, in order; True if every event was settled.

    `plan_part(events)` asks the connector for the call covering (the start
    of) those events; a plan that is not a Send (the group changed under us)
    ends the split, and the lane picks the group afresh.
    """
    for part in halves(events):
        while part:
            plan = plan_part(part)
            if not isinstance(plan, Send) or not plan.events:
                return False
            await pace()  # every extra call takes a token: the split stays within the rate limit
            if not await deliver(plan):
                return False
            done = {e.id for e in plan.events}
            part = [e for e in part if e.id not in done]
    return True
