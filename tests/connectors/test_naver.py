"""Naver without network: plans, routes, the signed secret and the token cache."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import bcrypt
import httpx
import pytest

from client import wire
from sidecar.config import NaverConfig
from sidecar.connectors.base import Send, Skip, unpaced
from sidecar.connectors.naver import (
    NaverConnector,
    NaverRequest,
    UpdateProducts,
    UploadImages,
    client_secret_sign,
)
from sidecar.errors import CredentialsRefused, RateLimited, Reject
from sidecar.journal.store import Event

from ..support import FakePlanContext, journaled

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


# -- credentials refused (the lane's pause: test_credentials_e2e.py) ---------------------

SALT_A, SALT_B = bcrypt.gensalt(4).decode(), bcrypt.gensalt(4).decode()


def _mock_connector(handler: Any, secret: str = SALT_A) -> NaverConnector:
    return NaverConnector(NaverConfig(base_url="http://naver.test/external"), "id", secret,
                          transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status", [400, 401, 403])
def test_naver_token_call_4xx_is_credentials_refused_and_429_is_a_rate_limit(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"code": "GW.AUTHN", "message": "no", "timestamp": "x"})

    async def go(connector: NaverConnector) -> BaseException:
        with pytest.raises((CredentialsRefused, RateLimited)) as err:
            await connector.send(Send([], UpdateProducts({"multiProductUpdateRequestVos": []})), unpaced)
        await connector.aclose()
        return err.value

    refused = asyncio.run(go(_mock_connector(handler)))
    assert isinstance(refused, CredentialsRefused) and refused.pause_reason == "credentials refused by Naver"
    assert refused.status == status and refused.detail == "GW.AUTHN"

    limited = asyncio.run(go(_mock_connector(lambda r: httpx.Response(429, json={"code": "GW.RATE_LIMIT"}))))
    assert isinstance(limited, RateLimited)


def test_a_naver_secret_that_is_not_a_bcrypt_salt_is_refused_without_naming_it() -> None:
    connector = _mock_connector(lambda r: httpx.Response(500), secret="plainly-not-a-salt-1234")

    async def go() -> CredentialsRefused:
        with pytest.raises(CredentialsRefused) as err:
            await connector.send(Send([], UpdateProducts({"multiProductUpdateRequestVos": []})), unpaced)
        await connector.aclose()
        return err.value

    refused = asyncio.run(go())
    assert "bcrypt" in str(refused) and "plainly-not-a-salt" not in str(refused)


def test_naver_refresh_credentials_drops_the_cached_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("NAVER_CLIENT_ID", "id")
    monkeypatch.setenv("NAVER_CLIENT_SECRET", SALT_A)
    connector = _mock_connector(lambda r: httpx.Response(500))
    connector._token = "cached"
    assert connector.refresh_credentials() is False and connector._token == "cached"
    monkeypatch.setenv("NAVER_CLIENT_SECRET", SALT_B)
    assert connector.refresh_credentials() is True and connector._token is None
    assert os.environ["NAVER_CLIENT_ID"] == connector.client_id
    asyncio.run(connector.aclose())
