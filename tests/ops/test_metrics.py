"""Metrics helpers: observing a coalesced call's events at once, and reading one metric."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from sidecar.ops.metrics import LATENCY_BUCKETS, Metrics, observe_many


def _samples(h: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for m in h.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_observing_many_at_once_is_observing_each() -> None:
    rng = random.Random(3)
    amounts = [rng.choice(LATENCY_BUCKETS) for _ in range(50)] + [rng.uniform(-1, 400) for _ in range(500)] + [0.0]
    one, many = (Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry()) for _ in range(2))
    for a in amounts:
        one.observe(a)
    observe_many(many, amounts)
    observe_many(many, [])
    expected, got = _samples(one), _samples(many)
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-6 for k in expected), (got, expected)


def test_value_and_total_read_one_metric_or_any_sample() -> None:
    m = Metrics()
    m.received.labels(kind="a").inc(3)
    m.received.labels(kind="b").inc(2)
    m.ring_shm_bytes.set(7)
    assert m.total("sidecar_events_received_total") == 5 and m.value("sidecar_events_received_total", kind="b") == 2
    assert m.value("sidecar_ring_shm_bytes") == 7 and m.value("sidecar_events_received_total", kind="c") == 0
    assert m.total("sidecar_process_threads") >= 1  # a collector's sample: the whole registry is read
