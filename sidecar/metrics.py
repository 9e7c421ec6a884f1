"""Counters and histograms, in a registry per sidecar (tests may run several).

    m = Metrics()
    m.received.labels(kind="notion.page.create").inc()
    m.value("sidecar_events_delivered_total", kind="notion.page.update")

Names use base units and `_total` for counters, as Prometheus asks.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter("sidecar_events_received", "Events read from the ingest socket", ["kind"], registry=r)
        self.journaled = Counter("sidecar_events_journaled", "Events committed to the journal", ["kind"], registry=r)
        self.rejected = Counter("sidecar_events_rejected", "Frames refused at ingest and kept aside", ["reason"], registry=r)
        self.delivered = Counter("sidecar_events_delivered", "Events delivered to their API", ["kind"], registry=r)
        self.deduplicated = Counter(
            "sidecar_events_deduplicated", "Events that needed no call of their own", ["kind", "reason"], registry=r)
        self.coalesced = Counter("sidecar_events_coalesced", "Events delivered inside another event's call",
                                 ["kind"], registry=r)
        self.dead = Counter("sidecar_events_dead_lettered", "Events moved to the dead-letter store",
                            ["kind", "reason"], registry=r)
        self.retried = Counter("sidecar_delivery_retries", "Calls that failed and will be retried",
                               ["lane", "reason"], registry=r)
        self.gaps = Counter("sidecar_client_sequence_gaps", "Events lost between a client and the sidecar",
                            ["client"], registry=r)
        self.calls = Counter("sidecar_api_calls", "HTTP calls made, by outcome", ["api", "status"], registry=r)
        self.call_seconds = Histogram("sidecar_api_call_duration_seconds", "Duration of one API call", ["api"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.emit_to_delivery = Histogram("sidecar_emit_to_delivery_seconds", "From emit() to the API's answer",
                                          ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.depth = Gauge("sidecar_queue_depth", "Events waiting in the journal", ["lane"], registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if never set); for tests and the CLI."""
        found = self.registry.get_sample_value(name, labels)
        return found or 0.0

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name:
                    total += sample.value
        return total
