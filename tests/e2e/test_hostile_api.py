"""A hostile or broken API, over a real sidecar process and loopback simulators.

Each fault of the simulators (an answer that never ends, a 200 that is not
JSON or lacks the fields we read, a reset mid-body, a huge body, a redirect)
hits one lane while another lane keeps delivering. Nothing accepted is lost,
the final API state is exact, and the failure is counted under its named
reason (sidecar/errors.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import Client
from standins.base import Fault
from standins.moto_s3 import MotoS3, moto_s3
from standins.naver import NaverSimulator
from standins.notion import NotionSimulator, property_value
from standins.s3proxy import S3FaultProxy
from standins.webhook import WebhookReceiver

from ..support import SidecarProcess, drained, sidecar_config, wait_until
from .test_notion_e2e import create_body, page_by_key, paragraph, texts
from .test_s3_e2e import metric, put
from .test_s3_e2e import sidecar as s3_sidecar

pytestmark = pytest.mark.timeout(120)



def after_create(**answer: Any) -> Fault:
    """A fault on the answer to a page create, applied first: the hardest case (a create must stay unique)."""
    return Fault(when="after", method="POST", path_prefix="/v1/pages", **answer)


# fault -> the reason its retry is counted under
CREATE_FAULTS = {
    "slow_drip": (after_create(drip=0.1), "deadline"),
    "not_json": (after_create(status=200, raw="<html>upstream ok</html>"), "bad_response"),
    "missing_fields": (after_create(status=200, body={"object": "page"}), "bad_response"),
    "reset_mid_body": (after_create(cut=True), "transport_error"),
    "huge_body": (after_create(huge=12 * 2**20), "response_too_large"),
}


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def start(tmp: Path, sim: NotionSimulator, hook: WebhookReceiver, timeout: float = 2.0) -> SidecarProcess:
    cfg = sidecar_config(tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 25.0, "burst": 5.0,
                                      "timeout": timeout},
                         webhooks={"alerts": {"url": hook.url + "/alerts", "rate_per_second": 50.0, "burst": 10.0,
                                              "timeout": timeout}})
    return SidecarProcess(tmp, config=cfg, env={"NOTION_TOKEN": sim.token}).start()


def creates(sim: NotionSimulator) -> int:
    return sum(1 for r in sim.requests if r.method == "POST" and r.path == "/v1/pages")


@pytest.mark.parametrize("name", sorted(CREATE_FAULTS))
def test_a_broken_answer_to_a_create_leaves_one_page_and_other_lanes_deliver(
        name: str, short_tmp: Path, notion_sim: NotionSimulator, hook: WebhookReceiver) -> None:
    fault, reason = CREATE_FAULTS[name]
    sim, db = notion_sim, notion_sim.database_id
    sim.inject(fault)
    sc = start(short_tmp, sim, hook, timeout=3.0)
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "k"), key="k")
        client.emit("notion.page.update", {"properties": {"Price": {"number": 7}}}, ref="k")
        client.emit("notion.blocks.append", {"children": [paragraph("filled")]}, ref="k")
        for n in range(5):
            client.emit("webhook.post", {"n": n}, ref="alerts", key=f"a{n}")
    hook.wait_for(5, timeout=20)
    if name == "slow_drip":
        # The webhooks went out while the create's answer was still dripping.
        assert creates(sim) == 1
    wait_until(lambda: drained(sc, client), timeout=60, what="every event delivered")
    page = page_by_key(sim, "k")  # exactly one page, though the create was applied and answered badly
    assert property_value(page, "Price") == 7
    assert texts(sim.children(page["id"])) == ["filled"]
    assert [b["n"] for b in hook.bodies()] == list(range(5))
    assert sc.journal_count("dead_letters") == 0
    assert metric(sc, "sidecar_delivery_retries_total", lane="notion", reason=reason) == 1
    assert sc.stop() == 0


def test_a_redirect_is_never_followed_and_dead_letters_by_name(
        short_tmp: Path, notion_sim: NotionSimulator, hook: WebhookReceiver) -> None:
    sim, db = notion_sim, notion_sim.database_id
    with WebhookReceiver() as elsewhere:
        sc = start(short_tmp, sim, hook)
        with Client(sc.endpoint, strict=True) as client:
            client.emit("notion.page.create", create_body(db, "k"), key="k")
        wait_until(lambda: drained(sc, client), timeout=20, what="the create")
        sim.inject(Fault(status=307, headers={"Location": elsewhere.url + "/v1/pages/x"}, method="PATCH",
                         path_prefix="/v1/pages"))
        with Client(sc.endpoint, strict=True) as client:
            client.emit("notion.page.update", {"properties": {"Price": {"number": 1}}}, ref="k")
            client.emit("webhook.post", {"n": 0}, ref="alerts")
        wait_until(lambda: sc.journal_count("dead_letters") == 1, timeout=20, what="the redirected update")
        with Client(sc.endpoint, strict=True) as client:
            client.emit("notion.page.update", {"properties": {"Price": {"number": 2}}}, ref="k")
        wait_until(lambda: drained(sc, client), timeout=20, what="the next update")
        assert elsewhere.requests == []
    assert sc.query("SELECT kind, reason, status FROM dead_letters") == [("notion.page.update", "redirect", 307)]
    assert property_value(page_by_key(sim, "k"), "Price") == 2
    assert hook.bodies() == [{"n": 0}]
    assert sc.stop() == 0


def test_naver_broken_token_and_update_answers_end_in_exact_prices(short_tmp: Path, hook: WebhookReceiver) -> None:
    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        for no in (1001, 1002):
            sim.add_product(no, sale_price=100, stock=0)
        sim.inject(Fault(when="after", cut=True, method="POST", path_prefix="/external/v1/oauth2/token"))
        sim.inject(Fault(when="after", status=200, raw="not json", method="PATCH", path_prefix="/external/v1/products"))
        sim.inject(Fault(when="after", drip=0.1, method="PATCH", path_prefix="/external/v1/products"))
        cfg = sidecar_config(short_tmp, naver={"base_url": sim.url + "/external", "rate_per_second": 20.0,
                                               "burst": 2.0, "timeout": 2.0},
                             webhooks={"alerts": {"url": hook.url + "/alerts", "rate_per_second": 50.0,
                                                  "burst": 10.0, "timeout": 2.0}})
        sc = SidecarProcess(short_tmp, config=cfg, env={"NAVER_CLIENT_ID": sim.client_id,
                                                        "NAVER_CLIENT_SECRET": sim.client_secret}).start()
        with Client(sc.endpoint, strict=True) as client:
            for n in range(200):
                client.emit("naver.product.update", {"originProductNo": 1001 + n % 2, "salePrice": 1000 + n,
                                                     "stockQuantity": n})
            client.emit("webhook.post", {"n": 0}, ref="alerts")
        wait_until(lambda: drained(sc, client), timeout=60, what="every update delivered")
        assert (sim.product(1001)["salePrice"], sim.product(1001)["stockQuantity"]) == (1198, 198)
        assert (sim.product(1002)["salePrice"], sim.product(1002)["stockQuantity"]) == (1199, 199)
        assert hook.bodies() == [{"n": 0}]
        assert sc.journal_count("dead_letters") == 0
        for reason in ("transport_error", "bad_response", "deadline"):
            assert metric(sc, "sidecar_delivery_retries_total", lane="naver", reason=reason) == 1, reason
        assert sim.client_secret not in sc.log_text()
        assert sc.stop() == 0


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_s3() as s3:
        yield s3


def test_s3_puts_survive_drip_huge_and_cut_answers(short_tmp: Path, moto: MotoS3) -> None:
    with S3FaultProxy(moto.endpoint) as proxy:
        for fault in (Fault(when="after", drip=0.1, method="PUT"), Fault(when="after", huge=12 * 2**20, method="PUT"),
                      Fault(when="after", cut=True, method="PUT"),
                      # S3's 200 to a PUT is not read: a body that is not XML changes nothing.
                      Fault(when="after", status=200, raw="<notxml", method="PUT")):
            proxy.inject(fault)
        sc = s3_sidecar(short_tmp, proxy, moto)
        sc.stop()
        sc.config["s3"]["timeout"] = 2.0  # the drip must give up in seconds, not S3's default minute
        sc.start()
        bodies = {f"fault/{n}.bin": os.urandom(1000 + n) for n in range(6)}
        with Client(sc.endpoint, strict=True) as client:
            for key, body in bodies.items():
                client.emit("s3.put", put(moto.bucket, key), blob=body)
        wait_until(lambda: drained(sc, client), timeout=60, what="6 puts through 4 broken answers")
        for key, body in bodies.items():
            assert moto.read(key)[0] == body
        # A PUT is idempotent: S3 answered 200 but we could not read it all, so it went again.
        assert proxy.count("PUT") == 6 + 3
        for reason in ("deadline", "response_too_large", "transport_error"):
            assert metric(sc, "sidecar_delivery_retries_total", lane="s3", reason=reason) == 1, reason
        assert sc.journal_count("dead_letters") == 0
        assert sc.stop() == 0


def test_body_faults_are_set_over_the_control_api_and_misbehave_on_the_wire(hook: WebhookReceiver) -> None:
    def fault(**fields: Any) -> None:
        assert httpx.post(hook.url + "/_sim/faults", json=fields).status_code == 200

    with httpx.Client(base_url=hook.url, timeout=httpx.Timeout(1.0)) as http:
        fault(when="after", status=200, raw="<html>ok</html>")
        assert http.post("/a", json={"n": 1}).text == "<html>ok</html>"
        fault(when="after", huge=3_000_000)
        answer = http.post("/a", json={"n": 2})
        assert len(answer.content) == 3_000_000 and answer.json() == {"ok": True}
        fault(when="after", cut=True)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # half a body, then RST
            http.post("/a", json={"n": 3})
        fault(status=307, headers={"Location": "http://127.0.0.1:9/x"})
        assert http.post("/a", json={"n": 4}).headers["Location"] == "http://127.0.0.1:9/x"
        fault(when="after", drip=0.05)
        # Bytes keep coming, so a per-read timeout (1 s) never fires: only a deadline ends it.
        with http.stream("POST", "/a", json={"n": 5}) as dripping:
            received = b""
            for chunk in dripping.iter_raw():
                received += chunk
                if len(received) > 40:
                    break
        assert received.startswith(b'{"ok":true}') and received.endswith(b" ")
    assert [b["n"] for b in hook.bodies()] == [1, 2, 3, 5]  # applied first, except the redirect's
    with pytest.raises(ValueError, match="needs a status"):
        Fault(drip=0.1)


def test_an_answer_over_the_cap_is_refused_whether_or_not_it_declares_its_length() -> None:
    import asyncio

    from sidecar.connectors.http_calls import RESPONSE_TOO_LARGE, request
    from sidecar.errors import Retryable

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readuntil(b"\r\n\r\n")).split()[1]
        if path == b"/declared":  # says 2 MiB, then sends nothing: refused from the header alone
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(10)
        else:  # chunked, no length: refused once the bytes read pass the cap
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(32):
                writer.write(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        writer.close()

    async def main() -> list[str]:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reasons = []
        async with server, httpx.AsyncClient(timeout=5.0) as client:
            for path in ("/declared", "/chunked"):
                with pytest.raises(Retryable) as refused:
                    await request(client, "GET", f"http://127.0.0.1:{port}{path}", max_bytes=1 << 20)
                reasons.append(refused.value.reason)
                assert refused.value.ambiguous and "over 1048576 bytes" in str(refused.value)
        return reasons

    assert asyncio.run(main()) == [RESPONSE_TOO_LARGE] * 2


def test_each_refusal_maps_to_one_error_that_carries_only_its_own_fields() -> None:
    from sidecar.connectors.http_calls import json_code, raise_for_status
    from sidecar.errors import DeliveryError, Permanent, RateLimited, Retryable
    from sidecar.quota import ApiQuota

    told = ApiQuota(rate=1.0, burst=1.0, remaining=0.0)

    def refused(status: int, headers: dict[str, str]) -> DeliveryError:
        answer = httpx.Response(status, headers=headers, json={"code": "slow_down"})
        with pytest.raises(DeliveryError) as failed:
            raise_for_status(answer, code_of=json_code, told_of=lambda r: told)
        return failed.value

    limited = refused(429, {"Retry-After": "2"})
    assert type(limited) is RateLimited and limited.status == 429
    assert (limited.retry_after, limited.limit_reason, limited.told) == (2.0, "slow_down", told)
    busy = refused(503, {})
    assert type(busy) is Retryable and busy.ambiguous and busy.retry_after is None
    assert not hasattr(busy, "told") and not hasattr(busy, "limit_reason")  # only a rate limit has them
    gone = refused(404, {"Retry-After": "2"})
    assert type(gone) is Permanent and gone.detail == "slow_down"
    assert not hasattr(gone, "retry_after") and not hasattr(gone, "told")  # nothing to wait for
