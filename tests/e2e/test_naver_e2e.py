"""Naver end to end: client -> sidecar process -> Naver simulator (plans without network: test_naver.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from client import Client, wire
from sidecar.connectors.naver import image_urls
from standins.base import Fault
from standins.naver import IMAGE_UPLOAD_PATH, MULTI_UPDATE_PATH, TOKEN_PATH, NaverSimulator

from ..support import SidecarProcess, drained, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)

UPDATE = "naver.product.update"
IMAGES = "naver.images.upload"
PNG = b"\x89PNG\r\n\x1a\n"
JPG = b"\xff\xd8\xff\xe0"
GIF = b"GIF89a"
NO_CREDENTIALS = {"NAVER_CLIENT_ID": "", "NAVER_CLIENT_SECRET": ""}


def naver_config(tmp: Path, sim: NaverSimulator, **naver: Any) -> dict[str, Any]:
    return sidecar_config(tmp, naver={"base_url": sim.url + "/external", "rate_per_second": 20.0, "burst": 2.0,
                                      "timeout": 2.0, **naver})


def credentials(sim: NaverSimulator) -> dict[str, str]:
    return {"NAVER_CLIENT_ID": sim.client_id, "NAVER_CLIENT_SECRET": sim.client_secret}


def calls(sim: NaverSimulator, path: str, status: int | None = None) -> int:
    return sum(1 for r in sim.requests if r.path == path and (status is None or r.status == status))


def dead_letters(sc: SidecarProcess) -> list[tuple[Any, ...]]:
    return sc.query("SELECT kind, reason, status, detail FROM dead_letters ORDER BY id")


def test_thousands_of_updates_coalesce_into_few_calls_despite_faults(short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=50, burst=50, max_items_per_call=3) as sim:
        products = list(range(1001, 1009))
        for no in products:
            sim.add_product(no, sale_price=500, stock=0)
        # Refused, applied-then-failed (resent: absolute values, same end state), and a reset.
        sim.inject(Fault(status=503, path_prefix=MULTI_UPDATE_PATH, count=2))
        sim.inject(Fault(when="after", status=500, path_prefix=MULTI_UPDATE_PATH, count=1))
        sim.inject(Fault(reset=True, path_prefix=MULTI_UPDATE_PATH, count=1))
        sc = SidecarProcess(short_tmp, config=naver_config(short_tmp, sim, rate_per_second=4.0, burst=1.0,
                                                           max_products_per_request=3),
                            env=credentials(sim)).start()
        expected = {no: {"salePrice": 500, "stockQuantity": 0, "statusType": "SALE"} for no in products}
        with Client(sc.endpoint, strict=True) as client:
            for n in range(3000):
                no = products[n % len(products)]
                update: dict[str, Any] = {"stockQuantity": n % 97}
                if n % 3 == 0:
                    update["salePrice"] = 1000 + n
                if n % 11 == 0:
                    update["statusType"] = "SUSPENSION" if n % 2 else "SALE"
                assert client.emit(UPDATE, {"originProductNo": no, **update})
                expected[no].update(update)
        wait_until(lambda: drained(sc, client), timeout=60, what="the journal to drain")
        assert sc.stop() == 0
        assert dead_letters(sc) == []  # a call over the simulator's 3 items would have died with 400
        assert sc.journal_count("rejects") == 0
        assert sim.pending_faults == []
        for no in products:
            state = sim.product(no)
            assert {k: state[k] for k in expected[no]} == expected[no], no
        answered = calls(sim, MULTI_UPDATE_PATH, 200)
        applied = sum(sim.product(no)["updates"] for no in products)
        assert answered < 3000 / 50, answered  # coalesced: a few calls for thousands of events
        assert applied > answered  # several products per call
        assert sim.token_issues == 1 and sim.token_requests == 1  # one token for every call


def test_missing_product_dies_alone_and_token_is_reused_then_renewed(short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        for no in (1001, 1002, 1003):
            sim.add_product(no, sale_price=500, stock=5)
        cfg = naver_config(short_tmp, sim)
        # Without credentials the lane is paused: the events wait in the journal,
        # so the next start finds them all together and sends one call.
        paused = SidecarProcess(short_tmp, config=cfg, env=NO_CREDENTIALS).start()
        with Client(paused.endpoint, strict=True) as client:
            client.emit(UPDATE, {"originProductNo": 1001, "salePrice": 1200})
            client.emit(UPDATE, {"originProductNo": 9999, "stockQuantity": 3})
            client.emit(UPDATE, {"originProductNo": 1002, "stockQuantity": 0, "statusType": "SUSPENSION"})
            client.emit(UPDATE, {"originProductNo": 9999, "salePrice": 700})
            client.emit(UPDATE, {"originProductNo": 1003, "salePrice": 900})
            client.emit(UPDATE, {"originProductNo": 1001, "stockQuantity": 8})
        wait_until(lambda: paused.journal_count("events") == 6, timeout=20, what="6 journaled events")
        assert paused.stop() == 0
        assert "no Naver credentials" in paused.log_text()
        assert sim.requests == []

        sc = SidecarProcess(short_tmp, config=cfg, env=credentials(sim)).start()
        wait_until(lambda: sc.journal_count("events") == 0, timeout=20, what="the queued updates")
        # One unknown product refuses the whole call (404): the halves [1001, 9999] (404 again, so
        # 1001 alone, then 9999 alone) and [1002, 1003] go on their own.
        assert [r.status for r in sim.requests if r.path == MULTI_UPDATE_PATH] == [404, 404, 200, 404, 200]
        rows = dead_letters(sc)
        assert [(kind, reason, status) for kind, reason, status, _ in rows] == [(UPDATE, "product_refused", None)] * 2
        assert all("NOT_FOUND" in detail and "9999" in detail for *_, detail in rows)
        frames = sc.query("SELECT frame FROM dead_letters ORDER BY id")
        assert [wire.decode(frame).payload["originProductNo"] for (frame,) in frames] == [9999, 9999]
        assert (sim.product(1001)["salePrice"], sim.product(1001)["stockQuantity"]) == (1200, 8)
        assert (sim.product(1002)["stockQuantity"], sim.product(1002)["statusType"]) == (0, "SUSPENSION")
        assert sim.product(1003)["salePrice"] == 900
        assert (sim.token_issues, sim.token_requests) == (1, 1)

        with Client(sc.endpoint, strict=True) as client:
            client.emit(UPDATE, {"originProductNo": 1001, "salePrice": 1300})
            wait_until(lambda: drained(sc, client) and sim.product(1001)["salePrice"] == 1300, timeout=20,
                       what="an update with the cached token")
            assert (sim.token_issues, sim.token_requests) == (1, 1)
            sim.expire_token()
            client.emit(UPDATE, {"originProductNo": 1002, "salePrice": 1400})
            wait_until(lambda: drained(sc, client) and sim.product(1002)["salePrice"] == 1400, timeout=20,
                       what="an update after the token expired")
        assert (sim.token_issues, sim.token_requests) == (2, 2)
        assert calls(sim, MULTI_UPDATE_PATH, 401) == 1
        assert len(dead_letters(sc)) == 2
        assert sc.stop() == 0


def test_one_missing_product_among_50_dies_alone_with_navers_message_and_the_49_are_applied(
        short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        products = list(range(5001, 5051))
        missing = 5031
        for no in products:
            if no != missing:
                sim.add_product(no, sale_price=100, stock=0)
        cfg = naver_config(short_tmp, sim, rate_per_second=10.0, burst=2.0, max_products_per_request=50)
        # Paused first, so that the 50 updates wait together and go out as one call.
        paused = SidecarProcess(short_tmp, config=cfg, env=NO_CREDENTIALS).start()
        with Client(paused.endpoint, strict=True) as client:
            for no in products:
                client.emit(UPDATE, {"originProductNo": no, "salePrice": no, "stockQuantity": no % 7})
        wait_until(lambda: paused.journal_count("events") == 50, timeout=20, what="50 journaled updates")
        assert paused.stop() == 0
        sc = SidecarProcess(short_tmp, config=cfg, env=credentials(sim)).start()
        wait_until(lambda: sc.journal_count("events") == 0, timeout=60, what="the split to settle every update")
        scrape = sc.get("/metrics")[1].decode()
        assert sc.stop() == 0
        rows = dead_letters(sc)
        assert [(kind, reason, status) for kind, reason, status, _ in rows] == [(UPDATE, "product_refused", None)]
        answer = orjson.loads(rows[0][3])  # Naver's answer to that product alone
        assert answer["code"] == "NOT_FOUND" and str(missing) in answer["message"]
        (frame,) = sc.query("SELECT frame FROM dead_letters")[0]
        assert wire.decode(frame).payload["originProductNo"] == missing
        applied = sim.products()
        assert [(p["originProductNo"], p["salePrice"], p["stockQuantity"]) for p in applied] == \
            [(no, no, no % 7) for no in products if no != missing]
        assert all(p["updates"] >= 1 for p in applied)  # a part resent after a 429 is applied again: same values
        statuses = [r.status for r in sim.requests if r.path == MULTI_UPDATE_PATH]
        assert statuses[0] == 404 and statuses.count(404) >= 6  # halved down to the product alone
        assert 'sidecar_events_delivered_total{kind="naver.product.update"} 49.0' in scrape


def test_a_308_on_the_token_and_the_update_endpoint_is_followed(short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        sim.add_product(6001, stock=0)
        new_token, new_update = "/external/v2/oauth2/token", "/external/v2/products/origin-products/multi-update"
        sim.move(TOKEN_PATH, new_token)
        sim.move(MULTI_UPDATE_PATH, new_update)
        sc = SidecarProcess(short_tmp, config=naver_config(short_tmp, sim), env=credentials(sim)).start()
        with Client(sc.endpoint, strict=True) as client:
            client.emit(UPDATE, {"originProductNo": 6001, "stockQuantity": 1})
            wait_until(lambda: drained(sc, client) and sim.product(6001)["stockQuantity"] == 1, timeout=20,
                       what="the first update, through both moves")
            client.emit(UPDATE, {"originProductNo": 6001, "stockQuantity": 2})
            wait_until(lambda: drained(sc, client) and sim.product(6001)["stockQuantity"] == 2, timeout=20,
                       what="the second update, straight to the new place")
        log = sc.log_text()
        assert sc.stop() == 0
        assert dead_letters(sc) == []
        assert [(r.path, r.status) for r in sim.requests] == [
            (TOKEN_PATH, 308), (new_token, 200), (MULTI_UPDATE_PATH, 308), (new_update, 200), (new_update, 200)]
        assert log.count("(308 PERMANENT_REDIRECT)") == 2


def test_rate_limited_calls_are_resent_with_no_loss(short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=4, burst=1, send_retry_after=True) as sim:
        products = list(range(2001, 2021))
        for no in products:
            sim.add_product(no)
        # The lane adopts the gateway's headers at once, so the 429s come from faults (no headers).
        sim.inject(Fault(status=429, path_prefix=MULTI_UPDATE_PATH, count=2))
        sc = SidecarProcess(short_tmp, config=naver_config(short_tmp, sim, rate_per_second=15.0, burst=3.0,
                                                           max_products_per_request=2),
                            env=credentials(sim)).start()
        with Client(sc.endpoint, strict=True) as client:
            for no in products:
                client.emit(UPDATE, {"originProductNo": no, "stockQuantity": no % 100, "salePrice": no})
        wait_until(lambda: drained(sc, client), timeout=60, what="every product updated")
        scrape = sc.get("/metrics")[1].decode()
        assert sc.stop() == 0
        assert sim.stats()["rate_limited"] >= 2
        assert 'sidecar_rate_limited_total{lane="naver",reason="GW.RATE_LIMIT"} 2.0' in scrape
        assert dead_letters(sc) == []
        assert [(p["stockQuantity"], p["salePrice"]) for p in sim.products()] == [(no % 100, no) for no in products]


def test_images_upload_in_one_call_and_urls_read_back(short_tmp: Path) -> None:
    with NaverSimulator(rate_per_second=50, burst=50) as sim:
        sc = SidecarProcess(short_tmp, config=naver_config(short_tmp, sim), env=credentials(sim)).start()
        images = [PNG + os.urandom(2000), JPG + os.urandom(50_000), GIF + os.urandom(10)]
        sim.inject(Fault(status=502, path_prefix=IMAGE_UPLOAD_PATH, count=1))
        with Client(sc.endpoint, strict=True) as client:
            client.emit(IMAGES, {}, key="too-many", blob=[PNG + bytes([n]) for n in range(11)])
            client.emit(IMAGES, {}, key="not-images", blob=[PNG, b"%PDF-1.7"])
            client.emit(IMAGES, {}, key="sku-1", blob=images)
            client.emit(IMAGES, {}, key="sku-1", blob=images)  # same key: uploaded once
        wait_until(lambda: drained(sc, client), timeout=20, what="the uploads")
        late = image_urls(short_tmp / "journal", "sku-1")
        assert sc.stop() == 0
        rejects = sc.query("SELECT reason, detail FROM rejects ORDER BY id")
        assert [r for r, _ in rejects] == ["bad_payload", "bad_payload"]
        assert "11 images" in rejects[0][1] and "not a JPG" in rejects[1][1]
        assert calls(sim, IMAGE_UPLOAD_PATH, 200) == 1 and sim.pending_faults == []
        stored = sim.images()
        assert [image["bytes"] for image in stored] == images
        assert late == image_urls(sc.journal_path, "sku-1") == [image["url"] for image in stored]
        assert image_urls(sc.journal_path, "too-many") is None
        assert sc.query("SELECT COUNT(*) FROM dead_letters") == [(0,)]


def test_a_learned_rate_of_1_per_second_means_no_429_and_images_of_many_keys_share_calls(short_tmp: Path) -> None:
    # The gateway says 1 request/s (burst 1) on every answer; the sidecar is configured for 2.
    with NaverSimulator(rate_per_second=1, burst=1) as sim:
        products = list(range(3001, 3007))
        for no in products:
            sim.add_product(no)
        sc = SidecarProcess(short_tmp, config=naver_config(short_tmp, sim, rate_per_second=2.0, burst=1.0,
                                                           max_products_per_request=1),
                            env=credentials(sim)).start()
        with Client(sc.endpoint, strict=True) as client:
            # The lane is busy with product updates (one a call) when the images arrive, so they
            # wait together; an idle lane would send the first image at once, alone.
            for no in products:
                client.emit(UPDATE, {"originProductNo": no, "stockQuantity": 1})
            for n in range(25):
                client.emit(IMAGES, {}, key=f"sku-{n}", blob=[PNG + bytes([n])])
        wait_until(lambda: drained(sc, client), timeout=90, what="every upload and update")
        lane = wait_until(lambda: (lane := orjson.loads(sc.get("/status")[1])["lanes"]["naver"])["tokens"] > 0
                          and lane, timeout=5, what="a status snapshot after the last call")
        assert sc.stop() == 0
        assert sim.stats()["rate_limited"] == 0
        assert (lane["rate_per_second"], lane["rate_source"], lane["configured_rate"]) == (1.0, "learned", 2.0)
        assert calls(sim, IMAGE_UPLOAD_PATH) <= 3 and calls(sim, MULTI_UPDATE_PATH) == len(products)
        stored = {image["bytes"]: image["url"] for image in sim.images()}
        assert len(stored) == 25
        for n in range(25):  # each event's own URL under its own key
            assert image_urls(sc.journal_path, f"sku-{n}") == [stored[PNG + bytes([n])]]
        assert dead_letters(sc) == []
