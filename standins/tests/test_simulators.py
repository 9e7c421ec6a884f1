"""The loopback simulators, exercised over real HTTP with httpx."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from standins.base import Fault, TokenBucket
from standins.naver import NaverSimulator, client_secret_sign
from standins.notion import NotionSimulator, property_value
from standins.webhook import WebhookReceiver

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
ERROR_KEYS = {"object", "status", "code", "message", "request_id"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


# -- helpers -----------------------------------------------------------------

def notion_http(sim: NotionSimulator, version: str | None = "2022-06-28", token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or sim.token}"}
    if version:
        headers["Notion-Version"] = version
    return httpx.Client(base_url=sim.url + "/v1", headers=headers, timeout=10)


def text(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": value}}]


def page_body(db: str, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "parent": {"database_id": db},
        "properties": {"Name": {"title": text(f"trade {key}")}, "Idempotency Key": {"rich_text": text(key)}, **extra},
    }


def paragraph(content: str = "x", children: list[Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "paragraph", "paragraph": {"rich_text": text(content)}}
    if children is not None:
        block["paragraph"]["children"] = children
    return block


def assert_notion_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert response.status_code == status, body
    assert set(body) - {"additional_data"} == ERROR_KEYS  # Notion's optional extra
    assert (body["object"], body["status"], body["code"]) == ("error", status, code)
    return body


def naver_token_form(sim: NaverSimulator, timestamp: int | None = None, sign: str | None = None) -> dict[str, Any]:
    ts = timestamp if timestamp is not None else int(time.time() * 1000)
    return {
        "client_id": sim.client_id, "timestamp": str(ts), "grant_type": "client_credentials", "type": "SELF",
        "client_secret_sign": sign or client_secret_sign(sim.client_id, sim.client_secret, ts),
    }


def naver_http(sim: NaverSimulator) -> httpx.Client:
    """A client already holding a valid bearer token."""
    token = httpx.post(sim.url + "/external/v1/oauth2/token", data=naver_token_form(sim)).json()["access_token"]
    return httpx.Client(base_url=sim.url + "/external/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def stock_item(no: int, quantity: int) -> dict[str, Any]:
    return {"originProductNo": no, "multiUpdateTypes": ["STOCK"], "stockQuantity": quantity}


@pytest.fixture
def notion() -> Iterator[tuple[NotionSimulator, str, httpx.Client]]:
    with NotionSimulator(rate_per_second=None) as sim:
        db = sim.create_database()
        with notion_http(sim) as client:
            yield sim, db, client


@pytest.fixture
def naver() -> Iterator[tuple[NaverSimulator, httpx.Client]]:
    with NaverSimulator(rate_per_second=None, max_items_per_call=3) as sim:
        sim.add_product(1001, sale_price=15000, stock=7)
        sim.add_product(1002, sale_price=9000, stock=1)
        with naver_http(sim) as client:
            yield sim, client


# -- base --------------------------------------------------------------------

def test_token_bucket_with_fake_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0])
    assert [bucket.take(), bucket.take()] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.take() == 0.0
    now[0] = 100.0
    assert bucket.remaining == 2.0


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault()
    with pytest.raises(ValueError):
        Fault(status=500, reset=True)
    with pytest.raises(ValueError):
        Fault.from_dict({"status": 500, "bogus": 1})


def test_stop_cuts_keep_alive_connections(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    assert client.post("/pages", json=page_body(db, "k")).status_code == 200
    sim.stop()
    with pytest.raises(httpx.TransportError):
        client.post("/pages", json=page_body(db, "k2"))
    assert len(sim.pages()) == 1


def test_control_api_faults_stats_state_reset(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    fault = {"status": 503, "code": "service_unavailable", "method": "POST", "path_prefix": "/v1/pages", "count": 2}
    assert httpx.post(sim.url + "/_sim/faults", json=fault).status_code == 200
    assert httpx.post(sim.url + "/_sim/faults", json={"nope": 1}).status_code == 400
    assert client.get("/pages/" + "0" * 32).status_code == 404  # GET is not hit
    for _ in range(2):
        assert_notion_error(client.post("/pages", json=page_body(db, "k")), 503, "service_unavailable")
    assert client.post("/pages", json=page_body(db, "k")).status_code == 200
    stats = httpx.get(sim.url + "/_sim/stats").json()
    assert stats["requests"] == 4 and stats["by_status"] == {"404": 1, "503": 2, "200": 1}
    assert stats["rate_limited"] == 0 and 1 <= stats["max_in_1s"] <= 4
    state = httpx.get(sim.url + "/_sim/state").json()
    assert [p["id"] for p in state["pages"]] == [p["id"] for p in sim.pages()]
    created = httpx.post(sim.url + "/_sim/databases", json={"title": "Other", "properties": {"T": "title"}}).json()
    assert sim.data_source_id(created["database_id"]) == created["data_source_id"]
    sim.inject(Fault(status=500))
    assert httpx.post(sim.url + "/_sim/reset").status_code == 200
    assert sim.requests == [] and sim.pending_faults == []
    assert len(sim.pages()) == 1  # data survives a reset


# -- Notion ------------------------------------------------------------------

def test_notion_auth_and_version_headers(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, _ = notion
    with notion_http(sim, token="wrong") as bad:
        assert_notion_error(bad.post("/pages", json=page_body(db, "k")), 401, "unauthorized")
    assert_notion_error(httpx.post(sim.url + "/v1/pages", json={}), 401, "unauthorized")
    with notion_http(sim, version=None) as unversioned:
        assert_notion_error(unversioned.post("/pages", json=page_body(db, "k")), 400, "missing_version")
    with notion_http(sim, version="2019-01-01") as old:
        assert_notion_error(old.post("/pages", json=page_body(db, "k")), 400, "validation_error")
    assert sim.pages() == []


def test_notion_request_errors(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    _, _, client = notion
    assert_notion_error(client.post("/pages", content=b"{not json"), 400, "invalid_json")
    assert_notion_error(client.get("/users/me"), 400, "invalid_request_url")
    assert_notion_error(client.get("/pages/" + "1" * 32), 404, "object_not_found")
    assert_notion_error(client.post("/pages", json=page_body("2" * 32, "k")), 404, "object_not_found")
    missing_block = client.patch("/blocks/" + "3" * 32 + "/children", json={"children": []})
    assert_notion_error(missing_block, 404, "object_not_found")
    assert_notion_error(client.get("/pages/not-a-uuid"), 400, "validation_error")


@pytest.mark.parametrize("case, message", [
    ("long_text", "2000"), ("long_array", "100"), ("big_body", "500000"),
    ("too_deep", "nested"), ("too_many_blocks", "1000"), ("long_link", "2000"),
])
def test_notion_size_limits(notion: tuple[NotionSimulator, str, httpx.Client], case: str, message: str) -> None:
    sim, db, client = notion
    body = page_body(db, "k")
    if case == "long_text":
        body["properties"]["Idempotency Key"] = {"rich_text": text("x" * 2001)}
    elif case == "long_array":
        body["children"] = [paragraph() for _ in range(101)]
    elif case == "big_body":
        body["children"] = [paragraph("z" * 2000, [paragraph("w" * 2000)]) for _ in range(100)]
        body["properties"]["Symbol"] = {"rich_text": text("y" * 2000) * 100}
    elif case == "too_deep":
        body["children"] = [paragraph("a", [paragraph("b", [paragraph("c", [paragraph("d")])])])]
    elif case == "too_many_blocks":
        body["children"] = [paragraph("p", [paragraph("c") for _ in range(100)]) for _ in range(10)]
    elif case == "long_link":
        body["properties"]["Symbol"] = {"rich_text": [{"text": {"content": "a", "link": {"url": "h" * 2001}}}]}
    body_error = assert_notion_error(client.post("/pages", json=body), 400, "validation_error")
    assert message in body_error["message"]
    assert sim.pages() == []


def test_notion_two_levels_of_nesting_are_accepted(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    page = client.post("/pages", json=page_body(db, "k")).json()
    nested = [paragraph("a", [paragraph("b", [paragraph("c")])])]
    answer = client.patch(f"/blocks/{page['id']}/children", json={"children": nested})
    assert answer.status_code == 200, answer.text
    top = answer.json()["results"][0]
    child = sim.children(top["id"])[0]
    assert child["paragraph"]["rich_text"][0]["plain_text"] == "b"
    assert [b["paragraph"]["rich_text"][0]["plain_text"] for b in sim.children(child["id"])] == ["c"]


def test_notion_property_schema_and_types(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    _, db, client = notion
    unknown = page_body(db, "k", Colour={"rich_text": text("red")})
    assert "Colour" in assert_notion_error(client.post("/pages", json=unknown), 400, "validation_error")["message"]
    for wrong in ({"Price": {"number": "12"}}, {"Side": {"select": "BUY"}}, {"Filled": {"checkbox": 1}},
                  {"Time": {"date": {"start": "yesterday"}}}, {"Price": {"rich_text": text("1")}}):
        assert_notion_error(client.post("/pages", json=page_body(db, "k", **wrong)), 400, "validation_error")
    good = page_body(db, "k", Price={"number": 101.5}, Side={"select": {"name": "BUY"}},
                     Tags={"multi_select": [{"name": "a"}, {"name": "b"}]}, Filled={"checkbox": True},
                     Time={"date": {"start": "2025-01-02T03:04:05Z"}}, Link={"url": "https://x.test"})
    page = client.post("/pages", json=good).json()
    values = {name: property_value(page, name) for name in page["properties"]}
    assert values == {"Name": "trade k", "Idempotency Key": "k", "Symbol": "", "Side": "BUY", "Price": 101.5,
                      "Quantity": None, "Tags": ["a", "b"], "Filled": True, "Time": "2025-01-02T03:04:05Z",
                      "Link": "https://x.test"}
    assert page["object"] == "page" and len(page["id"]) == 36 and page["id"].count("-") == 4
    assert {"created_time", "last_edited_time", "parent", "archived", "in_trash", "url"} <= set(page)


def test_notion_update_merges_and_archives(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    page = client.post("/pages", json=page_body(db, "k", Price={"number": 1})).json()
    updated = client.patch(f"/pages/{page['id']}", json={"properties": {"Price": {"number": 2}},
                                                         "icon": {"type": "emoji", "emoji": "📈"}}).json()
    assert property_value(updated, "Price") == 2 and property_value(updated, "Idempotency Key") == "k"
    assert sim.page(page["id"])["icon"] == {"type": "emoji", "emoji": "📈"}
    assert client.patch(f"/pages/{page['id']}", json={"archived": True}).json()["archived"] is True
    edit = client.patch(f"/pages/{page['id']}", json={"properties": {"Price": {"number": 3}}})
    assert "archived" in assert_notion_error(edit, 400, "validation_error")["message"]
    assert sim.pages_with_property(db, "Idempotency Key", "k") == []
    assert len(sim.pages_with_property(db, "Idempotency Key", "k", include_archived=True)) == 1
    restored = client.patch(f"/pages/{page['id']}", json={"in_trash": False, "properties": {"Price": {"number": 3}}})
    assert property_value(restored.json(), "Price") == 3


def test_notion_append_children_in_order(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    page = client.post("/pages", json={**page_body(db, "k"), "children": [paragraph("first")]}).json()
    answer = client.patch(f"/blocks/{page['id'].replace('-', '')}/children",
                          json={"children": [paragraph("second"), paragraph("third")]}).json()
    assert answer["object"] == "list" and all(b["id"] for b in answer["results"])
    client.patch(f"/blocks/{page['id']}/children",
                 json={"children": [paragraph("after first")], "after": sim.children(page["id"])[0]["id"]})
    at_start = {"children": [paragraph("zero")], "position": {"type": "start"}}
    client.patch(f"/blocks/{page['id']}/children", json=at_start)
    contents = [b["paragraph"]["rich_text"][0]["plain_text"] for b in sim.children(page["id"])]
    assert contents == ["zero", "first", "after first", "second", "third"]
    listed = client.get(f"/blocks/{page['id']}/children", params={"page_size": 3}).json()
    rest = client.get(f"/blocks/{page['id']}/children", params={"start_cursor": listed["next_cursor"]}).json()
    assert [b["id"] for b in listed["results"] + rest["results"]] == [b["id"] for b in sim.children(page["id"])]
    assert listed["has_more"] is True and rest["has_more"] is False


def test_notion_query_by_idempotency_key_and_pages(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    for key in ["a", "b", "a", "a", "c"]:
        client.post("/pages", json=page_body(db, key))
    query = {"filter": {"property": "Idempotency Key", "rich_text": {"equals": "a"}}, "page_size": 2}
    first = client.post(f"/databases/{db}/query", json=query).json()
    assert first["object"] == "list" and len(first["results"]) == 2 and first["has_more"] is True
    second = client.post(f"/databases/{db}/query", json={**query, "start_cursor": first["next_cursor"]}).json()
    assert len(second["results"]) == 1 and second["has_more"] is False and second["next_cursor"] is None
    assert {property_value(p, "Idempotency Key") for p in first["results"] + second["results"]} == {"a"}
    by_title = {"filter": {"property": "Name", "title": {"equals": "trade c"}}}
    assert len(client.post(f"/databases/{db}/query", json=by_title).json()["results"]) == 1
    assert_notion_error(client.post(f"/databases/{db}/query", json={"page_size": 101}), 400, "validation_error")
    assert_notion_error(client.post(f"/databases/{db}/query",
                                    json={"filter": {"property": "Nope", "rich_text": {"equals": "a"}}}),
                        400, "validation_error")
    assert len(sim.pages_with_property(db, "Idempotency Key", "a")) == 3


def test_notion_2025_data_sources(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client_2022 = notion
    source = sim.data_source_id(db)
    with notion_http(sim, version="2025-09-03") as client:
        assert client.get(f"/databases/{db}").json()["data_sources"][0]["id"] == source
        page = client.post("/pages", json={**page_body(db, "k"), "parent": {"data_source_id": source}}).json()
        assert page["parent"] == {"type": "data_source_id", "data_source_id": source, "database_id": db}
        query = {"filter": {"property": "Idempotency Key", "rich_text": {"equals": "k"}}}
        found = client.post(f"/data_sources/{source}/query", json=query).json()["results"]
        assert [p["id"] for p in found] == [page["id"]]
        assert_notion_error(client.post(f"/databases/{db}/query", json=query), 400, "invalid_request_url")
    assert_notion_error(client_2022.post(f"/data_sources/{source}/query", json={}), 400, "invalid_request_url")
    old_form = client_2022.post("/pages", json={**page_body(db, "j"), "parent": {"data_source_id": source}})
    assert_notion_error(old_form, 400, "validation_error")


def test_notion_second_data_source_breaks_the_database_forms(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client_2022 = notion
    first, second = sim.data_source_id(db), sim.add_data_source(db, "Archive")
    with notion_http(sim, version="2025-09-03") as client:
        listed = client.get(f"/databases/{db}").json()["data_sources"]
        assert [s["id"] for s in listed] == [first, second] and listed[1]["name"] == "Archive"
        page = client.post("/pages", json={**page_body(db, "k"), "parent": {"data_source_id": second}}).json()
        assert page["parent"]["data_source_id"] == second
        query = {"filter": {"property": "Idempotency Key", "rich_text": {"equals": "k"}}}
        assert client.post(f"/data_sources/{first}/query", json=query).json()["results"] == []
        assert len(client.post(f"/data_sources/{second}/query", json=query).json()["results"]) == 1
        assert "data sources" in assert_notion_error(client.post("/pages", json=page_body(db, "j")), 400,
                                                     "validation_error")["message"]
    # 2022-06-28: create under the database and query it fail once it has two data sources.
    assert_notion_error(client_2022.post("/pages", json=page_body(db, "j")), 400, "validation_error")
    assert_notion_error(client_2022.post(f"/databases/{db}/query", json={}), 400, "validation_error")


def test_notion_2026_takes_position_and_refuses_after(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, _ = notion
    with notion_http(sim, version="2026-03-11") as client:
        page_id = client.post("/pages", json=page_body(db, "k")).json()["id"]
        first = client.patch(f"/blocks/{page_id}/children", json={"children": [paragraph("a"), paragraph("c")]})
        a_id = first.json()["results"][0]["id"]
        assert "position" in assert_notion_error(client.patch(f"/blocks/{page_id}/children", json={
            "children": [paragraph("b")], "after": a_id}), 400, "validation_error")["message"]
        placed = client.patch(f"/blocks/{page_id}/children", json={
            "children": [paragraph("b")], "position": {"type": "after_block", "after_block": {"id": a_id}}})
        assert placed.status_code == 200
        client.patch(f"/blocks/{page_id}/children", json={"children": [paragraph("0")], "position": {"type": "start"}})
        client.patch(f"/blocks/{page_id}/children", json={"children": [paragraph("d")], "position": {"type": "end"}})
        assert_notion_error(client.patch(f"/pages/{page_id}", json={"archived": True}), 400, "validation_error")
    texts = ["".join(t["plain_text"] for t in b["paragraph"]["rich_text"]) for b in sim.children(page_id)]
    assert texts == ["0", "a", "b", "c", "d"]


def test_notion_one_item_over_a_limit_refuses_the_whole_request(
        notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    page_id = client.post("/pages", json=page_body(db, "k")).json()["id"]
    too_deep = paragraph("1", [paragraph("2", [paragraph("3", [paragraph("4")])])])
    for bad in (paragraph("x" * 2001), too_deep):
        answer = client.patch(f"/blocks/{page_id}/children", json={"children": [paragraph("ok"), bad]})
        assert_notion_error(answer, 400, "validation_error")
    assert sim.children(page_id) == []  # nothing of a refused request is applied


def test_notion_chaos_fails_a_share_of_requests_before_and_after_applying() -> None:
    with NotionSimulator(rate_per_second=None) as sim, notion_http(sim) as client:
        db = sim.create_database()
        sim.chaos(errors=0.2, lost=0.2)
        answers = [client.post("/pages", json=page_body(db, f"k{n}")).status_code for n in range(200)]
    assert answers.count(504) == sim.chaos_counts["lost"] == 40
    assert answers.count(500) + answers.count(503) == sim.chaos_counts["errors"] == 40
    assert len(sim.pages()) == answers.count(200) + answers.count(504)  # a 504 here was applied


def test_notion_rate_limit_answers_429_with_retry_after() -> None:
    # A near-zero refill rate makes the outcome independent of how fast the machine is.
    with NotionSimulator(rate_per_second=0.01, burst=2) as sim, notion_http(sim) as client:
        db = sim.create_database()
        answers = [client.post("/pages", json=page_body(db, str(i))) for i in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 429, 429]
        assert_notion_error(answers[2], 429, "rate_limited")
        assert answers[2].json()["additional_data"] == {"rate_limit_reason": "integration_rate_limit"}
        assert int(answers[2].headers["Retry-After"]) >= 1
        assert len(sim.pages()) == 2 and sim.stats()["rate_limited"] == 2
        assert sim.stats()["max_accepted_in_1s"] <= 2


def test_notion_fault_before_is_not_applied(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    sim.inject(Fault(status=503, code="service_unavailable", headers={"Retry-After": "2"}))
    answer = client.post("/pages", json=page_body(db, "k"))
    assert_notion_error(answer, 503, "service_unavailable")
    assert answer.headers["Retry-After"] == "2" and sim.pages() == []


def test_notion_fault_after_is_applied_but_answers_error(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    sim.inject(Fault(when="after", status=500, method="POST", path_prefix="/v1/pages"))
    assert_notion_error(client.post("/pages", json=page_body(db, "k-after")), 500, "internal_server_error")
    # The remedy the connector uses: look the key up before creating again.
    query = {"filter": {"property": "Idempotency Key", "rich_text": {"equals": "k-after"}}}
    assert len(client.post(f"/databases/{db}/query", json=query).json()["results"]) == 1


def test_notion_reset_and_stall_faults(notion: tuple[NotionSimulator, str, httpx.Client]) -> None:
    sim, db, client = notion
    sim.inject(Fault(reset=True))
    with pytest.raises(httpx.TransportError):
        client.post("/pages", json=page_body(db, "k-before"))
    sim.inject(Fault(when="after", reset=True))
    with pytest.raises(httpx.TransportError):
        client.post("/pages", json=page_body(db, "k-reset"))
    sim.inject(Fault(when="after", stall=1.0))
    with pytest.raises(httpx.ReadTimeout):
        client.post("/pages", json=page_body(db, "k-stall"), timeout=0.2)
    sim.wait_until(lambda: sim.requests[-1].status == 200, timeout=5)
    assert [property_value(p, "Idempotency Key") for p in sim.pages()] == ["k-reset", "k-stall"]
    assert [r.status for r in sim.requests] == [0, 0, 200]


def test_notion_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "standins.notion", "--port", "0", "--token", "t0k", "--rate", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        headers = {"Authorization": "Bearer t0k", "Notion-Version": "2022-06-28"}
        answer = httpx.post(f"{info['url']}/v1/databases/{info['database_id']}/query", json={}, headers=headers)
        assert answer.status_code == 200 and answer.json()["results"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# -- Naver -------------------------------------------------------------------

def test_naver_token_signature_and_reuse() -> None:
    now = [time.time()]
    with NaverSimulator(clock=lambda: now[0]) as sim, httpx.Client(base_url=sim.url + "/external/v1") as client:
        assert sim.client_secret.startswith("$2b$04$")
        ts = int(now[0] * 1000)
        first = client.post("/oauth2/token", data=naver_token_form(sim, ts))
        assert first.status_code == 200
        assert first.json()["token_type"] == "Bearer" and first.json()["expires_in"] == 10800
        again = client.post("/oauth2/token", data=naver_token_form(sim, ts)).json()
        assert again["access_token"] == first.json()["access_token"] and sim.token_issues == 1
        now[0] += 10800 - 1800 + 1  # 30 minutes or less left: a new token
        fresh = client.post("/oauth2/token", data=naver_token_form(sim, int(now[0] * 1000))).json()
        assert fresh["access_token"] != first.json()["access_token"] and sim.token_issues == 2


def test_naver_token_refusals() -> None:
    with NaverSimulator() as sim, httpx.Client(base_url=sim.url + "/external/v1") as client:
        ts = int(time.time() * 1000)
        other_secret = bcrypt.gensalt(4).decode()
        wrong_sign = client_secret_sign(sim.client_id, other_secret, ts)
        wrong = client.post("/oauth2/token", data=naver_token_form(sim, ts, wrong_sign))
        assert wrong.status_code == 401
        assert set(wrong.json()) == {"code", "message", "invalidInputs", "timestamp"}
        assert wrong.json()["invalidInputs"][0]["name"] == "client_secret_sign"
        stale = client.post("/oauth2/token", data=naver_token_form(sim, ts - 6 * 60 * 1000))
        assert stale.status_code == 400 and stale.json()["invalidInputs"][0]["name"] == "timestamp"
        form = naver_token_form(sim, ts)
        assert client.post("/oauth2/token", data={**form, "grant_type": "password"}).status_code == 400
        assert client.post("/oauth2/token", data={**form, "client_id": "other"}).status_code == 401
        assert sim.token_issues == 0


def test_naver_bearer_required_and_expiry(naver: tuple[NaverSimulator, httpx.Client]) -> None:
    sim, client = naver
    body = {"multiProductUpdateRequestVos": [stock_item(1001, 5)]}
    bare = httpx.patch(sim.url + "/external/v1/products/origin-products/multi-update", json=body)
    assert bare.status_code == 401 and bare.json()["code"] == "GW.AUTHN"
    assert set(bare.json()) == {"code", "message", "invalidInputs", "timestamp"}
    assert client.patch("/products/origin-products/multi-update", json=body).status_code == 200
    sim.expire_token()
    assert client.patch("/products/origin-products/multi-update", json=body).status_code == 401
    assert sim.product(1001)["updates"] == 1


def test_naver_multi_update_answers_as_documented(naver: tuple[NaverSimulator, httpx.Client]) -> None:
    sim, client = naver
    items = [
        {"originProductNo": 1001, "multiUpdateTypes": ["SALE_PRICE", "STOCK"],
         "productSalePrice": {"salePrice": 14000}, "stockQuantity": 3},
        stock_item(4040, 1),
        {"originProductNo": 1002, "multiUpdateTypes": ["PRODUCT_STATUS_SUSPENSION"]},
    ]
    # One unknown product refuses the whole call; nothing is applied.
    refused = client.patch("/products/origin-products/multi-update", json={"multiProductUpdateRequestVos": items})
    assert refused.status_code == 404 and refused.json()["code"] == "NOT_FOUND" and "4040" in refused.json()["message"]
    assert sim.product(1001)["updates"] == 0 and sim.product(1002)["statusType"] == "SALE"
    del items[1]
    answer = client.patch("/products/origin-products/multi-update", json={"multiProductUpdateRequestVos": items})
    assert answer.status_code == 200 and answer.json()["data"] == {} and answer.json()["code"] == "SUCCESS"
    assert (sim.product(1001)["salePrice"], sim.product(1001)["stockQuantity"]) == (14000, 3)
    assert sim.product(1002)["statusType"] == "SUSPENSION"


def test_naver_multi_update_refuses_whole_call(naver: tuple[NaverSimulator, httpx.Client]) -> None:
    sim, client = naver
    too_many = {"multiProductUpdateRequestVos": [stock_item(1001, n) for n in range(4)]}  # max_items_per_call=3
    assert client.patch("/products/origin-products/multi-update", json=too_many).status_code == 400
    malformed = {"multiProductUpdateRequestVos": [stock_item(1001, 0), stock_item(1002, -1)]}
    refused = client.patch("/products/origin-products/multi-update", json=malformed)
    assert refused.status_code == 400 and refused.json()["invalidInputs"][0]["name"].endswith("stockQuantity")
    assert sim.product(1001)["updates"] == 0 and sim.product(1001)["stockQuantity"] == 7


def test_naver_fault_after_applies_update(naver: tuple[NaverSimulator, httpx.Client]) -> None:
    sim, client = naver
    sim.inject(Fault(when="after", status=500, path_prefix="/external/v1/products"))
    body = {"multiProductUpdateRequestVos": [stock_item(1001, 2)]}
    answer = client.patch("/products/origin-products/multi-update", json=body)
    assert answer.status_code == 500 and answer.json()["code"] == "InternalServerError"
    assert sim.product(1001)["stockQuantity"] == 2


def test_naver_image_upload(naver: tuple[NaverSimulator, httpx.Client]) -> None:
    sim, client = naver
    eleven = [("imageFiles", (f"{i}.png", PNG, "image/png")) for i in range(11)]
    refused = client.post("/product-images/upload", files=eleven)
    assert refused.status_code == 400 and sim.images() == []
    not_image = client.post("/product-images/upload", files=[("imageFiles", ("a.txt", b"hello", "text/plain"))])
    assert not_image.status_code == 400
    answer = client.post("/product-images/upload", files=[("imageFiles", ("a.png", PNG, "image/png")),
                                                          ("imageFiles", ("b.jpg", JPG, "image/jpeg"))])
    assert answer.status_code == 200
    urls = [i["url"] for i in answer.json()["images"]]
    assert [(i["url"], i["bytes"]) for i in sim.images()] == [(urls[0], PNG), (urls[1], JPG)]


def test_naver_rate_limit_headers() -> None:
    with NaverSimulator(rate_per_second=0.01, burst=1) as sim, naver_http(sim) as client:
        sim.add_product(1, sale_price=1000, stock=1)
        body = {"multiProductUpdateRequestVos": [stock_item(1, 2)]}
        ok = client.patch("/products/origin-products/multi-update", json=body)
        limited = client.patch("/products/origin-products/multi-update", json=body)
        assert ok.status_code == 200 and limited.status_code == 429
        assert limited.json()["code"] == "GW.RATE_LIMIT"
        assert limited.headers["GNCP-GW-RateLimit-Replenish-Rate"] == "0.01"
        assert limited.headers["GNCP-GW-RateLimit-Burst-Capacity"] == "1"
        assert limited.headers["GNCP-GW-RateLimit-Remaining"] == "0"
        # Each API has its own bucket.
        image = client.post("/product-images/upload", files=[("imageFiles", ("a.png", PNG, "image/png"))])
        assert image.status_code == 200
        assert sim.product(1)["updates"] == 1


# -- webhook -----------------------------------------------------------------

def test_webhook_records_posts_in_order() -> None:
    with WebhookReceiver() as hook, httpx.Client(base_url=hook.url) as client:
        for i in range(3):
            assert client.post(f"/hooks/{i}", json={"seq": i}, headers={"X-Sig": f"s{i}"}).status_code == 200
        assert client.post("/hooks/x", content=b"nope").status_code == 400
        assert client.get("/hooks/x").status_code == 405
        deliveries = hook.wait_for(3)
        assert [(d.path, d.body, d.headers["x-sig"]) for d in deliveries] == [
            ("/hooks/0", {"seq": 0}, "s0"), ("/hooks/1", {"seq": 1}, "s1"), ("/hooks/2", {"seq": 2}, "s2")]


def test_webhook_faults_and_rate_limit() -> None:
    with WebhookReceiver(rate_per_second=0.01, burst=2) as hook, httpx.Client(base_url=hook.url) as client:
        hook.inject(Fault(status=503))
        hook.inject(Fault(when="after", status=500))
        assert client.post("/h", json={"n": 1}).status_code == 503
        assert client.post("/h", json={"n": 2}).status_code == 500
        assert client.post("/h", json={"n": 3}).status_code == 200
        limited = client.post("/h", json={"n": 4})
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert hook.bodies() == [{"n": 2}, {"n": 3}]
