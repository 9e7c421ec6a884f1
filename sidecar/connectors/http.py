"""HTTP plumbing shared by connectors: one place that turns httpx outcomes
into the error tree of `sidecar.errors`.

    response = await request(client, "PATCH", "pages/abc", json=body)
    raise_for_status(response, rate_limited=lambda r: r.status_code in (429, 529), code_of=json_code)
    doc = json_object(response)          # a 2xx body we read: Retryable bad_response if unreadable

A hostile or broken API cannot hold a lane: the client's timeout bounds the
whole call, not each read (an answer that drips a byte a second never trips a
per-read timeout), answers are read up to `MAX_RESPONSE_BYTES`, and redirects
are never followed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NoReturn

import httpx

from sidecar.delivery.backoff import parse_retry_after
from sidecar.errors import (
    BAD_RESPONSE,
    DEADLINE,
    REDIRECT,
    RESPONSE_TOO_LARGE,
    CredentialsRefused,
    Permanent,
    RateLimited,
    Retryable,
)
from sidecar.quota import ApiQuota

BODY_KEEP_CHARS = 4000
# No answer we read comes near this (Notion's 100 children, Naver's results);
# a larger one is a broken or hostile server, not data.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Headers that describe the bytes on the wire, not the decoded body we keep.
_WIRE_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def call_deadline(client: httpx.AsyncClient) -> float | None:
    """The longest of the client's timeouts: what one whole call may take."""
    t = client.timeout
    return max((v for v in (t.connect, t.read, t.write, t.pool) if v is not None), default=None)


async def request(client: httpx.AsyncClient, method: str, url: str, *,
                  max_bytes: int = MAX_RESPONSE_BYTES, **kwargs: Any) -> httpx.Response:
    """Send one request and read its answer whole; failures become Retryable errors.

    A failure before the connection was made cannot have been applied; any
    later one (timeout, reset, an answer too slow or too large) leaves the
    outcome unknown.
    """
    try:
        async with asyncio.timeout(call_deadline(client)):
            response = await client.send(client.build_request(method, url, **kwargs), stream=True)
            try:
                body = await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
    except TimeoutError:
        raise Retryable(DEADLINE, f"no whole answer within {call_deadline(client)} s", ambiguous=True) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise Retryable("connect_error", type(exc).__name__) from None
    except httpx.TimeoutException as exc:
        raise Retryable("timeout", type(exc).__name__, ambiguous=True) from None
    except httpx.TransportError as exc:
        raise Retryable("transport_error", type(exc).__name__, ambiguous=True) from None
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes and response.headers.get("content-encoding",
                                                                                   "identity") == "identity":
        too_large(response, max_bytes)  # said so up front: not worth reading (or holding) any of it
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts at its full size
        size += len(chunk)
        if size > max_bytes:
            too_large(response, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(response: httpx.Response, max_bytes: int) -> NoReturn:
    raise Retryable(RESPONSE_TOO_LARGE, f"HTTP {response.status_code} answer over {max_bytes} bytes",
                    status=response.status_code, ambiguous=True)


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
    if 300 <= status < 400:
        # Never followed: it would carry the body (and maybe the token) to
        # wherever Location points. An API that moved is a configuration error.
        raise Permanent(REDIRECT, f"HTTP {status} to {response.headers.get('Location', '?')}",
                        status=status, body=body)
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


def json_object(response: httpx.Response, *, keep_body: bool = True) -> dict[str, Any]:
    """The JSON object of a 2xx answer whose fields we read.

    Anything else is Retryable `bad_response`, ambiguous: the status said the
    call was applied, so it is checked (or idempotent) before it goes again.
    `keep_body=False` when the body may hold a secret (a token answer).
    """
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise bad_response(response, "answer is not a JSON object", keep_body=keep_body)
    return doc


def bad_response(response: httpx.Response, detail: str, *, keep_body: bool = True) -> Retryable:
    """A 2xx answer without the fields we read (see `json_object`)."""
    return Retryable(BAD_RESPONSE, detail, status=response.status_code,
                     body=response.text[:BODY_KEEP_CHARS] if keep_body else None, ambiguous=True)
