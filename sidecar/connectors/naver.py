"""Naver Commerce: product price/stock/status updates and image uploads.

Kinds (client side)::

    sidecar.emit("naver.product.update", {"originProductNo": 1001, "salePrice": 15000, "stockQuantity": 7})
    sidecar.emit("naver.product.update", {"originProductNo": 1001, "statusType": "SUSPENSION"})
    sidecar.emit("naver.images.upload", {}, key="sku-42", blob=[png, jpg])

- ``naver.product.update``: every update waits in one group ("products"), so
  a plan sees them all: they are folded per product (later values win per
  field, in emit order) and sent as ``PATCH /v1/products/origin-products/
  multi-update``, at most `max_products_per_request` products a call. Naver
  documents the answer as 200 ``{code, message, data: {}}`` with no per-item
  results: a 200 applied every product. A 400 or 404 refuses the whole call
  (one unknown product is enough): the call is split in halves, each sent
  after a token of the lane's limiter, down to single products; the parts
  Naver accepts are applied, and only a product refused on its own is
  dead-lettered (``product_refused``, with Naver's answer).
- ``naver.images.upload``: 1 to 10 JPG/GIF/PNG/BMP blobs an event. Every
  upload waits in one group ("images"), so images of different events (keys)
  share a ``POST /v1/product-images/upload``, up to 10 a call, in emit
  order; the URLs Naver returns, in upload order, are split back per event
  and kept in the journal under each event's `key`, read back with
  ``image_urls(journal_dir, key)``. A call Naver refuses as a whole (400)
  dead-letters every event in it (ingest already checks each image's format).

Every answer's ``GNCP-GW-RateLimit-Replenish-Rate``, ``-Burst-Capacity`` and
``-Remaining`` headers go back to the lane's limiter (`Delivered.told`, or
`RateLimited.told` on a 429), which adopts them up to the configured rate.
A 429 ``GW.QUOTA_LIMIT`` is the hourly quota beside that rate: it pauses
the lane until the quota's next window, which ``GNCP-GW-Quota-Period`` names
(`quota_reset_in`), rather than retrying into it every few seconds.

Both endpoints document ``308 PERMANENT_REDIRECT``: one on the same host is
followed once with the same method and remembered for the life of the
process (`connectors.http_calls.Redirects`, logged once). A 404 from the token call,
or a 404 without Naver's error body, means `base_url` is wrong: the lane
pauses with that message (EndpointNotFound) instead of blaming the credentials.

The access token comes from ``POST /v1/oauth2/token`` (a bcrypt-signed
client credential), is kept until 30 minutes before it expires, and is
renewed once when an API call answers 401. A token call refused with a 4xx
(other than 429), a client secret that is not a bcrypt salt, or a 401 to a
token just issued raise CredentialsRefused: the lane pauses until the
credentials are read again (`refresh_credentials`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

import bcrypt
import httpx
import orjson

from client.wire import Envelope
from sidecar.config import Config, NaverConfig
from sidecar.connectors import LaneSpec
from sidecar.connectors.base import ConnectorBase, Dead, Delivered, Pace, Plan, PlanContext, Send, Skip
from sidecar.connectors.http_calls import (
    BODY_KEEP_CHARS,
    Redirects,
    bad_response,
    header_retry_after,
    json_code,
    json_object,
    raise_for_status,
    refuse_credentials,
    request,
)
from sidecar.delivery.limiter import Rule
from sidecar.errors import CredentialsRefused, DeliveryError, EndpointNotFound, Permanent, Reject
from sidecar.journal.store import Event, read_ref
from sidecar.ops.credentials import how_to_provide, read_secret
from sidecar.quota import NONE, ApiQuota

LANE = "naver"
API_NAME = "Naver"
UPDATE = "naver.product.update"
IMAGES = "naver.images.upload"

PRODUCTS_TARGET = "products"
IMAGES_TARGET = "images"
RATE_HEADER = "GNCP-GW-RateLimit-Replenish-Rate"
BURST_HEADER = "GNCP-GW-RateLimit-Burst-Capacity"
REMAINING_HEADER = "GNCP-GW-RateLimit-Remaining"
TOKEN_PATH = "v1/oauth2/token"
MULTI_UPDATE_PATH = "v1/products/origin-products/multi-update"
IMAGE_UPLOAD_PATH = "v1/product-images/upload"

MAX_IMAGES_PER_CALL = 10
REFUSED_ALONE = "product_refused"  # dead-letter reason: Naver refused the product in a call of its own
# A multi-update refused whole for one bad product (documented 400 and 404): split to find it.
WHOLE_CALL_REFUSALS = frozenset({400, 404})
QUOTA_CODE = "GW.QUOTA_LIMIT"
QUOTA_PERIOD_HEADER = "GNCP-GW-Quota-Period"
# GNCP-GW-Quota-Period values that are clock periods, in seconds. The documents name SECONDS and
# ROUND (a subscription round, no clock); applications were answered HOURS in 2026-08 ("할당된 시간당
# 요청량을 초과하였습니다", commerce-api-naver discussions #3737, #3738). No reset time is sent, nor is
# it documented where a window starts: we take whole periods of the clock (KST, UTC+9, for days).
QUOTA_PERIODS = {"SECONDS": 1.0, "MINUTES": 60.0, "HOURS": 3600.0, "DAYS": 86_400.0}
KST_OFFSET = 9 * 3600.0
# Naver hands out the same token while more than 30 minutes remain; renewing
# at that point gets a fresh one instead of a token about to lapse mid-call.
TOKEN_RENEW_BEFORE_EXPIRY = 1800.0
STATUS_TYPES = {"SALE": "PRODUCT_STATUS_SALE", "SUSPENSION": "PRODUCT_STATUS_SUSPENSION"}
UPDATE_FIELDS = ("salePrice", "stockQuantity", "statusType")
IMAGE_FORMATS = (  # magic bytes -> (extension, MIME type)
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
    (b"BM", "bmp", "image/bmp"),
)


def client_secret_sign(client_id: str, client_secret: str, timestamp_ms: int) -> str:
    """base64(bcrypt(f"{client_id}_{timestamp_ms}", salt=client_secret)), as the token call asks.

        client_secret_sign("id", "$2a$04$abcdefghijklmnopqrstuu", 1700000000000)
    """
    hashed = bcrypt.hashpw(f"{client_id}_{timestamp_ms}".encode(), client_secret.encode())
    return base64.b64encode(hashed).decode()


def image_urls(journal: str | Path, key: str) -> list[str] | None:
    """URLs of the images uploaded under `key`, or None if none were (yet).

        image_urls("/var/lib/trading-sidecar", "sku-42")  # ["https://shop-phinf.pstatic.net/..."]

    `journal` is the journal directory or its journal.db; opened read-only,
    so it is safe while the sidecar runs.
    """
    value = read_ref(journal, LANE, key)
    return list(orjson.loads(value)) if value is not None else None


def _int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _image_format(data: bytes) -> tuple[str, str] | None:
    return next(((ext, mime) for magic, ext, mime in IMAGE_FORMATS if data.startswith(magic)), None)


def told_quota(response: httpx.Response) -> ApiQuota | None:
    """Naver's gateway headers as an ApiQuota (None without them; a malformed one is left out).

        told_quota(httpx.Response(200, headers={"GNCP-GW-RateLimit-Replenish-Rate": "1"}))  # ApiQuota(rate=1.0)
    """
    values = []
    for name in (RATE_HEADER, BURST_HEADER, REMAINING_HEADER):
        try:
            values.append(max(NONE, float(response.headers.get(name, NONE))))
        except ValueError:
            values.append(NONE)
    return None if values == [NONE] * 3 else ApiQuota(*values)


def quota_reset_in(response: httpx.Response, now: float) -> float | None:
    """Seconds from `now` (Unix time) to the next window of the quota named by GNCP-GW-Quota-Period.

        quota_reset_in(httpx.Response(429, headers={"GNCP-GW-Quota-Period": "HOURS"}), 7200.0 + 1500)  # 2100.0

    None when the period is not a clock period (ROUND) or is missing.
    """
    period = QUOTA_PERIODS.get(response.headers.get(QUOTA_PERIOD_HEADER, "").strip().upper())
    if period is None:
        return None
    offset = KST_OFFSET if period >= QUOTA_PERIODS["DAYS"] else 0.0
    return period - (now + offset) % period


def _wrong_url(response: httpx.Response) -> EndpointNotFound:
    return EndpointNotFound(API_NAME, str(response.request.url), "[naver] base_url", status=404,
                            body=response.text[:BODY_KEEP_CHARS])


def _merge_products(events: list[Event]) -> dict[int, dict[str, Any]]:
    """Fold updates per product, later values winning per field; products in first-seen order."""
    merged: dict[int, dict[str, Any]] = {}
    for event in events:
        body = event.payload
        fields = merged.setdefault(body["originProductNo"], {})
        fields.update((name, body[name]) for name in UPDATE_FIELDS if name in body)
    return merged


def _update_item(no: int, fields: dict[str, Any]) -> dict[str, Any]:
    """One entry of multiProductUpdateRequestVos."""
    item: dict[str, Any] = {"originProductNo": no, "multiUpdateTypes": []}
    if "salePrice" in fields:
        item["multiUpdateTypes"].append("SALE_PRICE")
        item["productSalePrice"] = {"salePrice": fields["salePrice"]}
    if "stockQuantity" in fields:
        item["multiUpdateTypes"].append("STOCK")
        item["stockQuantity"] = fields["stockQuantity"]
    if "statusType" in fields:
        item["multiUpdateTypes"].append(STATUS_TYPES[fields["statusType"]])
    return item


@dataclass(frozen=True)
class UpdateProducts:
    """PATCH multi-update: the products' folded updates (`multiProductUpdateRequestVos`)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class UploadImages:
    """POST product-images/upload: each (key, event)'s images in order; `duplicates` more events
    at the end of the plan's events repeat a key of the batch."""

    batch: list[tuple[str, Event]]
    duplicates: int


NaverRequest = UpdateProducts | UploadImages


class NaverConnector(ConnectorBase):
    lane = LANE
    kinds = frozenset({UPDATE, IMAGES})

    def __init__(self, cfg: NaverConfig, client_id: str, client_secret: str, *,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self._secret = client_secret
        self.clock = clock
        self.wall_clock = wall_clock
        self.http = httpx.AsyncClient(base_url=cfg.base_url.rstrip("/") + "/", timeout=cfg.timeout,
                                      transport=transport)
        self._token: str | None = None
        self._renew_at = 0.0
        self._token_lock = asyncio.Lock()
        self.redirects = Redirects(API_NAME, "[naver] base_url")
        # Events whose product Naver refused alone in a split that a later failure cut short:
        # the retry dead-letters them at planning instead of splitting again. Event id -> Naver's answer.
        self._refused: dict[int, str] = {}

    def refresh_credentials(self) -> bool:
        """Read the client id and secret again; True (and the cached token dropped) if either changed."""
        client_id = read_secret(self.cfg.client_id_env, redacted=False)
        secret = read_secret(self.cfg.client_secret_env)
        if not client_id or not secret or (client_id, secret) == (self.client_id, self._secret):
            return False
        self.client_id, self._secret = client_id, secret
        self._token, self._renew_at = None, 0.0
        return True

    # -- ingest ---------------------------------------------------------------

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        if env.kind == UPDATE:
            self._check_update(env.payload, blobs)
            return PRODUCTS_TARGET
        if not env.key:
            raise Reject("bad_payload", "naver.images.upload needs key=... (the URLs are recorded against it)")
        if env.payload is not None and not isinstance(env.payload, dict):
            raise Reject("bad_payload", "naver.images.upload payload must be a JSON object (or null)")
        if not 1 <= len(blobs) <= MAX_IMAGES_PER_CALL:
            raise Reject("bad_payload", f"{len(blobs)} images in one event; Naver takes 1 to "
                                        f"{MAX_IMAGES_PER_CALL} a call: split them into several emits")
        for i, blob in enumerate(blobs):
            if _image_format(blob) is None:
                raise Reject("bad_payload", f"image {i} is not a JPG, GIF, PNG or BMP file")
        return IMAGES_TARGET

    @staticmethod
    def _check_update(body: Any, blobs: list[bytes]) -> None:
        if not isinstance(body, dict):
            raise Reject("bad_payload", "payload must be a JSON object")
        if blobs:
            raise Reject("bad_payload", "naver.product.update takes no blob")
        if not _int(body.get("originProductNo"), 1):
            raise Reject("bad_payload", "originProductNo (a positive integer) is required")
        unknown = sorted(set(body) - {"originProductNo", *UPDATE_FIELDS})
        if unknown:
            raise Reject("bad_payload", f"unknown field(s) {', '.join(unknown)}; expected {', '.join(UPDATE_FIELDS)}")
        if not any(name in body for name in UPDATE_FIELDS):
            raise Reject("bad_payload", f"nothing to update: give at least one of {', '.join(UPDATE_FIELDS)}")
        if "salePrice" in body and not _int(body["salePrice"], 1):
            raise Reject("bad_payload", f"salePrice must be a positive integer, not {body['salePrice']!r}")
        if "stockQuantity" in body and not _int(body["stockQuantity"], 0):
            raise Reject("bad_payload", f"stockQuantity must be a non-negative integer, not {body['stockQuantity']!r}")
        if "statusType" in body and (not isinstance(body["statusType"], str) or body["statusType"] not in STATUS_TYPES):
            raise Reject("bad_payload", f"statusType must be SALE or SUSPENSION, not {body['statusType']!r}")

    # -- planning -------------------------------------------------------------

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan[NaverRequest]:
        if group[0].kind == IMAGES:
            return self._plan_images(group, ctx)
        refused = [e for e in group if e.id in self._refused]
        if refused:
            detail = self._refused[refused[0].id]
            dead = [e for e in refused if self._refused[e.id] == detail]
            for event in dead:
                del self._refused[event.id]
            return Dead(dead, REFUSED_ALONE, detail)
        merged = _merge_products(group)
        chosen = list(merged)[: self.cfg.max_products_per_request]
        taken = set(chosen)
        events = [e for e in group if e.payload["originProductNo"] in taken]
        # Resending after an unknown outcome (timeout, 5xx) is safe although
        # Naver applies a repeated multi-update again: every field is an
        # absolute value, so applying it twice leaves the same state.
        items = [_update_item(no, merged[no]) for no in chosen]
        return Send(events, UpdateProducts({"multiProductUpdateRequestVos": items}), merged=len(events) - 1)

    @staticmethod
    def _plan_images(group: list[Event], ctx: PlanContext) -> Plan[NaverRequest]:
        """Events in emit order into one upload while their images fit in MAX_IMAGES_PER_CALL.

        (Groups named "images:KEY" by an older version hold one key each; they plan the same way.)
        """
        done = [e for e in group if e.key is not None and ctx.ref(e.key) is not None]
        if done:
            return Skip(done, "duplicate")
        batch: list[tuple[str, Event]] = []
        again: list[Event] = []  # a key already in this call: uploaded once, counted as a duplicate
        images = 0
        for event in group:
            assert event.key is not None  # route() requires it
            if any(key == event.key for key, _ in batch):
                again.append(event)
                continue
            count = len(event.blob_paths) or 1
            if images + count > MAX_IMAGES_PER_CALL:
                break
            batch.append((event.key, event))
            images += count
        events = [e for _, e in batch] + again  # the lane counts duplicates from the end
        return Send(events, UploadImages(batch, len(again)), merged=len(events) - 1)

    # -- calls ----------------------------------------------------------------

    async def send(self, plan: Send[NaverRequest], pace: Pace) -> Delivered:
        match plan.request:
            case UploadImages(batch, duplicates):
                return await self._upload(batch, duplicates)
            case UpdateProducts(body):
                return await self._update(plan.events, body["multiProductUpdateRequestVos"], pace)
            case _:
                assert_never(plan.request)

    async def _upload(self, batch: list[tuple[str, Event]], duplicates: int) -> Delivered:
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        counts = []
        for _, event in batch:
            # Reading spool files (and bcrypt, below) is the lane's only blocking work: off the event
            # loop, which must stay free to feed the systemd watchdog and the other lanes.
            blobs = await asyncio.to_thread(event.blobs)
            counts.append(len(blobs))
            for data in blobs:
                ext, mime = _image_format(data) or ("bin", "application/octet-stream")
                files.append(("imageFiles", (f"image-{len(files) + 1}.{ext}", data, mime)))
        # A lost answer means the images may be stored already; uploading
        # again only leaves unused copies on Naver's image host, so resend.
        response = await self._call("POST", IMAGE_UPLOAD_PATH, files=files)
        images = json_object(response).get("images")
        urls = [image.get("url") if isinstance(image, dict) else None for image in images] \
            if isinstance(images, list) else []
        if len(urls) != len(files) or not all(isinstance(url, str) for url in urls):
            raise bad_response(response, f"upload of {len(files)} image(s) answered {len(urls)} URL(s)")
        refs = {}
        start = 0
        for (key, _), count in zip(batch, counts, strict=True):  # URLs come back in upload order
            refs[key] = orjson.dumps(urls[start:start + count]).decode()
            start += count
        return Delivered(refs=refs, duplicates=duplicates, told=told_quota(response))

    async def _update(self, events: list[Event], items: list[dict[str, Any]], pace: Pace) -> Delivered:
        """The multi-update, split on a whole-call refusal; events of products refused alone fail alone."""
        refused: dict[int, str] = {}  # originProductNo -> Naver's answer to it alone
        try:
            told = await self._update_part(items, pace, refused, first=True)
        except DeliveryError:
            # The parts already accepted are resent with the rest: absolute values, same end state.
            self._refused.update((e.id, refused[e.payload["originProductNo"]])
                                 for e in events if e.payload["originProductNo"] in refused)
            raise
        return Delivered(failed={e.id: (REFUSED_ALONE, refused[e.payload["originProductNo"]])
                                 for e in events if e.payload["originProductNo"] in refused}, told=told)

    async def _update_part(self, items: list[dict[str, Any]], pace: Pace, refused: dict[int, str], *,
                           first: bool = False) -> ApiQuota | None:
        """Send `items`; on a whole-call 400/404, each half in order, down to single products.

        Naver documents the 200 answer as ``{code, message, data: {}}``, no
        per-item results: a 200 with a JSON object applied every item, whatever its `code`.
        """
        if not first:
            await pace()  # every extra call within the lane's rate
        try:
            response = await self._call("PATCH", MULTI_UPDATE_PATH, json={"multiProductUpdateRequestVos": items})
        except Permanent as exc:
            if exc.status not in WHOLE_CALL_REFUSALS:
                raise
            if len(items) == 1:
                refused[items[0]["originProductNo"]] = exc.body or str(exc)
                return None
            half = (len(items) + 1) // 2
            told = await self._update_part(items[:half], pace, refused)
            return await self._update_part(items[half:], pace, refused) or told
        # Not even a JSON object (a page from something in between): applied or not, we cannot
        # tell; Retryable bad_response, and resending absolute values is safe.
        json_object(response)
        return told_quota(response)

    def _check(self, response: httpx.Response) -> None:
        if response.status_code == 404 and not json_code(response):
            # Naver's own 404s carry its error body; a bare one is a path that does not exist.
            raise _wrong_url(response)
        # Any 429 (GW.RATE_LIMIT, GW.QUOTA_LIMIT) was not applied: RateLimited, safe to resend.
        raise_for_status(response, retryable_4xx=frozenset(), code_of=json_code, told_of=told_quota,
                         retry_after_of=self._retry_after)

    def _retry_after(self, response: httpx.Response) -> float | None:
        """Retry-After, or for the hourly quota at least until its next window."""
        header = header_retry_after(response)
        if json_code(response) != QUOTA_CODE:
            return header
        reset = quota_reset_in(response, self.wall_clock())
        return max(header or 0.0, self.cfg.quota_wait_seconds if reset is None else reset)

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call with the bearer token; a 401 renews the token and retries once."""
        token = await self._access_token()
        response = await request(self.http, method, path, headers={"Authorization": f"Bearer {token}"},
                                 redirects=self.redirects, **kwargs)
        if response.status_code == 401:
            # Tokens can be revoked before their time (a new one issued elsewhere).
            token = await self._access_token(stale=token)
            response = await request(self.http, method, path, headers={"Authorization": f"Bearer {token}"},
                                     redirects=self.redirects, **kwargs)
            if response.status_code == 401:  # a token issued a moment ago: the application is refused
                refuse_credentials(API_NAME, response, json_code(response))
        self._check(response)
        return response

    async def _access_token(self, stale: str | None = None) -> str:
        """The cached token, or a new one if it is near expiry or equals `stale`."""
        async with self._token_lock:
            if self._token is not None and self._token != stale and self.clock() < self._renew_at:
                return self._token
            timestamp = int(self.wall_clock() * 1000)
            try:
                # bcrypt's cost comes from the secret: $2a$04$ is ~1 ms, $2a$13$ ~0.7 s of CPU: off the loop.
                sign = await asyncio.to_thread(client_secret_sign, self.client_id, self._secret, timestamp)
            except ValueError:  # bcrypt's "Invalid salt": never name the value
                raise CredentialsRefused(API_NAME, "the client secret is not a bcrypt salt ($2a$...)") from None
            form = {
                "client_id": self.client_id,
                "timestamp": str(timestamp),
                "grant_type": "client_credentials",
                "type": "SELF",
                "client_secret_sign": sign,
            }
            started = self.clock()
            response = await request(self.http, "POST", TOKEN_PATH, data=form, redirects=self.redirects)
            if response.status_code == 404:  # e.g. base_url without /external: not the credentials' fault
                raise _wrong_url(response)
            if 400 <= response.status_code < 500 and response.status_code != 429:
                # Wrong id or secret, a revoked application, or a clock too far off for the timestamp.
                refuse_credentials(API_NAME, response, json_code(response))
            self._check(response)
            doc = json_object(response, keep_body=False)
            token, lifetime = doc.get("access_token"), doc.get("expires_in")
            if not isinstance(token, str) or not token or not isinstance(lifetime, (int, float)):
                # The body holds the token (if any): never put it in the error.
                raise bad_response(response, "token answer without access_token/expires_in", keep_body=False)
            self._token = token
            # A lifetime shorter than the margin (not Naver's today) would renew on every call.
            self._renew_at = started + max(float(lifetime) - TOKEN_RENEW_BEFORE_EXPIRY, float(lifetime) / 2)
            return token


def build(cfg: Config) -> list[LaneSpec]:
    n = cfg.naver
    # The client id is an identifier, not a secret: redacting it would mangle logs.
    client_id, secret = read_secret(n.client_id_env, redacted=False), read_secret(n.client_secret_env)
    missing = [name for name, value in ((n.client_id_env, client_id), (n.client_secret_env, secret)) if not value]
    paused = None if not missing else (
        f"no Naver credentials: {how_to_provide(*missing)}")
    connector = NaverConnector(n, client_id or "", secret or "")
    # Naver's quota belongs to the application (client id), per API.
    return [LaneSpec(connector, Rule(rate=n.rate_per_second, burst=n.burst), paused=paused,
                     quota_id=client_id or "")]
