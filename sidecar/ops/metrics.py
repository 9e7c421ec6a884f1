"""Counters and histograms, in a registry per sidecar (tests may run several).

    m = Metrics()
    m.received.labels(kind="notion.page.create").inc()
    m.value("sidecar_events_delivered_total", kind="notion.page.update")

Names use base units and `_total` for counters, as Prometheus asks. No label
takes a value a producer chooses (client ids, keys, error bodies): one
series per client would let a flood of made-up ids grow every scrape; label
values are our own closed sets (kinds, lanes, reasons, status codes).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from sidecar.ops.status import ProcessStatus

# What the journal's writers last met (journal_health.py); "ok" when writes commit.
JOURNAL_STATES = ("ok", "disk full", "read-only", "I/O error", "locked")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter("sidecar_events_received", "Events read from the ingest socket", ["kind"], registry=r)
        self.journaled = Counter("sidecar_events_journaled", "Events committed to the journal", ["kind"], registry=r)
        self.ingest_commits = Counter("sidecar_ingest_commits", "Journal transactions of ingest's group commits",
                                      registry=r)
        self.rejected = Counter("sidecar_events_rejected", "Frames refused at ingest", ["reason"], registry=r)
        self.rejects_unsampled = Counter(
            "sidecar_rejects_unsampled", "Rejected frames only counted: their reason's hourly sample was full",
            ["reason"], registry=r)
        self.delivered = Counter("sidecar_events_delivered", "Events delivered to their API", ["kind"], registry=r)
        self.deduplicated = Counter(
            "sidecar_events_deduplicated", "Events that needed no call of their own", ["kind", "reason"], registry=r)
        self.coalesced = Counter("sidecar_events_coalesced", "Events delivered inside another event's call",
                                 ["kind"], registry=r)
        self.dead = Counter("sidecar_events_dead_lettered", "Events moved to the dead-letter store",
                            ["kind", "reason"], registry=r)
        self.retried = Counter("sidecar_delivery_retries", "Calls that failed and will be retried",
                               ["lane", "reason"], registry=r)
        self.gaps = Counter("sidecar_client_sequence_gaps", "Events lost between the clients and the sidecar",
                            registry=r)
        self.calls = Counter("sidecar_api_calls", "HTTP calls made, by outcome", ["api", "status"], registry=r)
        self.call_seconds = Histogram("sidecar_api_call_duration_seconds", "Duration of one API call", ["api"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.emit_to_delivery = Histogram("sidecar_emit_to_delivery_seconds", "From emit() to the API's answer",
                                          ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.depth = Gauge("sidecar_queue_depth", "Events waiting in the journal", ["lane"], registry=r)
        self.dead_letters = Gauge("sidecar_dead_letters", "Events in the dead-letter store", registry=r)
        self.limiter_tokens = Gauge("sidecar_limiter_tokens", "Tokens in the lane's bucket", ["lane"], registry=r)
        self.limiter_rate = Gauge("sidecar_limiter_rate_per_second",
                                  "The lane's allowed rate now, by where it came from (configured, learned, "
                                  "backed off)", ["lane", "source"], registry=r)
        self.limiter_unused = Counter("sidecar_limiter_reservations_unused",
                                      "Limiter slots taken whose call was not made (not given back)", ["lane"],
                                      registry=r)
        self.limiter_sharing = Gauge("sidecar_limiter_sidecars_sharing",
                                     "Sidecars seen on the lane's quota in the last minute (1 in memory)", ["lane"],
                                     registry=r)
        self.limiter_store_away = Gauge("sidecar_limiter_store_away",
                                        "1 while the shared limiter store (Redis) cannot be reached", registry=r)
        self.limiter_fallbacks = Counter("sidecar_limiter_store_fallbacks",
                                         "Times the shared limiter store (Redis) went away and lanes went on alone",
                                         registry=r)
        self.rate_limited = Counter("sidecar_rate_limited", "429/529 answers, by the limit the API named",
                                    ["lane", "reason"], registry=r)
        self.breaker_state = Gauge("sidecar_circuit_breaker_state", "0 closed, 1 half-open, 2 open", ["lane"],
                                   registry=r)
        self.expired = Counter("sidecar_journal_expired", "Refs and reject samples forgotten after their time",
                               ["table"], registry=r)
        self.rings = Gauge("sidecar_rings", "Shared-memory rings being read", registry=r)
        self.ring_shm_bytes = Gauge("sidecar_ring_shm_bytes", "Shared memory the rings being read hold, bytes",
                                    registry=r)
        self.rings_quarantined = Counter("sidecar_rings_quarantined", "Rings moved aside as corrupt or unusable",
                                         ["reason"], registry=r)
        self.ring_doorbells = Counter("sidecar_ring_doorbells", "Wake-ups rung by producers while ingest slept",
                                      registry=r)
        self.rings_deferred = Counter("sidecar_rings_deferred", "Ring adoptions put off (no fd to spare), by reason",
                                      ["reason"], registry=r)
        self.journal_bytes = Gauge("sidecar_journal_size_bytes", "Journal files on disk", registry=r)
        self.journal_state = Enum("sidecar_journal_state", "Whether the journal takes writes",
                                  states=list(JOURNAL_STATES), registry=r)
        self.journal_corrupt = Counter("sidecar_journal_corrupt", "Corrupt journals found at start and set aside",
                                       registry=r)
        self.journal_recovered = Counter("sidecar_journal_recovered_events",
                                         "Events recovered from a corrupt journal into the fresh one", registry=r)
        self.clients = ClientReports()
        r.register(self.clients)
        r.register(ProcessCollector())
        # Sample name -> the metric of ours that makes it, so that `value` and `total` (the
        # housekeeping tick's status, four a tick) collect that metric alone rather than the
        # whole registry, psutil's reads of /proc included, each time.
        self._makers: dict[str, MetricWrapperBase] = {}
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase):
                for family in metric.describe():
                    for suffix in ("", "_total", "_created", "_count", "_sum", "_bucket"):
                        self._makers[family.name + suffix] = metric

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if never set); for tests, the CLI and the status."""
        for metric in self._collect(name):
            for sample in metric.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        total = 0.0
        for metric in self._collect(name):
            for sample in metric.samples:
                if sample.name == name:
                    total += sample.value
        return total

    def _collect(self, name: str) -> Iterable[Metric]:
        maker = self._makers.get(name)
        return maker.collect() if maker is not None else self.registry.collect()


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for each of `amounts`, as one add a bucket and one to the sum.

    A coalesced call settles thousands of events; observing each (a lock and a
    bucket search each time) was 1 µs an event of the event loop. The buckets are
    the histogram's own (prometheus_client's `_upper_bounds`, `_buckets`, `_sum`,
    as its `observe` uses them); a histogram without them is observed one by one.
    """
    if not amounts:
        return
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    ordered = sorted(amounts)
    below = 0
    for bound, bucket in zip(bounds, buckets, strict=True):
        upto = bisect_right(ordered, bound)  # observe() puts an amount in the first bucket it is <= to
        if upto > below:
            bucket.inc(upto - below)
            below = upto
        if below == len(ordered):
            break
    total.inc(sum(ordered))


class ClientReports(Collector):
    """The counters the clients report about themselves, summed over clients, so one
    scrape shows both ends: `sidecar_client_sent_total` and
    `sidecar_client_dropped_total{reason}`.

    Each report is a client's running totals; what it adds since that
    client's previous report goes into the sums. The latest report of the
    `keep` most recent clients is kept for that (a client forgotten and heard
    again counts its totals again: more than `keep` clients reporting at once
    is not a real set-up). Reasons are the client's words: at most
    MAX_REASONS distinct ones are kept as labels, and the rest sum as "other".
    """

    MAX_REASONS = 32

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self.reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.sent = 0
        self.dropped: dict[str, int] = {}

    def update(self, client_id: str, stats: dict[str, Any]) -> None:
        before = self.reports.pop(client_id, {})
        self.reports[client_id] = stats
        while len(self.reports) > self.keep:
            self.reports.popitem(last=False)
        # Ingest keeps only well-formed integer counts here.
        self.sent += max(0, int(stats.get("sent", 0)) - int(before.get("sent", 0)))
        was = dict(before.get("dropped") or {})
        for reason, count in dict(stats.get("dropped") or {}).items():
            added = int(count) - int(was.get(reason, 0))
            if added > 0:
                label = reason if reason in self.dropped or len(self.dropped) < self.MAX_REASONS else "other"
                self.dropped[label] = self.dropped.get(label, 0) + added

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("sidecar_client_sent", "Events the clients queued, as they reported",
                                  value=float(self.sent))
        dropped = CounterMetricFamily("sidecar_client_dropped", "Events the clients dropped, by reason, as they "
                                      "reported", labels=["reason"])
        for reason, count in list(self.dropped.items()):
            dropped.add_metric([reason], float(count))
        yield dropped


class ProcessCollector(Collector):
    """The sidecar's own CPU, memory and open files, read with psutil at scrape time."""

    def __init__(self) -> None:
        self.process = psutil.Process()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = self.process
        with p.oneshot():
            cpu = p.cpu_times()
            yield CounterMetricFamily("sidecar_process_cpu_seconds", "CPU time used by the sidecar",
                                      value=cpu.user + cpu.system)
            yield GaugeMetricFamily("sidecar_process_resident_memory_bytes", "Resident set size",
                                    value=p.memory_info().rss)
            yield GaugeMetricFamily("sidecar_process_open_fds", "Open file descriptors", value=p.num_fds())
            yield GaugeMetricFamily("sidecar_process_threads", "Threads", value=p.num_threads())


def process_snapshot() -> ProcessStatus:
    """The same figures for `sidecar status`."""
    p = psutil.Process()
    with p.oneshot():
        cpu = p.cpu_times()
        return ProcessStatus(
            pid=p.pid,
            cpu_seconds=round(cpu.user + cpu.system, 3),
            rss_bytes=p.memory_info().rss,
            open_fds=p.num_fds(),
            threads=p.num_threads(),
            cpu_affinity=tuple(p.cpu_affinity()) if hasattr(p, "cpu_affinity") else None,
            nice=p.nice(),
        )
