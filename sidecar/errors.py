"""The one error tree of delivery, and what each branch means for the lane.

    DeliveryError            something went wrong calling an API
    ├── Retryable            try again later (backoff, or `retry_after` if longer)
    │   └── RateLimited      429 / 529: slow the lane down as well
    └── Permanent            400/401/403/404 and other refusals: dead-letter now

`ambiguous` marks a failure after the request may have been applied (timeout,
reset, 5xx after the body was sent): a non-idempotent call is checked before
it is sent again. Each connector maps HTTP status and body codes here once.

Reasons for a hostile or broken API (`connectors/http.py` raises them):

    deadline            Retryable, ambiguous: no whole answer within the call's
                        timeout (a slow drip of bytes, a stall)
    response_too_large  Retryable, ambiguous: an answer over the size limit
    bad_response        Retryable, ambiguous: a 2xx that is not JSON or lacks
                        the fields we read; it was applied, we cannot tell how
    transport_error     Retryable, ambiguous: a connection reset, also mid-body
    redirect            Permanent: a 3xx is never followed (it would carry the
                        body elsewhere); the same request gets the same answer
"""

from __future__ import annotations

DEADLINE = "deadline"
RESPONSE_TOO_LARGE = "response_too_large"
BAD_RESPONSE = "bad_response"
REDIRECT = "redirect"


class DeliveryError(Exception):
    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        status: int | None = None,
        body: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class Retryable(DeliveryError):
    pass


class RateLimited(Retryable):
    pass


class Permanent(DeliveryError):
    pass

