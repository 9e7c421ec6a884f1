"""Reading a group for planning: its payloads parsed in one call, and ids passed as one parameter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from client import wire
from sidecar.journal.store import EVENT_COLUMNS, Event, EventRow, Journal, decode_payloads, id_list

from ..support import journaled

PAYLOADS = [{"properties": {"Price": {"number": n / 7}}, "s": "é\u2028\"]", "n": None} for n in range(50)]


def test_a_groups_payloads_parsed_at_once_are_those_each_event_parses_alone() -> None:
    events = [journaled(n, "notion", "notion.page.update", "update:p", p) for n, p in enumerate(PAYLOADS)]
    decode_payloads(events)
    assert all("payload" in e.__dict__ for e in events)  # parsed here, not one by one later
    assert [e.payload for e in events] == [wire.decode(e.frame).payload for e in events] == PAYLOADS


@pytest.mark.parametrize("bad", [b"not json", b'[1,"c",1,"k",null,null,0,{}],[1,"c",2,"k",null,null,0,{}]', b"[1,2]"])
def test_a_frame_that_is_not_one_envelope_leaves_every_payload_to_its_own_parse(bad: bytes) -> None:
    events = [journaled(n, "notion", "notion.page.update", "update:p", p) for n, p in enumerate(PAYLOADS[:3])]
    events[1] = dataclasses.replace(events[1], frame=bad)
    decode_payloads(events)
    assert "payload" not in events[1].__dict__
    assert events[0].payload == PAYLOADS[0] and events[2].payload == PAYLOADS[2]
    with pytest.raises(wire.WireError):
        events[1].payload  # noqa: B018 - fails alone, as before


def test_id_list_is_a_json_array_of_the_ids() -> None:
    ids = [1, 2**53 + 1, 9_223_372_036_854_775_807]
    assert id_list(ids) == "[1,9007199254740993,9223372036854775807]" and orjson.loads(id_list(iter(ids))) == ids


def test_a_group_read_with_another_target_is_both_in_ingest_order_up_to_the_limit(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    order = ["a", "b", "c", "b", "a", "a", "b"]
    journal.write_batch([EventRow("l", "webhook.post", t, None, None, "c", n, 1, 1,
                                  wire.encode("c", n, "webhook.post", None, None, 1, {}), None)
                         for n, t in enumerate(order, 1)])
    assert [e.seq for e in journal.group("l", "a", also=["b"])] == [1, 2, 4, 5, 6, 7]
    assert [e.seq for e in journal.group("l", "a", limit=3, also=["b"])] == [1, 2, 4]
    assert [e.seq for e in journal.group("l", "b", limit=2)] == [2, 4]
    journal.close()


def _rows(n: int, target: str = "update:p") -> list[EventRow]:
    return [EventRow("notion", "notion.page.update", target, f"k{i}" if i % 2 else None, "r" if i % 3 else None,
                     f"client-{i % 2}", i, 10 + i, 20 + i, wire.encode(f"client-{i % 2}", i, "notion.page.update",
                                                                      f"k{i}" if i % 2 else None,
                                                                      "r" if i % 3 else None, 10 + i, p), None)
            for i, p in enumerate(PAYLOADS[:n], 1)]


def _long_way(journal: Journal, target: str) -> list[Event]:
    return [Event(*row) for row in journal.conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE lane='notion' AND target=? ORDER BY id", (target,))]


def test_a_group_read_the_short_way_is_its_rows_with_their_payloads_parsed(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    journal.write_batch(_rows(20))
    journal.defer([3, 4], 7.5, "boom", unsure=True, count=True)
    events = journal.group("notion", "update:p")
    assert events == _long_way(journal, "update:p")  # every column, as the row holds it
    assert all("payload" in e.__dict__ for e in events) and [e.payload for e in events] == PAYLOADS[:20]
    assert [(e.attempts, e.unsure, e.not_before) for e in events[2:4]] == [(1, 1, 7.5)] * 2
    journal.close()


@pytest.mark.parametrize("frame", [b'[1,"other",99,"k",null,null,0,{}]', b"not json"])
def test_a_frame_that_is_not_its_rows_sends_the_group_the_long_way(tmp_path: Path, frame: bytes) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    rows = _rows(3)
    rows[1] = rows[1]._replace(frame=frame)
    journal.write_batch(rows)
    events = journal.group("notion", "update:p")
    assert events == _long_way(journal, "update:p")  # the row's own columns, not the frame's
    assert events[0].payload == PAYLOADS[0] and events[2].payload == PAYLOADS[2]
    journal.close()
