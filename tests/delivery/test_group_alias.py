"""A Moved group merged by name (groups.py's aliases): no rows rewritten, order and one call kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import wire
from sidecar.connectors.base import Moved, Plan, PlanContext
from sidecar.delivery import groups
from sidecar.journal.store import Event, EventRow, Journal

from .test_lane import Clock, Scripted, once, scripted_lane, send_all, targets

pytestmark = pytest.mark.timeout(30)


def ref_to_page(group: list[Event], ctx: PlanContext) -> Plan:
    kind, _, ident = group[0].target.partition(":")
    return Moved(f"page:{ident}") if kind == "ref" else send_all(group, ctx)


def add(journal: Journal, *rows: tuple[int, str]) -> None:
    journal.write_batch([EventRow("scripted", "webhook.post", target, None, None, "c", seq, 1, 1,
                                  wire.encode("c", seq, "webhook.post", None, None, 1, {"n": seq}), None)
                         for seq, target in rows])


def test_a_merged_group_is_read_with_its_alias_and_its_rows_are_never_rewritten(tmp_path: Path) -> None:
    seen: list[list[tuple[int, str]]] = []

    def planner(group: list[Event], ctx: PlanContext) -> Plan:
        plan = ref_to_page(group, ctx)
        if not isinstance(plan, Moved):
            seen.append([(e.seq, e.target) for e in group])
        return plan

    connector = Scripted(planner)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "ref:k", "page:k", "ref:k")
    changes = journal.conn.total_changes
    target, _ = lane._groups.pick(lane.clock()) or ("", None)
    # Merged by name: the journal was not written, and the plan saw one group in ingest order.
    assert journal.conn.total_changes == changes and target == "page:k"
    assert targets(journal) == [(1, "ref:k"), (2, "page:k"), (3, "ref:k")]
    assert seen == [[(1, "page:k"), (2, "page:k"), (3, "page:k")]]
    lane._groups.done(target)  # not delivered: the next pick plans the group again
    # Arrivals to either name after the merge go out with it, in ingest order, in one call.
    add(journal, (4, "ref:k"), (5, "page:k"), (6, "ref:k"))
    seen.clear()
    assert once(lane) and seen == [[(n, "page:k") for n in range(1, 7)]]
    assert connector.sent == [[1, 2, 3, 4, 5, 6]] and journal.count("events") == 0


def test_a_merged_group_that_fails_holds_its_alias_back_too(tmp_path: Path) -> None:
    from sidecar.errors import Retryable

    connector = Scripted(ref_to_page, results=[Retryable("status_500", "boom", status=500)])
    clock = Clock()
    lane, journal = scripted_lane(tmp_path, connector, clock, "ref:k", "page:k")
    assert once(lane) and connector.sent == [[1, 2]]
    add(journal, (3, "ref:k"))  # ready at once under its own name: the page's backoff must hold it
    assert not once(lane)
    clock.now += 60
    assert once(lane) and connector.sent == [[1, 2], [1, 2, 3]]


def test_a_forgotten_alias_is_found_again_by_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups, "MAX_ALIASES", 1)
    connector = Scripted(ref_to_page)
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "ref:a", "ref:b", "page:a")
    assert once(lane) and once(lane) and not once(lane)
    assert connector.sent == [[1, 3], [2]]
    assert len(lane._groups._alias) == 1  # bounded: "ref:a" was forgotten for "ref:b"
    add(journal, (4, "ref:a"))
    assert once(lane) and connector.sent[-1] == [4] and journal.count("events") == 0
