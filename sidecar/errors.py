"""The one error tree of delivery, and what each branch means for the lane.

    DeliveryError            something went wrong calling an API
    ├── Retryable            try again later (backoff, or `retry_after` if longer)
    │   └── RateLimited      429 / 529: slow the lane down as well
    └── Permanent            400/401/403/404 and other refusals: dead-letter now

`ambiguous` marks a failure after the request may have been applied (timeout,
reset, 5xx after the body was sent): a non-idempotent call is checked before
it is sent again. Each connector maps HTTP status and body codes here once.
"""

from __future__ import annotations


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

