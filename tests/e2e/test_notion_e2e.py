"""End to end: client process -> sidecar process -> Notion simulator, over real sockets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from client import Client
from standins.base import Fault
from standins.notion import NotionSimulator, property_value

from ..support import ROOT, SidecarProcess, drained, sidecar_config, wait_until

pytestmark = pytest.mark.timeout(120)


def start_sidecar(tmp: Path, sim: NotionSimulator, **notion: Any) -> SidecarProcess:
    cfg = sidecar_config(tmp, notion={"base_url": sim.url + "/v1", "rate_per_second": 25.0, "burst": 5.0,
                                      "timeout": 1.0, **notion})
    return SidecarProcess(tmp, config=cfg, env={"NOTION_TOKEN": sim.token}).start()


def create_body(db: str, name: str) -> dict[str, Any]:
    return {"parent": {"database_id": db}, "properties": {"Name": {"title": [{"text": {"content": name}}]}}}


def paragraph(text: str) -> dict[str, Any]:
    return {"object": "block", "type": "paragraph",
            "paragraph": {"rich_text": [{"type": "text", "text": {"content": text}}]}}


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    return ["".join(t["plain_text"] for t in b["paragraph"]["rich_text"]) for b in blocks]


def page_by_key(sim: NotionSimulator, key: str) -> dict[str, Any]:
    pages = sim.pages_with_property(sim.database_id, "Idempotency Key", key)
    assert len(pages) == 1, f"{len(pages)} pages carry key {key!r}"
    return pages[0]


@pytest.mark.parametrize("version", ["2022-06-28", "2025-09-03", "2026-03-11"])
def test_mixed_workload_with_faults_ends_in_exact_state(short_tmp: Path, notion_sim: NotionSimulator,
                                                        version: str) -> None:
    sim, db = notion_sim, notion_sim.database_id
    # 5% of calls fail before applying (500/503), 5% are applied and answered 504.
    sim.chaos(errors=0.05, lost=0.05)
    # Faults of every kind, each hitting a different endpoint.
    sim.inject(Fault(when="after", status=500, method="POST", path_prefix="/v1/pages", count=2))
    sim.inject(Fault(when="after", stall=2.5, method="POST", path_prefix="/v1/pages", count=1))
    sim.inject(Fault(when="after", status=504, method="PATCH", path_prefix="/v1/blocks", count=2))
    sim.inject(Fault(when="after", reset=True, method="PATCH", path_prefix="/v1/blocks", count=1))
    sim.inject(Fault(status=503, code="service_unavailable", method="PATCH", path_prefix="/v1/pages", count=3))
    sim.inject(Fault(status=409, code="conflict_error", method="PATCH", path_prefix="/v1/pages", count=1))
    sc = start_sidecar(short_tmp, sim, version=version)
    keys = [f"trade-{i}" for i in range(12)]
    expected_price: dict[str, int] = {}
    expected_children: dict[str, list[str]] = {k: [] for k in keys[:3]}
    with Client(sc.endpoint, strict=True) as client:
        for key in keys:  # every create twice: one page each, ever
            assert client.emit("notion.page.create", create_body(db, key), key=key)
            assert client.emit("notion.page.create", create_body(db, key), key=key)
        for i, key in enumerate(keys):  # a select set once, early; later updates leave it alone
            client.emit("notion.page.update", {"properties": {"Side": {"select": {"name": "BUY" if i % 2 else "SELL"}}}},
                        ref=key)
        for n in range(3000):  # thousands of updates to a few pages
            key = keys[n % 4]
            client.emit("notion.page.update", {"properties": {"Price": {"number": n}}}, ref=key)
            expected_price[key] = n
        for n in range(300):  # hundreds of appends to three parents
            key = keys[n % 3]
            client.emit("notion.blocks.append", {"children": [paragraph(f"{key} line {n}")]}, ref=key)
            expected_children[key].append(f"{key} line {n}")
    wait_until(lambda: drained(sc, client), timeout=60, what="the journal to drain")
    # A late duplicate of a delivered create is skipped too.
    with Client(sc.endpoint, strict=True) as late:
        late.emit("notion.page.create", create_body(db, "trade-0"), key="trade-0")
    wait_until(lambda: drained(sc, late), timeout=20, what="the late duplicate to settle")
    assert sc.stop() == 0

    assert len(sim.pages()) == len(keys)
    for i, key in enumerate(keys):
        page = page_by_key(sim, key)
        assert property_value(page, "Name") == key
        assert property_value(page, "Side") == ("BUY" if i % 2 else "SELL")
        assert property_value(page, "Price") == expected_price.get(key)
        assert texts(sim.children(page["id"])) == expected_children.get(key, [])
    assert sc.query("SELECT reason, status, detail FROM dead_letters LIMIT 3") == []
    assert sc.journal_count("rejects") == 0
    assert sim.chaos_counts["errors"] > 0 and sim.chaos_counts["lost"] > 0, (sim.chaos_counts, len(sim.requests))
    # Coalescing: far fewer calls than events.
    calls = len(sim.requests)
    assert calls < (len(keys) * 2 + 3000 + 300 + len(keys)) / 10, calls


def test_killed_mid_call_resumes_without_duplicates(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim, timeout=30.0)
    with Client(sc.endpoint, strict=True) as first:
        first.emit("notion.page.create", create_body(db, "k"), key="k")
    wait_until(lambda: drained(sc, first), timeout=20, what="the create")
    page_id = page_by_key(sim, "k")["id"]
    # The next append is applied but its answer never comes; kill the sidecar then.
    sim.inject(Fault(when="after", stall=30, method="PATCH", path_prefix="/v1/blocks", count=1))
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.blocks.append", {"children": [paragraph("first")]}, ref="k")
        wait_until(lambda: texts(sim.children(page_id)) == ["first"], timeout=20, what="the stalled append to apply")
        for n in range(50):
            client.emit("notion.blocks.append", {"children": [paragraph(f"more {n}")]}, ref="k")
            client.emit("notion.page.create", create_body(db, f"k{n}"), key=f"k{n}")
        wait_until(lambda: sc.journal_count("events") >= 101, timeout=20, what="the new events to be journaled")
    sc.kill()
    assert sc.journal_count("events") >= 101  # nothing delivered or lost while stalled

    sc.start()
    wait_until(lambda: drained(sc, client), timeout=60, what="the restarted sidecar to finish")
    assert sc.stop() == 0
    assert texts(sim.children(page_id)) == ["first"] + [f"more {n}" for n in range(50)]
    assert len(sim.pages()) == 51
    for n in range(50):
        page_by_key(sim, f"k{n}")


def test_create_that_fails_for_good_dead_letters_its_dependents(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim = notion_sim
    sc = start_sidecar(short_tmp, sim)
    with Client(sc.endpoint, strict=True) as client:
        # Not a database the simulator knows: 404 object_not_found, never retried.
        client.emit("notion.page.create", create_body("0" * 32, "lost"), key="lost")
        client.emit("notion.page.update", {"properties": {"Price": {"number": 1}}}, ref="lost")
        client.emit("notion.blocks.append", {"children": [paragraph("x")]}, ref="lost")
        # A property the database does not have: 400 validation_error.
        client.emit("notion.page.create", {**create_body(sim.database_id, "bad"),
                                           "properties": {"Nope": {"number": 1}}}, key="bad")
    wait_until(lambda: sc.journal_count("dead_letters") == 4, timeout=20, what="4 dead letters")
    rows = dict(sc.query("SELECT kind || ':' || COALESCE(key, ref), reason || ' ' || COALESCE(status, '') || ' ' || "
                         "COALESCE(detail, '') FROM dead_letters"))
    assert rows["notion.page.create:lost"].startswith("http_404 404")
    assert "object_not_found" in rows["notion.page.create:lost"]
    assert rows["notion.page.update:lost"].startswith("ref_failed")
    assert rows["notion.blocks.append:lost"].startswith("ref_failed")
    assert "validation_error" in rows["notion.page.create:bad"]
    assert sc.stop() == 0
    assert sim.pages() == []


def test_bad_frames_are_counted_kept_and_harmless(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 5000)
    raw.connect(sc.endpoint)
    with Client(sc.endpoint, strict=True) as client:
        garbage: list[list[bytes]] = [
            [b"\xff\xfe not json"],
            [b'{"an": "object"}'],
            [b"[1, 2, 3]"],
            [b'[2, "c", 1, "webhook.post", null, null, 0, {}]'],
            [b'[1, "c", "one", "notion.page.create", null, null, 0, {}]'],
            [b'[1, "c", 1, "no.such.kind", null, null, 0, {}]'],
            [b'[1, "c", 2, "notion.page.update", null, null, 0, []]'],
            [b'[1, "c", 3, "notion.page.create", null, null, 0, {"parent": 5}]'],
            [b"a"] * 20,
            [b'[1, "c", 4, "notion.page.update", null, null, 0, {"x": "' + b"y" * 2_000_000 + b'"}]'],
        ]
        for n, frames in enumerate(garbage):
            client.emit("notion.page.create", create_body(db, f"ok{n}"), key=f"ok{n}")
            raw.send_multipart(frames)
        client.emit("notion.page.create", create_body(db, "last"), key="last")
    raw.close()
    ctx.term()
    wait_until(lambda: sc.journal_count("rejects") == len(garbage), timeout=20, what="every bad frame rejected")
    wait_until(lambda: len(sim.pages()) == len(garbage) + 1, timeout=30, what="every good event delivered")
    reasons = sorted(r for (r,) in sc.query("SELECT reason FROM rejects"))
    assert reasons == sorted(["bad_json", "bad_envelope", "bad_envelope", "bad_version", "bad_envelope",
                              "unknown_kind", "bad_payload", "bad_payload", "bad_frames", "too_large"])
    assert sc.proc is not None and sc.proc.poll() is None
    assert sc.stop() == 0


def test_odd_but_valid_json_never_costs_other_events(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(sc.endpoint)

    def frame(seq: int, kind: str, payload: Any, key: str | None = None, emitted: int = 0) -> bytes:
        return orjson.dumps([1, "odd", seq, kind, key, None, emitted, payload])

    raw.send(frame(1, "notion.page.create", create_body(db, "odd1"), key="odd1"))
    raw.send(frame(2, "naver.product.update", {"originProductNo": 1, "statusType": []}))  # rejected
    raw.send(frame(3, "notion.page.create", create_body(db, "odd3"), key="odd3", emitted=2**64 - 1))  # rejected
    raw.send(orjson.dumps([1, "odd", 0, "_client.stats", None, None, 0, {"sent": "many", "dropped": [1]}]))
    raw.send(frame(2**64 - 1, "notion.page.create", create_body(db, "x")))  # rejected: seq out of range
    raw.send(frame(3, "notion.page.create", create_body(db, "odd3b"), key="odd3b"))
    raw.send(orjson.dumps([1, "odd", 0, "_client.bye", None, None, 0, {"sent": 3}]))
    raw.close(linger=5000)
    ctx.term()
    wait_until(lambda: len(sim.pages()) == 2 and sc.journal_count("rejects") == 3, timeout=20,
               what="the good events delivered and the odd ones rejected")
    assert sorted(r for (r,) in sc.query("SELECT reason FROM rejects")) == ["bad_envelope", "bad_envelope",
                                                                            "bad_payload"]
    # A rejected event is not a lost one: no gap for seq 2.
    assert sc.query("SELECT last_seq, gaps, closed FROM clients WHERE client_id='odd'") == [(3, 0, 1)]
    assert sc.proc is not None and sc.proc.poll() is None
    assert sc.stop() == 0


def test_a_blocked_group_never_stalls_the_lane(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    with Client(sc.endpoint, strict=True) as client:
        for n in range(700):  # waiting for a create that has not come (yet)
            client.emit("notion.page.update", {"properties": {"Price": {"number": n}}}, ref="later")
        client.emit("notion.page.create", create_body(db, "other"), key="other")
    wait_until(lambda: sim.pages_with_property(db, "Idempotency Key", "other"), timeout=15,
               what="an unrelated create behind 700 waiting updates")
    # The page exists a moment before the sidecar has settled its answer.
    wait_until(lambda: sc.journal_count("events") == 700, timeout=10, what="only the waiting updates left")
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "later"), key="later")
    wait_until(lambda: sc.journal_count("events") == 0, timeout=20, what="the waiting updates")
    assert property_value(page_by_key(sim, "later"), "Price") == 699
    assert sc.stop() == 0


def test_an_append_refused_with_429_is_sent_again_not_assumed(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", create_body(db, "hb"), key="hb")
        client.emit("notion.blocks.append", {"children": [paragraph("heartbeat ok")]}, ref="hb")
    wait_until(lambda: drained(sc, client), timeout=20, what="the first heartbeat")
    # The newer Notion answer names the limit that was hit: counted by it.
    sim.inject(Fault(status=429, headers={"Retry-After": "1"}, path_prefix="/v1/blocks", body={
        "object": "error", "status": 429, "code": "rate_limited", "message": "slow down",
        "additional_data": {"rate_limit_reason": "workspace_rate_limit"}}))
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.blocks.append", {"children": [paragraph("heartbeat ok")]}, ref="hb")
    wait_until(lambda: drained(sc, client), timeout=20, what="the second heartbeat")
    assert texts(sim.children(page_by_key(sim, "hb")["id"])) == ["heartbeat ok", "heartbeat ok"]
    scrape = sc.get("/metrics")[1].decode()
    assert 'sidecar_rate_limited_total{lane="notion",reason="workspace_rate_limit"} 1.0' in scrape
    assert sc.stop() == 0


def test_sigterm_under_a_busy_client_exits_promptly(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    import threading

    sim, _db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    stop = threading.Event()

    def busy() -> None:
        with Client(sc.endpoint) as client:
            n = 0
            while not stop.is_set():
                client.emit("notion.page.update", {"properties": {"Price": {"number": n}}}, ref="busy")
                n += 1

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        wait_until(lambda: sc.journal_count("events") > 1000, timeout=20, what="a stream of events")
        assert sc.stop(timeout=25) == 0
        assert "stopped:" in sc.log_text() and "Socket operation on non-socket" not in sc.log_text()
    finally:
        stop.set()
        worker.join(30)


def test_short_lived_emitter_loses_nothing(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim, db = notion_sim, notion_sim.database_id
    sc = start_sidecar(short_tmp, sim)
    # A separate process bursts thousands of events and exits at once, without close().
    script = textwrap.dedent(f"""
        from client import Client
        c = Client({sc.endpoint!r}, strict=True)
        c.emit("notion.page.create", {create_body(db, "burst")!r}, key="burst")
        for n in range(5000):
            c.emit("notion.blocks.append", {{"children": [{{"type": "paragraph", "paragraph": {{"rich_text":
                [{{"type": "text", "text": {{"content": str(n)}}}}]}}}}]}}, ref="burst")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    wait_until(lambda: sc.query("SELECT closed FROM clients") == [(1,)] and sc.journal_count("events") == 0,
               timeout=90, what="the burst to be delivered")
    page = page_by_key(sim, "burst")
    assert texts(sim.children(page["id"])) == [str(n) for n in range(5000)]
    gaps = sc.query("SELECT SUM(gaps), SUM(closed), MAX(last_seq) FROM clients")
    assert gaps == [(0, 1, 5001)]
    assert sc.stop() == 0


def test_rate_seen_by_the_api_never_exceeds_the_configured_rate(short_tmp: Path) -> None:
    # Notion's own figures: 3 requests/s on average.
    with NotionSimulator(rate_per_second=3, burst=3) as sim:
        db = sim.create_database(title="T", properties={"Name": "title", "Idempotency Key": "rich_text"})
        # Two creates land but answer 500: the queries that check them count against the rate too.
        sim.inject(Fault(when="after", status=500, method="POST", path_prefix="/v1/pages", count=2))
        sc = start_sidecar(short_tmp, sim, rate_per_second=3.0, burst=1.0)
        with Client(sc.endpoint, strict=True) as client:
            for n in range(18):
                client.emit("notion.page.create", create_body(db, f"r{n}"), key=f"r{n}")
        wait_until(lambda: len(sim.pages()) == 18, timeout=30, what="18 pages")
        assert sc.stop() == 0
        stats = sim.stats()
    assert stats["rate_limited"] == 0
    assert stats["max_in_1s"] <= 3 + 1  # rate plus the configured burst
    # Every create once, the two checks, and one look-up of the database's data source (2025-09-03).
    assert stats["requests"] == 18 + 2 + 1


def test_version_2025_09_03_with_data_sources(short_tmp: Path, notion_sim: NotionSimulator) -> None:
    sim = notion_sim
    source = sim.data_source_id(sim.database_id)
    # The create is applied but answered 500: the check before resending uses the data-source query.
    sim.inject(Fault(when="after", status=500, method="POST", path_prefix="/v1/pages", count=1))
    sc = start_sidecar(short_tmp, sim, version="2025-09-03")
    with Client(sc.endpoint, strict=True) as client:
        client.emit("notion.page.create", {"parent": {"data_source_id": source},
                                           "properties": {"Name": {"title": [{"text": {"content": "ds"}}]}}},
                    key="ds")
        client.emit("notion.page.update", {"properties": {"Price": {"number": 7}}}, ref="ds")
    wait_until(lambda: drained(sc, client), timeout=20, what="delivery")
    assert sc.stop() == 0
    page = page_by_key(sim, "ds")
    assert property_value(page, "Price") == 7
    assert any(r.path == f"/v1/data_sources/{source}/query" for r in sim.requests)
