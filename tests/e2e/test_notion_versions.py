"""Notion as it is today: data sources (2025-09-03), `position` (2026-03-11), request limits,
and one bad event among many never sinking the others. A real sidecar process against the
Notion stand-in over real HTTP; assertions on end state only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client import Client
from standins.base import Fault
from standins.notion import NotionSimulator, property_value

from ..support import drained, wait_until
from .test_notion_e2e import create_body, page_by_key, paragraph, start_sidecar, texts

pytestmark = pytest.mark.timeout(120)


def dead_letters(sc: Any) -> list[tuple[str, str, int, str]]:
    return sc.query("SELECT kind, reason, status, detail FROM dead_letters ORDER BY id")


def test_one_bad_append_and_one_bad_update_sink_nothing_else(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    good: list[str] = []
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "p"), key="p")
        for n in range(150):
            if n == 70:  # not text Notion takes: only the API can tell
                bad = {"type": "paragraph", "paragraph": {"rich_text": [{"type": "text", "text": {"content": 70}}]}}
                client.emit("notion.blocks.append", {"children": [bad]}, ref="p")
            else:
                client.emit("notion.blocks.append", {"children": [paragraph(f"line {n}")]}, ref="p")
                good.append(f"line {n}")
        for n in range(40):
            if n == 25:
                client.emit("notion.page.update", {"properties": {"Nope": {"number": 1}}}, ref="p")
            else:
                side = {"select": {"name": "BUY" if n % 2 else "SELL"}}
                client.emit("notion.page.update", {"properties": {"Price": {"number": n}, "Side": side}}, ref="p")
        client.emit("notion.page.update", {"properties": {"Note": {"rich_text": [{"text": {"content": "kept"}}]}}},
                    ref="p")
    wait_until(lambda: drained(sc, client), timeout=60, what="every event settled")
    page = page_by_key(sim, "p")
    assert texts(sim.children(page["id"])) == good  # the 149 good paragraphs, in emit order
    assert property_value(page, "Price") == 39 and property_value(page, "Side") == "BUY"
    assert property_value(page, "Note") == "kept"
    rows = dead_letters(sc)
    assert [(kind, reason, status) for kind, reason, status, _ in rows] == [
        ("notion.blocks.append", "http_400", 400), ("notion.page.update", "http_400", 400)]
    assert "should be a string" in rows[0][3] and "validation_error" in rows[0][3]  # the API's own message
    assert "Nope is not a property that exists" in rows[1][3]
    # The refused calls were combined ones (the split found the culprits), not one call per event.
    refused = [r for r in sim.requests if r.status == 400]
    assert len(refused) >= 4
    assert len(sim.requests) < 150 / 2
    assert sc.stop() == 0


def test_an_event_over_notion_limits_is_refused_alone_at_ingest(short_tmp: Path,
                                                               notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    deep = paragraph("1")
    deep["paragraph"]["children"] = [paragraph("2")]
    deep["paragraph"]["children"][0]["paragraph"]["children"] = [paragraph("3")]
    deep["paragraph"]["children"][0]["paragraph"]["children"][0]["paragraph"]["children"] = [paragraph("4")]
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "p"), key="p")
        client.emit("notion.blocks.append", {"children": [paragraph("before")]}, ref="p")
        client.emit("notion.blocks.append", {"children": [paragraph("x" * 2001)]}, ref="p")
        client.emit("notion.blocks.append", {"children": [deep]}, ref="p")
        client.emit("notion.page.update", {"properties": {"Note": {"rich_text": [{"text": {"content": "y" * 2001}}]}}},
                    ref="p")
        client.emit("notion.blocks.append", {"children": [paragraph("after")]}, ref="p")
    wait_until(lambda: drained(sc, client) and sc.journal_count("rejects") == 3, timeout=30,
               what="the good events delivered and three rejected")
    assert texts(sim.children(page_by_key(sim, "p")["id"])) == ["before", "after"]
    details = sorted(d for (r, d) in sc.query("SELECT reason, detail FROM rejects") if r == "over_limit")
    assert len(details) == 3
    assert any("2001" in d and "2000" in d for d in details) and any("nested 3 levels" in d for d in details)
    assert not [r for r in sim.requests if r.status == 400]  # nothing was sent that Notion would refuse
    assert sc.stop() == 0


def test_2025_09_03_creates_through_the_database_s_data_source(short_tmp: Path,
                                                             notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    two = sim.create_database(title="Two", properties={"Name": "title", "Idempotency Key": "rich_text"})
    second = sim.add_data_source(two, "Archive")
    sc = start_sidecar(short_tmp, sim, version="2025-09-03")
    with Client(sc.endpoint, strict=True) as client:
        for n in range(5):
            client.emit("notion.page.create", create_body(db, f"k{n}"), key=f"k{n}")
        client.emit("notion.page.create", create_body(two, "which"), key="which")
        client.emit("notion.page.create", {**create_body(two, "named"), "parent": {"data_source_id": second}},
                    key="named")
    wait_until(lambda: drained(sc, client), timeout=30, what="every create settled")
    source = sim.data_source_id(db)
    for n in range(5):
        assert page_by_key(sim, f"k{n}")["parent"]["data_source_id"] == source
    assert [r.path for r in sim.requests if r.method == "GET"] == [f"/v1/databases/{db}", f"/v1/databases/{two}"]
    assert [p["parent"]["data_source_id"] for p in sim.pages() if p["parent"]["database_id"] == two] == [second]
    [(kind, reason, _, detail)] = dead_letters(sc)
    assert (kind, reason) == ("notion.page.create", "ambiguous_database") and second in detail
    assert sc.stop() == 0


def test_2022_06_28_refuses_data_source_parents_at_ingest(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim = notion_sim
    sc = start_sidecar(short_tmp, sim, version="2022-06-28")
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", {**create_body(sim.database_id, "ds"),
                                           "parent": {"data_source_id": sim.data_source_id(sim.database_id)}}, key="ds")
        client.emit("notion.page.create", create_body(sim.database_id, "db"), key="db")
    wait_until(lambda: drained(sc, client) and sc.journal_count("rejects") == 1, timeout=20, what="the create")
    assert [p["parent"].get("database_id") for p in sim.pages()] == [sim.database_id]
    assert "2025-09-03" in sc.query("SELECT detail FROM rejects")[0][0]
    assert sc.stop() == 0


def test_2026_03_11_places_appends_with_position(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim, version="2026-03-11")
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "p"), key="p")
        client.emit("notion.blocks.append", {"children": [paragraph("a"), paragraph("c")]}, ref="p")
    wait_until(lambda: drained(sc, client), timeout=20, what="the first append")
    page_id = page_by_key(sim, "p")["id"]
    a_id = sim.children(page_id)[0]["id"]
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.blocks.append", {"children": [paragraph("b")], "after": a_id}, ref="p")
        client.emit("notion.blocks.append", {"children": [paragraph("0")], "position": {"type": "start"}}, ref="p")
        client.emit("notion.page.update", {"archived": True}, ref="p")
    wait_until(lambda: drained(sc, client), timeout=20, what="the placed appends")
    assert texts(sim.children(page_id)) == ["0", "a", "b", "c"]
    assert sim.page(page_id)["in_trash"] is True
    assert dead_letters(sc) == []
    assert sc.stop() == 0


@pytest.mark.parametrize("placed", ["end", "after"])
def test_an_unknown_append_outcome_is_checked_in_at_most_two_reads(short_tmp: Path, notion_sim: NotionSimulator,
                                                                   placed: str) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "long"), key="long")
        for n in range(3):  # 300 children: reading them all would take three calls
            client.emit("notion.blocks.append", {"children": [paragraph(f"{n}.{i}") for i in range(100)]}, ref="long")
    wait_until(lambda: drained(sc, client), timeout=30, what="300 children")
    page_id = page_by_key(sim, "long")["id"]
    anchor = sim.children(page_id)[10]["id"]
    before = len(sim.requests)
    sim.inject(Fault(when="after", status=504, method="PATCH", path_prefix="/v1/blocks", count=1))
    with Client(sc.endpoint, strict=True) as client:
        body: dict[str, Any] = {"children": [paragraph("late")]}
        if placed == "after":
            body["after"] = anchor
        client.emit("notion.blocks.append", body, ref="long")
    wait_until(lambda: drained(sc, client), timeout=30, what="the append whose answer was lost")
    children = texts(sim.children(page_id))
    assert children.count("late") == 1 and len(children) == 301
    assert children.index("late") == (11 if placed == "after" else 300)
    reads = [r for r in sim.requests[before:] if r.method == "GET"]
    assert 1 <= len(reads) <= 2
    assert sc.stop() == 0
