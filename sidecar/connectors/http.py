"""HTTP plumbing shared by connectors: one place that turns httpx outcomes
into the error tree of `sidecar.errors`.

    response = await request(client, "PATCH", "pages/abc", json=body)
    raise_for_status(response, rate_limited=lambda r: r.status_code in (429, 529), code_of=json_code)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

import httpx

from ..backoff import parse_retry_after
from ..errors import CredentialsRefused, Permanent, RateLimited, Retryable
from ..limiter import ApiQuota

BODY_KEEP_CHARS = 4000


async def request(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send one request; transport failures become Retryable errors.

    A failure before the connection was made cannot have been applied; any
    later one (timeout, reset) leaves the outcome unknown.
    """
    try:
        return await client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Retryable("connect_error", type(exc).__name__) from None
    except httpx.TimeoutException as exc:
        raise Retryable("timeout", type(exc).__name__, ambiguous=True) from None
    except httpx.TransportError as exc:
        raise Retryable("transport_error", type(exc).__name__, ambiguous=True) from None


def raise_for_status(
    response: httpx.Response,
    *,
    rate_limited: Callable[[httpx.Response], bool] = lambda r: r.status_code == 429,
    retryable_4xx: frozenset[int] = frozenset({409}),
    code_of: Callable[[httpx.Response], str] = lambda r: "",
    limit_reason_of: Callable[[httpx.Response], str] | None = None,
    told_of: Callable[[httpx.Response], ApiQuota | None] = lambda r: None,
) -> None:
    """Map a non-2xx answer to RateLimited, Retryable or Permanent (with the body).

    A rate limit's reason is `limit_reason_of(response)`, else the body's code.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    body = response.text[:BODY_KEEP_CHARS]
    code = code_of(response)
    reason = f"http_{status}"
    if rate_limited(response):
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
        limit_reason = (limit_reason_of(response) if limit_reason_of else "") or code
        raise RateLimited(reason, code, status=status, body=body, retry_after=retry_after,
                          limit_reason=limit_reason, told=told_of(response))
    if status >= 500 or status in retryable_4xx:
        raise Retryable(reason, code, status=status, body=body, ambiguous=status >= 500)
    raise Permanent(reason, code, status=status, body=body)


def refuse_credentials(api: str, response: httpx.Response, code: str = "") -> NoReturn:
    """Raise CredentialsRefused for an answer that refuses the credential itself (the lane pauses)."""
    raise CredentialsRefused(api, code or f"http_{response.status_code}", status=response.status_code,
                             body=response.text[:BODY_KEEP_CHARS])


def json_code(response: httpx.Response, field: str = "code") -> str:
    """The error code in a JSON error body, or "" if there is none."""
    try:
        doc = response.json()
    except ValueError:
        return ""
    value = doc.get(field) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""
