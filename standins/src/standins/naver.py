"""Naver Commerce API simulator on loopback (`/external`).

Usage::

    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        sim.add_product(1001, sale_price=15000, stock=7)
        ts = int(time.time() * 1000)
        token = httpx.post(sim.url + "/external/v1/oauth2/token", data={
            "client_id": sim.client_id, "timestamp": ts, "grant_type": "client_credentials",
            "type": "SELF", "client_secret_sign": client_secret_sign(sim.client_id, sim.client_secret, ts),
        }).json()["access_token"]
        httpx.patch(sim.url + "/external/v1/products/origin-products/multi-update",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"multiProductUpdateRequestVos": [{"originProductNo": 1001,
                          "multiUpdateTypes": ["STOCK"], "stockQuantity": 3}]})
        sim.product(1001)["stockQuantity"]    # -> 3

Token (`POST /external/v1/oauth2/token`, form-encoded or query string):
`client_secret_sign` must equal `client_secret_sign(client_id, client_secret,
timestamp)`, `timestamp` (Unix ms) within 5 minutes of now, `grant_type=
client_credentials`, `type=SELF`. Answer `{access_token, expires_in, token_type:
"Bearer"}`; the same token comes back while more than 30 minutes of its 10,800 s
remain, else a new one. Missing/malformed fields and stale timestamps: 400
`BadRequest`; unknown client or wrong signature: 401 `GW.AUTHN`. Both name the
field in `invalidInputs`. Older tokens stay valid until they expire.

`PATCH /external/v1/products/origin-products/multi-update`: each item has
`originProductNo`, `multiUpdateTypes` (SALE_PRICE needs
`productSalePrice.salePrice` int > 0, STOCK needs `stockQuantity` int >= 0,
IMMEDIATE_DISCOUNT needs an `immediateDiscountPolicy` object, which is stored
as given; PRODUCT_STATUS_SALE / PRODUCT_STATUS_SUSPENSION set `statusType`).
A malformed item, more than `max_items_per_call` items, or an item naming a
product that does not exist refuses the whole call and applies nothing (400
`BAD_REQUEST`; 404 `NOT_FOUND` for the unknown product, named in `message` and
`invalidInputs`). An accepted call answers as documented, with no per-item
results (Commerce API center, "원상품 멀티 수정" `PATCH /v1/products/origin-
products/multi-update`; the documents' error codes, e.g. `BAD_REQUEST`,
`PERMANENT_REDIRECT`: https://apicenter.commerce.naver.com/docs/commerce-api/
2.49.0/upload-product)::

    {"code": "SUCCESS", "message": "...", "data": {}}

Whether the real API applies part of a call it refuses is not documented;
the simulator applies none of it. A repeated call applies again (`product(no)["updates"]` counts applications).

`POST /external/v1/product-images/upload`: multipart field `imageFiles`, 1 to
`max_images_per_call` (10) files, each JPG/GIF/PNG/BMP by its magic bytes, else
400 for the whole call. Answer `{"images": [{"url": ...}]}` in upload order.

API calls need `Authorization: Bearer <token>` (401 `GW.AUTHN`). Rate limit: a
token bucket per API, for the one application; over it 429 `GW.RATE_LIMIT` with
`GNCP-GW-RateLimit-Replenish-Rate`, `-Burst-Capacity` and `-Remaining` headers
(also sent on accepted calls), and `Retry-After` only if `send_retry_after`.
The token endpoint is not rate limited. Error body: `{code, message,
invalidInputs: [{name, type, message}], timestamp}`.

Both endpoints document `308 PERMANENT_REDIRECT`: `move(path, to)` makes
`path` answer 308 with `Location: <url><to>` (and that error body) while `to`
serves the endpoint. `set_quota(limit, "HOURS")` adds the hourly quota that
sits beside the per-second rate: every API answer carries
`GNCP-GW-Quota-Period`, `-Limit` and `-Remaining`, and the call after `limit`
in one window is answered 429 `GW.QUOTA_LIMIT` with them. Windows are whole
periods of `clock` (hours start on the hour); the documents say neither when a
window starts nor send a reset time.

Python API: `add_product()`, `product()`, `products()`, `images()`,
`token_issues`, `token_requests`, `expire_token()`, `move()`, `set_quota()`. Control API (besides
base.py's): `POST /_sim/products {"originProductNo", "salePrice",
"stockQuantity", "statusType"}`, `POST /_sim/expire_token`.

CLI: `python -m standins.naver --port N --client-id C --client-secret S
--rate R --burst B --max-items M` prints `{"url", "client_id", "client_secret"}`.
"""

from __future__ import annotations

import base64
import copy
import hmac
import re
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs

import bcrypt
import orjson

from standins.base import Request, Response, SimError, SimServer, cli_parser, retry_after_seconds, run_until_signal

TOKEN_PATH = "/external/v1/oauth2/token"
MULTI_UPDATE_PATH = "/external/v1/products/origin-products/multi-update"
IMAGE_UPLOAD_PATH = "/external/v1/product-images/upload"

# GNCP-GW-Quota-Period values and their windows in seconds. The documents name SECONDS and ROUND
# (a subscription round); HOURS is what applications were answered in 2026-08 (commerce-api-naver
# discussions #3737, #3738: "gncp-gw-quota-period: HOURS"). Where a window starts is not documented:
# here at whole periods of the clock (KST is UTC+9, so hours start at the same instants).
QUOTA_PERIODS = {"SECONDS": 1.0, "MINUTES": 60.0, "HOURS": 3600.0, "DAYS": 86_400.0}
KST_OFFSET = 9 * 3600.0

TOKEN_LIFETIME = 10_800.0
TOKEN_REUSE_MIN_REMAINING = 1_800.0
TIMESTAMP_TOLERANCE_MS = 5 * 60 * 1000
MULTI_UPDATE_TYPES = ("SALE_PRICE", "IMMEDIATE_DISCOUNT", "STOCK", "PRODUCT_STATUS_SALE", "PRODUCT_STATUS_SUSPENSION")

_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp"),
)


def client_secret_sign(client_id: str, client_secret: str, timestamp_ms: int) -> str:
    """The `client_secret_sign` Naver expects: base64 of bcrypt(f"{client_id}_{timestamp}", secret)."""
    hashed = bcrypt.hashpw(f"{client_id}_{timestamp_ms}".encode(), client_secret.encode())
    return base64.b64encode(hashed).decode()


def _bad(name: str, message: str, status: int = 400, code: str = "BAD_REQUEST") -> SimError:
    invalid = [{"name": name, "type": "Invalid", "message": message}]
    return SimError(status, code, message, extra={"invalidInputs": invalid})


def _int_at_least(value: Any, minimum: int) -> bool:
    """True for an int (JSON booleans excluded) no smaller than `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass
class _Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def _multipart(body: bytes, content_type: str) -> list[_Part]:
    """Split a multipart/form-data body (stdlib `cgi` is gone in 3.13)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not match:
        raise _bad("imageFiles", "expected multipart/form-data with a boundary")
    parts = []
    for chunk in body.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise _bad("imageFiles", "malformed multipart part")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        disposition = headers.get("content-disposition", "")
        name = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        parts.append(_Part(
            name.group(1) if name else "", filename.group(1) if filename else None,
            headers.get("content-type"), data.removesuffix(b"\r\n"),
        ))
    return parts


class NaverSimulator(SimServer):
    """Loopback Naver Commerce API; see the module docstring for the contract.

    Usage::

        sim = NaverSimulator(rate_per_second=2.0, burst=2, max_items_per_call=50).start()
        sim.client_id, sim.client_secret     # secret is a "$2b$04$..." bcrypt salt
        ...; sim.stop()

    `clock` (wall time, seconds) drives token lifetimes and the timestamp check.
    """

    fault_codes: ClassVar[dict[int, str]] = {
        400: "BAD_REQUEST", 401: "GW.AUTHN", 403: "GW.AUTHZ", 404: "NOT_FOUND", 429: "GW.RATE_LIMIT",
        500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout",
    }

    def __init__(
        self, *, client_id: str = "sim-client", client_secret: str | None = None,
        rate_per_second: float | None = 2.0, burst: int = 2, port: int = 0,
        max_items_per_call: int = 50, max_images_per_call: int = 10,
        send_retry_after: bool = False, clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(port=port, rate_per_second=rate_per_second, burst=burst)
        self.client_id = client_id
        self.client_secret = client_secret or bcrypt.gensalt(4).decode()
        self.max_items_per_call = max_items_per_call
        self.max_images_per_call = max_images_per_call
        self.send_retry_after = send_retry_after
        self.wall_clock = clock
        self.token_issues = 0  # new tokens minted
        self.token_requests = 0  # successful token calls, reused token included
        self._tokens: dict[str, float] = {}  # access token -> expiry (wall clock)
        self._current: str | None = None
        self._products: dict[int, dict[str, Any]] = {}
        self._images: list[dict[str, Any]] = []
        self._moved: dict[str, str] = {}  # old path -> new path (answered 308)
        self._served_as: dict[str, str] = {}  # new path -> the endpoint it serves
        self._quota: tuple[int, str] | None = None  # (limit, period)
        self._quota_used: dict[tuple[str, int], int] = {}  # (API, window) -> calls counted

    # -- Python API for tests ----------------------------------------------
    def add_product(self, no: int, *, sale_price: int = 10_000, stock: int = 10, status: str = "SALE") -> None:
        """Create or replace origin product `no`."""
        with self.lock:
            self._products[no] = {
                "originProductNo": no, "salePrice": sale_price, "stockQuantity": stock,
                "statusType": status, "immediateDiscountPolicy": None, "updates": 0,
            }

    def product(self, no: int) -> dict[str, Any]:
        """Current state of a product (`updates`: how many update items hit it); KeyError if unknown."""
        with self.lock:
            return dict(self._products[no])

    def products(self) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(list(self._products.values()))

    def images(self) -> list[dict[str, Any]]:
        """Uploaded images in order: `{"url", "bytes", "filename", "format"}`."""
        with self.lock:
            return [dict(image) for image in self._images]

    def move(self, path: str, to: str) -> None:
        """Answer requests to `path` with 308 PERMANENT_REDIRECT to `to`, which serves that endpoint from now on."""
        with self.lock:
            self._moved[path] = to
            self._served_as[to] = self._served_as.pop(path, path)

    def set_quota(self, limit: int | None, period: str = "HOURS") -> None:
        """An hourly (or per-`period`) quota per API: `limit` calls a window, then 429 GW.QUOTA_LIMIT; None: off."""
        if period not in QUOTA_PERIODS:
            raise ValueError(f"period must be one of {sorted(QUOTA_PERIODS)}")
        with self.lock:
            self._quota = None if limit is None else (limit, period)
            self._quota_used.clear()

    def expire_token(self) -> None:
        """Invalidate every issued token now; the next token call mints a new one."""
        with self.lock:
            self._tokens.clear()
            self._current = None

    def state(self) -> dict[str, Any]:
        return {
            "products": list(self._products.values()),
            "images": [{k: v for k, v in image.items() if k != "bytes"} | {"size": len(image["bytes"])}
                       for image in self._images],
            "token_issues": self.token_issues,
            "token_requests": self.token_requests,
        }

    def control(self, request: Request, name: str) -> Response | None:
        if (request.method, name) == ("POST", "expire_token"):
            self.expire_token()
            return Response(200, {"ok": True})
        if (request.method, name) == ("POST", "products"):
            body = request.json()
            self.add_product(int(body["originProductNo"]), sale_price=int(body.get("salePrice", 10_000)),
                             stock=int(body.get("stockQuantity", 10)), status=str(body.get("statusType", "SALE")))
            return Response(200, self.product(int(body["originProductNo"])))
        return None

    # -- HTTP ---------------------------------------------------------------
    def error(self, err: SimError) -> Response:
        return Response(err.status, {
            "code": err.code, "message": err.message,
            "invalidInputs": err.extra.get("invalidInputs", []),
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        })

    def handle(self, request: Request) -> Response:
        moved = self._moved.get(request.path)
        if moved is not None:
            # Documented for every endpoint: 308 PERMANENT_REDIRECT, to be resent with the same method.
            return Response(308, self.error(SimError(308, "PERMANENT_REDIRECT", f"moved to {moved}")).json_body,
                            headers={"Location": self.url + moved})
        path = self._served_as.get(request.path, request.path)
        if (request.method, path) == ("POST", TOKEN_PATH):
            return self._issue_token(request)
        routes = {("PATCH", MULTI_UPDATE_PATH): self._multi_update, ("POST", IMAGE_UPLOAD_PATH): self._upload}
        action = routes.get((request.method, path))
        if action is None:
            raise SimError(404, "NOT_FOUND", f"no such API: {request.method} {request.path}")
        self._authenticate(request)
        headers = self._rate_limit(path)
        headers.update(self._count_quota(path, headers))
        response = action(request)
        response.headers.update(headers)
        return response

    def _count_quota(self, api: str, headers: dict[str, str]) -> dict[str, str]:
        """Count a call against the quota; return its GNCP-GW-Quota-* headers (raise 429 GW.QUOTA_LIMIT if spent)."""
        if self._quota is None:
            return {}
        limit, period = self._quota
        offset = KST_OFFSET if period == "DAYS" else 0.0
        window = int((self.wall_clock() + offset) // QUOTA_PERIODS[period])
        used = self._quota_used.get((api, window), 0)
        quota = {"GNCP-GW-Quota-Period": period, "GNCP-GW-Quota-Limit": str(limit),
                 "GNCP-GW-Quota-Remaining": str(max(0, limit - used - 1))}
        if used >= limit:
            # The message real applications got (commerce-api-naver discussion #3737).
            raise SimError(429, "GW.QUOTA_LIMIT", "할당된 시간당 요청량을 초과하였습니다.",
                           headers={**headers, **quota})
        self._quota_used[(api, window)] = used + 1
        return quota

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expiry = self._tokens.get(token)
        if scheme.lower() != "bearer" or expiry is None or expiry <= self.wall_clock():
            raise SimError(401, "GW.AUTHN", "Authentication failed: missing, unknown or expired access token.")

    def _rate_limit(self, api: str) -> dict[str, str]:
        """Take a token from this API's bucket; return the gateway headers (raise 429 if empty)."""
        bucket = self.limiter.bucket((self.client_id, api))
        if bucket is None:
            return {}
        wait = bucket.take()
        headers = {
            "GNCP-GW-RateLimit-Replenish-Rate": f"{bucket.rate:g}",
            "GNCP-GW-RateLimit-Burst-Capacity": f"{bucket.burst:g}",
            "GNCP-GW-RateLimit-Remaining": str(int(bucket.remaining)),
        }
        if wait:
            if self.send_retry_after:
                headers["Retry-After"] = str(retry_after_seconds(wait))
            raise SimError(429, "GW.RATE_LIMIT", "Rate limit exceeded.", headers=headers)
        return headers

    def _issue_token(self, request: Request) -> Response:
        form = {k: v[-1] for k, v in request.query.items()}
        form.update({k: v[-1] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()})
        for name in ("client_id", "timestamp", "client_secret_sign", "grant_type", "type"):
            if not form.get(name):
                raise _bad(name, f"{name} is required")
        if form["grant_type"] != "client_credentials":
            raise _bad("grant_type", "grant_type must be client_credentials")
        if form["type"] != "SELF":
            raise _bad("type", "the simulator issues SELF tokens only")
        if not form["timestamp"].isdigit():
            raise _bad("timestamp", "timestamp must be Unix time in milliseconds")
        if abs(self.wall_clock() * 1000 - int(form["timestamp"])) > TIMESTAMP_TOLERANCE_MS:
            raise _bad("timestamp", "timestamp is more than 5 minutes away from the server time")
        if form["client_id"] != self.client_id:
            raise _bad("client_id", "unknown client_id", 401, "GW.AUTHN")
        expected = client_secret_sign(self.client_id, self.client_secret, int(form["timestamp"]))
        if not hmac.compare_digest(expected, form["client_secret_sign"]):
            raise _bad("client_secret_sign", "client_secret_sign does not match", 401, "GW.AUTHN")
        now = self.wall_clock()
        current = self._current
        if current is None or self._tokens.get(current, 0) - now <= TOKEN_REUSE_MIN_REMAINING:
            current = secrets.token_urlsafe(24)
            self._tokens[current] = now + TOKEN_LIFETIME
            self._current = current
            self.token_issues += 1
        self.token_requests += 1
        return Response(200, {
            "access_token": current, "expires_in": round(self._tokens[current] - now), "token_type": "Bearer",
        })

    def _multi_update(self, request: Request) -> Response:
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            raise _bad("body", "body is not valid JSON") from None
        items = body.get("multiProductUpdateRequestVos") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise _bad("multiProductUpdateRequestVos", "a non-empty list is required")
        if len(items) > self.max_items_per_call:
            raise _bad("multiProductUpdateRequestVos",
                       f"at most {self.max_items_per_call} items per call, got {len(items)}")
        for i, item in enumerate(items):
            where = f"multiProductUpdateRequestVos[{i}]"
            self._check_item(item, where)
            if item["originProductNo"] not in self._products:
                raise _bad(f"{where}.originProductNo", f"origin product {item['originProductNo']} does not exist",
                           404, "NOT_FOUND")
        for item in items:
            self._apply_item(item)
        return Response(200, {"code": "SUCCESS", "message": f"{len(items)} product(s) updated", "data": {}})

    def _check_item(self, item: Any, where: str) -> None:
        """Refuse the whole call on a malformed item, before anything is applied."""
        if not isinstance(item, dict) or not _int_at_least(item.get("originProductNo"), 1):
            raise _bad(f"{where}.originProductNo", "originProductNo (positive integer) is required")
        types = item.get("multiUpdateTypes")
        if not isinstance(types, list) or not types or any(t not in MULTI_UPDATE_TYPES for t in types):
            raise _bad(f"{where}.multiUpdateTypes", f"a non-empty list of {MULTI_UPDATE_TYPES} is required")
        if "PRODUCT_STATUS_SALE" in types and "PRODUCT_STATUS_SUSPENSION" in types:
            raise _bad(f"{where}.multiUpdateTypes", "PRODUCT_STATUS_SALE and PRODUCT_STATUS_SUSPENSION conflict")
        sale = item.get("productSalePrice")
        price = sale.get("salePrice") if isinstance(sale, dict) else None
        if "SALE_PRICE" in types and not _int_at_least(price, 1):
            raise _bad(f"{where}.productSalePrice.salePrice", "a positive integer is required for SALE_PRICE")
        stock = item.get("stockQuantity")
        if "STOCK" in types and not _int_at_least(stock, 0):
            raise _bad(f"{where}.stockQuantity", "a non-negative integer is required for STOCK")
        if "IMMEDIATE_DISCOUNT" in types and not isinstance(item.get("immediateDiscountPolicy"), dict):
            raise _bad(f"{where}.immediateDiscountPolicy", "an object is required for IMMEDIATE_DISCOUNT")

    def _apply_item(self, item: dict[str, Any]) -> None:
        product = self._products[item["originProductNo"]]
        types = item["multiUpdateTypes"]
        if "SALE_PRICE" in types:
            product["salePrice"] = item["productSalePrice"]["salePrice"]
        if "STOCK" in types:
            product["stockQuantity"] = item["stockQuantity"]
        if "IMMEDIATE_DISCOUNT" in types:
            product["immediateDiscountPolicy"] = copy.deepcopy(item["immediateDiscountPolicy"])
        if "PRODUCT_STATUS_SALE" in types:
            product["statusType"] = "SALE"
        if "PRODUCT_STATUS_SUSPENSION" in types:
            product["statusType"] = "SUSPENSION"
        product["updates"] += 1

    def _upload(self, request: Request) -> Response:
        files = [p for p in _multipart(request.body, request.headers.get("content-type", "")) if p.name == "imageFiles"]
        if not files:
            raise _bad("imageFiles", "at least one file is required in imageFiles")
        if len(files) > self.max_images_per_call:
            raise _bad("imageFiles", f"at most {self.max_images_per_call} files per call, got {len(files)}")
        formats = []
        for i, part in enumerate(files):
            fmt = next((ext for magic, ext in _IMAGE_MAGIC if part.data.startswith(magic)), None)
            if fmt is None:
                raise _bad(f"imageFiles[{i}]", f"{part.filename or 'file'} is not a JPG, GIF, PNG or BMP image")
            formats.append(fmt)
        stored = []
        for part, fmt in zip(files, formats, strict=True):
            url = f"https://shop-phinf.pstatic.net/sim/{uuid.uuid4().hex}.{fmt}"
            self._images.append({"url": url, "bytes": part.data, "filename": part.filename, "format": fmt})
            stored.append({"url": url})
        return Response(200, {"images": stored})


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m standins.naver`."""
    parser = cli_parser("Naver Commerce API simulator on 127.0.0.1", rate=2.0, burst=2)
    parser.add_argument("--client-id", default="sim-client")
    parser.add_argument("--client-secret", default=None, help="a bcrypt salt; generated if omitted")
    parser.add_argument("--max-items", type=int, default=50, help="items per multi-update call")
    parser.add_argument("--products", default="1001,1002,1003",
                        help="origin product numbers to seed, comma-separated (price 10000, stock 10)")
    args = parser.parse_args(argv)
    sim = NaverSimulator(client_id=args.client_id, client_secret=args.client_secret, rate_per_second=args.rate or None,
                         burst=args.burst, port=args.port, max_items_per_call=args.max_items)
    products = [int(no) for no in args.products.split(",") if no.strip()]
    for no in products:
        sim.add_product(no)
    return run_until_signal(sim, {"client_id": sim.client_id, "client_secret": sim.client_secret,
                                  "products": products})


if __name__ == "__main__":
    sys.exit(main())
