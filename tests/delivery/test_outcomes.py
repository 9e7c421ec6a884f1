"""A lane's recent calls: which outcomes count, when "mostly failing" starts and ends, what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import HealthConfig
from sidecar.connectors.base import Delivered, Send
from sidecar.delivery.outcomes import DEAD, OK, REFUSED, Outcomes, describe, one_line
from sidecar.errors import Permanent, RateLimited, Retryable
from sidecar.ops.credentials import read_secret

from .test_lane import Clock, Scripted, once, scripted_lane, send_all

pytestmark = pytest.mark.timeout(30)

CFG = HealthConfig()  # the last 20 calls of 10 minutes, at least 5, more than half failing
NOW = 10_000.0


def window(*outcomes: str, at: float = NOW) -> Outcomes:
    recent = Outcomes()
    for outcome in outcomes:
        recent.add(outcome, at, "400 validation_error: Title is not a property that exists.")  # type: ignore[arg-type]
    return recent


@pytest.mark.parametrize(("outcomes", "failing"), [
    ([DEAD] * 4, False),                     # under min_calls: too few to say
    ([DEAD] * 5, True),
    ([OK] * 10 + [DEAD] * 10, False),        # half is not "mostly"
    ([OK] * 9 + [DEAD] * 11, True),
    ([REFUSED] * 3 + [DEAD] * 3, True),      # refused whole (then split) counts as failing too
    ([DEAD] * 20 + [OK] * 10, False),        # only the last 20: 10 of 20
    ([DEAD] * 20 + [OK] * 9, True),          # 11 of the last 20
])
def test_a_lane_is_failing_when_more_than_half_of_its_last_calls_failed(outcomes: list[str], failing: bool) -> None:
    problem = window(*outcomes).failing("notion", CFG, NOW)
    assert (problem is not None) == failing


def test_the_problem_names_the_lane_the_counts_and_the_last_refusal() -> None:
    problem = window(*[OK] * 2, *[DEAD] * 18).failing("notion", CFG, NOW)
    assert problem == ("notion: 18 of the last 20 calls refused or dead-lettered "
                       "(last: 400 validation_error: Title is not a property that exists.)")


def test_calls_older_than_recent_seconds_no_longer_count() -> None:
    recent = window(*[DEAD] * 20, at=NOW - CFG.recent_seconds - 1)
    assert recent.failing("notion", CFG, NOW) is None
    assert recent.recent(CFG, NOW) == (0, 0)
    assert recent.failing("notion", HealthConfig(recent_seconds=CFG.recent_seconds + 2), NOW) is not None


def test_an_apis_words_reach_a_status_line_on_one_line_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("OUTCOMES_TEST_TOKEN", "secret_tok_1234567890")
    assert read_secret("OUTCOMES_TEST_TOKEN")  # a secret the sidecar read is never repeated
    assert one_line('{"message": "bad"}\n\x1b[2Jforged line') == '{"message": "bad"} [2Jforged line'
    assert "secret_tok" not in one_line("echoed secret_tok_1234567890")
    assert len(one_line("x" * 1000)) == 160


def test_describe_takes_the_message_out_of_a_json_error_body() -> None:
    exc = Permanent("http_400", "invalid_request_url", status=400,
                    body='{"object": "error", "message": "Invalid request URL: POST /pages"}')
    assert describe(exc) == "400 invalid_request_url: Invalid request URL: POST /pages"
    assert describe(Permanent("http_403", "", status=403, body="<Error>AccessDenied</Error>")) == \
        "403 http_403: <Error>AccessDenied</Error>"


# -- what the lane records for each outcome of a call -----------------------------------------------


def test_the_lane_records_deliveries_and_dead_letters_but_not_retries_or_rate_limits(tmp_path: Path) -> None:
    results = [Delivered(), Retryable("http_503", status=503), RateLimited("http_429", status=429),
               Permanent("http_400", "validation_error", status=400, body='{"message": "no such property"}')]
    lane, journal = scripted_lane(tmp_path, Scripted(send_all, results), Clock(), "a", "b", "c", "d")
    for _ in range(4):
        assert once(lane)
    assert lane.recent.recent(CFG, lane.clock()) == (2, 1)
    assert lane.recent.last_failure == "400 validation_error: no such property"
    assert journal.count("dead_letters") == 1 and journal.count("events") == 2


def test_a_call_refused_whole_then_split_records_each_call(tmp_path: Path) -> None:
    # Two events in one call, refused 400: split in halves; the first half goes, the second is refused alone.
    refusal = Permanent("http_400", "validation_error", status=400, body='{"message": "bad"}')
    connector = Scripted(send_all, [refusal, Delivered(), Permanent("http_400", "validation_error", status=400)])
    lane, journal = scripted_lane(tmp_path, connector, Clock(), "t", "t")
    assert once(lane)
    assert connector.sent == [[1, 2], [1], [2]]
    assert [o for _, o in lane.recent._seen] == [REFUSED, OK, DEAD]
    assert journal.count("dead_letters") == 1


def test_a_call_whose_every_item_was_refused_counts_as_dead(tmp_path: Path) -> None:
    def refuse_all(group: list, ctx: object) -> Send[None]:
        return Send(group, None)

    lane, journal = scripted_lane(tmp_path, Scripted(refuse_all), Clock(), "t")
    event_id = journal.conn.execute("SELECT id FROM events").fetchone()[0]
    lane.connector.results = [Delivered(failed={event_id: ("product_refused", "NOT_FOUND: no product 9")})]
    assert once(lane)
    assert [o for _, o in lane.recent._seen] == [DEAD]
    assert lane.recent.last_failure == "product_refused: NOT_FOUND: no product 9"
