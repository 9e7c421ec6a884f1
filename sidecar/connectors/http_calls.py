"""HTTP plumbing shared by connectors: one place that turns httpx outcomes
into the error tree of `sidecar.errors`.

    response = await request(client, "PATCH", "pages/abc", json=body)
    raise_for_status(response, rate_limited=lambda r: r.status_code in (429, 529), code_of=json_code)
    doc = json_object(response)          # a 2xx body we read: Retryable bad_response if unreadable

A hostile or broken API cannot hold a lane: the client's timeout bounds the
whole call, not each read (an answer that drips a byte a second never trips a
per-read timeout), answers are read up to `MAX_RESPONSE_BYTES`, and redirects
are not followed, except a 308 for a connector that passes `redirects=`
(`Redirects`: Naver documents 308 PERMANENT_REDIRECT on its endpoints): that
one is resent once, with the same method and body, to a `Location` on the same
host, and the move is remembered for the life of the process.
"""

from __future__ import annotations

import asyncio
import logging
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

log = logging.getLogger("sidecar.http")

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


class Redirects:
    """The 308 moves an API announced, kept for the life of the process (one per connector).

        moved = Redirects("Naver", "[naver] base_url")
        response = await request(client, "PATCH", "v1/products/...", redirects=moved, json=body)
        moved.where(client.build_request("PATCH", "v1/products/...").url)   # the new URL once moved

    Only 308 (the method and body stay: RFC 9110 section 15.4.9) to the same
    host and port is followed, once: another would receive the request's token,
    so that stays a Permanent `redirect` naming `Location` and `setting`.
    """

    def __init__(self, api: str, setting: str) -> None:
        self.api = api
        self.setting = setting
        self._moved: dict[str, httpx.URL] = {}

    def where(self, url: httpx.URL) -> httpx.URL:
        """Where `url` lives now (itself, unless a 308 moved it)."""
        return self._moved.get(str(url), url)

    def follow(self, response: httpx.Response) -> httpx.URL | None:
        """The URL to resend `response`'s request to (remembered, logged once), or None: not ours to follow."""
        location = response.headers.get("Location")
        if response.status_code != 308 or not location:
            return None
        old = response.request.url
        new = old.join(location)
        if (new.host, new.port) != (old.host, old.port) or new.scheme not in (old.scheme, "https"):
            return None
        if str(old) not in self._moved:
            log.warning("%s moved %s to %s (308 PERMANENT_REDIRECT): following it from now on; "
                        "update %s to match", self.api, old, new, self.setting)
        self._moved[str(old)] = new
        return new


async def request(client: httpx.AsyncClient, method: str, url: str, *,
                  max_bytes: int = MAX_RESPONSE_BYTES, redirects: Redirects | None = None,
                  **kwargs: Any) -> httpx.Response:
    """Send one request and read its answer whole; failures become Retryable errors.

    A failure before the connection was made cannot have been applied; any
    later one (timeout, reset, an answer too slow or too large) leaves the
    outcome unknown. With `redirects`, a URL moved before goes straight to
    its new place, and a 308 is followed once (see `Redirects`).
    """
    built = client.build_request(method, url, **kwargs)
    if redirects is None:
        return await _send(client, built, max_bytes)
    target = redirects.where(built.url)
    response = await _send(client, built if target == built.url else client.build_request(method, target, **kwargs),
                           max_bytes)
    moved = redirects.follow(response)
    if moved is None:
        return response
    return await _send(client, client.build_request(method, moved, **kwargs), max_bytes)


async def _send(client: httpx.AsyncClient, built: httpx.Request, max_bytes: int) -> httpx.Response:
    try:
        async with asyncio.timeout(call_deadline(client)):
            response = await client.send(built, stream=True)
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
    retry_after_of: Callable[[httpx.Response], float | None] | None = None,
) -> None:
    """Map a non-2xx answer to RateLimited, Retryable or Permanent (with the body).

    A rate limit's reason is `limit_reason_of(response)`, else the body's code;
    its wait is `retry_after_of(response)`, else the Retry-After header.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    body = response.text[:BODY_KEEP_CHARS]
    code = code_of(response)
    reason = f"http_{status}"
    if 300 <= status < 400:
        # Not followed here: it would carry the body (and maybe the token) to
        # wherever Location points. An API that moved is a configuration error
        # (a 308 on the same host is followed before this: `Redirects`).
        raise Permanent(REDIRECT, f"HTTP {status} to {response.headers.get('Location', '?')}",
                        status=status, body=body)
    if rate_limited(response):
        retry_after = retry_after_of(response) if retry_after_of else header_retry_after(response)
        limit_reason = (limit_reason_of(response) if limit_reason_of else "") or code
        raise RateLimited(reason, code, status=status, body=body, retry_after=retry_after,
                          limit_reason=limit_reason, told=told_of(response))
    if status >= 500 or status in retryable_4xx:
        raise Retryable(reason, code, status=status, body=body, ambiguous=status >= 500)
    raise Permanent(reason, code, status=status, body=body)


def header_retry_after(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (whole seconds or an HTTP date), None without one."""
    return parse_retry_after(response.headers.get("Retry-After"), now=time.time())


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
