"""Naver without network: plans, routes, the signed secret and the token cache."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import bcrypt
import httpx
import pytest

from client import wire
from sidecar.config import NaverConfig
from sidecar.connectors.base import Reject, Send, Skip, unpaced
from sidecar.connectors.naver import NaverConnector, NaverRequest, UpdateProducts, UploadImages, client_secret_sign
from sidecar.journal import Event

from .support import FakePlanContext, journaled

pytestmark = pytest.mark.timeout(120)

UPDATE = "naver.product.update"
IMAGES = "naver.images.upload"
PNG = b"\x89PNG\r\n\x1a\n"


def _event(n: int, kind: str, payload: Any, key: str | None = None, target: str = "products") -> Event:
    return journaled(n, "naver", kind, target, payload, key=key)


def _envelope(kind: str, payload: Any, key: str | None = None) -> wire.Envelope:
    return wire.decode(wire.encode("c", 1, kind, key, None, 0, payload))


def test_plan_folds_updates_per_product_and_caps_products_per_call() -> None:
    conn = NaverConnector(NaverConfig(max_products_per_request=2), "id", "secret")
    group = [
        _event(1, UPDATE, {"originProductNo": 10, "salePrice": 100, "stockQuantity": 1}),
        _event(2, UPDATE, {"originProductNo": 20, "statusType": "SUSPENSION"}),
        _event(3, UPDATE, {"originProductNo": 30, "stockQuantity": 3}),
        _event(4, UPDATE, {"originProductNo": 10, "salePrice": 200}),
        _event(5, UPDATE, {"originProductNo": 20, "statusType": "SALE"}),
    ]
    plan = conn.plan(group, FakePlanContext())
    assert isinstance(plan, Send)
    assert [e.id for e in plan.events] == [1, 2, 4, 5]  # product 30 waits for the next call
    assert plan.request == UpdateProducts({"multiProductUpdateRequestVos": [
        {"originProductNo": 10, "multiUpdateTypes": ["SALE_PRICE", "STOCK"],
         "productSalePrice": {"salePrice": 200}, "stockQuantity": 1},
        {"originProductNo": 20, "multiUpdateTypes": ["PRODUCT_STATUS_SALE"]},
    ]})


def test_plan_fills_an_upload_with_images_of_several_keys_and_skips_delivered_ones() -> None:
    conn = NaverConnector(NaverConfig(), "id", "secret")

    def images(n: int, key: str, count: int) -> Event:
        event = _event(n, IMAGES, {}, key=key, target="images")
        event.blob_path = "\n".join(f"/spool/{n}-{i}" for i in range(count))
        return event

    group = [images(1, "a", 4), images(2, "b", 5), images(3, "a", 4), images(4, "c", 2), images(5, "d", 1)]
    plan = conn.plan(group, FakePlanContext())
    # a and b fill 9 of 10; c's 2 would not fit, so c and d wait; a's second event rides along as a duplicate.
    assert isinstance(plan, Send) and [e.id for e in plan.events] == [1, 2, 3]
    assert isinstance(plan.request, UploadImages)
    assert [key for key, _ in plan.request.batch] == ["a", "b"] and plan.request.duplicates == 1
    skip = conn.plan(group, FakePlanContext(refs={"a": '["https://x/1.png"]'}))
    assert isinstance(skip, Skip) and [e.id for e in skip.events] == [1, 3] and skip.reason == "duplicate"


@pytest.mark.parametrize("payload, words", [
    ([1], "JSON object"),
    ({"salePrice": 1}, "originProductNo"),
    ({"originProductNo": True, "salePrice": 1}, "originProductNo"),
    ({"originProductNo": 1}, "nothing to update"),
    ({"originProductNo": 1, "salesPrice": 1}, "salesPrice"),
    ({"originProductNo": 1, "salePrice": 0}, "salePrice"),
    ({"originProductNo": 1, "stockQuantity": -1}, "stockQuantity"),
    ({"originProductNo": 1, "stockQuantity": 1.5}, "stockQuantity"),
    ({"originProductNo": 1, "statusType": "OUTOFSTOCK"}, "SALE or SUSPENSION"),
])
def test_route_refuses_bad_product_updates(payload: Any, words: str) -> None:
    conn = NaverConnector(NaverConfig(), "id", "secret")
    with pytest.raises(Reject, match=words) as caught:
        conn.route(_envelope(UPDATE, payload), [])
    assert caught.value.reason == "bad_payload"


def test_route_refuses_bad_image_uploads() -> None:
    conn = NaverConnector(NaverConfig(), "id", "secret")
    assert conn.route(_envelope(IMAGES, {}, key="k"), [PNG]) == "images"
    for key, blobs, words in [(None, [PNG], "key"), ("k", [], "0 images"), ("k", [PNG] * 11, "11 images"),
                              ("k", [PNG, b"%PDF-1.7"], "image 1 is not")]:
        with pytest.raises(Reject, match=words):
            conn.route(_envelope(IMAGES, {}, key=key), blobs)


def test_client_secret_sign_is_a_bcrypt_hash_of_id_and_timestamp() -> None:
    salt = bcrypt.gensalt(4).decode()
    signed = base64.b64decode(client_secret_sign("app", salt, 1_700_000_000_000))
    assert signed.startswith(salt[:29].encode())
    assert bcrypt.checkpw(b"app_1700000000000", signed)


def test_token_is_cached_until_30_minutes_before_expiry() -> None:
    issued: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            issued.append(f"t{len(issued)}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 10_800})
        token = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(200 if token == issued[-1] else 401, json={"code": "SUCCESS"})

    now = [0.0]
    conn = NaverConnector(NaverConfig(base_url="http://naver.test/external"), "id", bcrypt.gensalt(4).decode(),
                          clock=lambda: now[0], transport=httpx.MockTransport(api))
    send: Send[NaverRequest] = Send([], UpdateProducts({"multiProductUpdateRequestVos": []}))

    async def run() -> None:
        await conn.send(send, unpaced)
        now[0] = 9_000 - 1   # 30 minutes before the 3-hour lifetime ends: still cached
        await conn.send(send, unpaced)
        assert issued == ["t0"]
        now[0] = 9_000
        await conn.send(send, unpaced)
        assert issued == ["t0", "t1"]
        issued.append("revoked-elsewhere")  # the next call answers 401: renew once and retry
        await conn.send(send, unpaced)
        assert issued == ["t0", "t1", "revoked-elsewhere", "t3"]
        await conn.aclose()

    asyncio.run(run())
