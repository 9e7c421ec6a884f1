"""The reject sample and the reject log's throttle, at fixed times."""

from __future__ import annotations

import pytest

from sidecar.ingest.rejects import Sampler, Throttle

pytestmark = pytest.mark.timeout(30)


def test_reject_sample_keeps_a_limit_per_reason_in_any_window() -> None:
    sampler = Sampler(limit=3, window=60.0)
    assert [sampler.keep("bad_json", now=t) for t in (0.0, 1.0, 2.0, 3.0, 59.0)] == [True, True, True, False, False]
    assert sampler.keep("too_large", now=3.0)  # each reason has its own
    assert sampler.keep("bad_json", now=60.0)  # the one kept at 0 has left the window
    assert not sampler.keep("bad_json", now=60.5)  # ...but those at 1 and 2 have not
    assert [sampler.keep("bad_json", now=t) for t in (61.0, 62.0)] == [True, True]


def test_reject_log_says_once_an_interval_how_much_it_held_back() -> None:
    throttle = Throttle(interval=60.0)
    assert throttle.due("bad_json", now=0.0, count=5) == 0
    assert throttle.due("bad_json", now=1.0, count=1000) is None
    assert throttle.due("too_large", now=1.0) == 0  # each reason has its own
    assert throttle.due("bad_json", now=59.9) is None
    assert throttle.due("bad_json", now=60.0, count=2) == 1001
    assert throttle.due("bad_json", now=120.0) == 0
