"""A producer knows whether anyone reads it: a missing ring directory, a ring
nobody acknowledges, `stats()` and `ping()` (real rings, a real reader, real
ZeroMQ sockets; the clock is injected only where a warning waits for time)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
import zmq

from client import Client, wire
from client.presence import WARN_SECONDS, Presence
from client.ring import MIN_RING_BYTES, RingWriter, make_ring_dir, ring_dir
from sidecar.ingest.rings import Rings
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "client" and r.levelno >= logging.WARNING]


def acknowledge(rings: Rings) -> list[bytes]:
    """One ingest cycle without a journal: adopt, read, acknowledge; the first frame of each message."""
    rings.maintain(time.monotonic(), force=True)
    got = rings.read(1_000_000)
    rings.ack()
    return [m[0] for m in got]


def test_a_mistyped_endpoint_warns_once_queues_in_memory_and_counts_what_it_loses(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_ring_dir(str(short_tmp / "ingest.rings"))         # the sidecar's, under the right name
    typo = f"ipc://{short_tmp}/ingest.sokc"
    caplog.set_level(logging.INFO, logger="client")
    c = Client(typo, ring_bytes=MIN_RING_BYTES)
    assert all(c.emit("webhook.post", {"n": n}) for n in range(10))   # held in this process, not lost yet
    stats = c.stats()
    assert stats["transport"] == "zmq"
    assert stats["fallback"] == f"no ring directory {short_tmp}/ingest.sokc.rings"
    assert stats["unacknowledged"]["events"] == 10 and stats["unacknowledged"]["since"] is not None
    assert stats["sidecar_seen"] is False
    assert not c.ping(0.2)
    c.close(linger=0.1)
    # Nothing accepted vanishes without a count: the ten never left this process.
    assert c.stats()["dropped"] == {"linger_expired": 10}
    (said,) = warnings(caplog)                              # once, naming both
    assert typo in said and f"{short_tmp}/ingest.sokc.rings" in said
    assert sorted(os.listdir(short_tmp)) == ["ingest.rings"]  # no ring, no directory for the typo


def test_a_ring_client_without_a_directory_drops_by_a_named_reason_and_says_so_once(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = Client(f"ipc://{short_tmp}/none.sock", transport="ring")   # insists on a ring: nothing to fall back to
    assert [c.emit("webhook.post", {"n": n}) for n in range(3)] == [False] * 3
    assert c.stats()["dropped"] == {"transport_error": 3}
    assert len([m for m in warnings(caplog) if f"{short_tmp}/none.rings" in m]) == 1
    assert not os.path.exists(short_tmp / "none.rings")
    c.close()


def test_a_ring_nobody_acknowledges_warns_once_then_says_when_it_is_read_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = str(tmp_path / "x.rings")
    make_ring_dir(directory)
    writer = RingWriter.create(directory, "c1", capacity=MIN_RING_BYTES, make_dir=False)
    now = [1000.0]
    presence = Presence(f"ipc://{tmp_path}/x.sock", directory, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="client")
    for seq in range(1, 4):
        writer.send(b"x" * 100)
        presence.look(writer, seq, "c1")
    report = presence.report(writer, 3)
    assert report["unacknowledged"] == {"events": 3, "bytes": writer.unacknowledged, "since": 1000.0}
    assert report["sidecar_seen"] is False
    now[0] += WARN_SECONDS
    presence.look(writer, 3, "c1")
    presence.look(writer, 3, "c1")
    (said,) = warnings(caplog)
    assert "no sidecar has adopted" in said and directory in said and "3 event(s)" in said
    rings = Rings(directory, Metrics())
    rings.open()
    assert acknowledge(rings) == [b"x" * 100] * 3
    presence.look(writer, 3, "c1")
    assert presence.report(writer, 3)["unacknowledged"] == {"events": 0, "bytes": 0, "since": None}
    assert any("reads its events again" in r.getMessage() for r in caplog.records)
    # A second episode: the sidecar adopted it and stopped reading.
    writer.send(b"y" * 100)
    presence.look(writer, 4, "c1")
    now[0] += WARN_SECONDS
    presence.look(writer, 4, "c1")
    assert len(warnings(caplog)) == 2 and "stopped reading" in warnings(caplog)[1]
    assert presence.report(writer, 4)["unacknowledged"]["events"] == 1
    writer.close()
    rings.close()


def test_ping_answers_false_without_a_reader_and_true_once_one_acknowledges(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/p.sock"
    directory = ring_dir(endpoint)
    assert directory is not None
    make_ring_dir(directory)
    with Client(endpoint, ring_bytes=MIN_RING_BYTES) as c:
        assert c.emit("webhook.post", {"n": 1})
        assert c.ping(0.2) is False
        rings = Rings(directory, Metrics())
        rings.open()
        stop = threading.Event()
        reader = threading.Thread(target=lambda: [acknowledge(rings) or time.sleep(0.005) for _ in iter(stop.is_set, True)])
        reader.start()
        try:
            assert c.ping(30) is True
            assert c.stats()["unacknowledged"]["events"] == 0 and c.stats()["sidecar_seen"] is True
        finally:
            stop.set()
            reader.join()
    rings.close()


def test_ping_over_zeromq_waits_for_a_connection(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/z.sock"
    with Client(endpoint, transport="zmq", linger=0) as c:
        assert c.ping(0.2) is False
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.bind(endpoint)
        try:
            assert c.ping(30) is True
        finally:
            pull.close(0)
            ctx.term()


def test_a_client_that_fell_back_moves_onto_the_ring_when_ping_finds_the_directory(short_tmp: Path) -> None:
    endpoint = f"ipc://{short_tmp}/late.sock"
    with Client(endpoint, ring_bytes=MIN_RING_BYTES, linger=0) as c:
        assert c.stats()["fallback"] is not None
        directory = ring_dir(endpoint)
        assert directory is not None
        make_ring_dir(directory)                              # the sidecar starts
        rings = Rings(directory, Metrics())
        rings.open()
        assert c.ping(0.2) is False                           # on the ring now, which nobody read yet
        assert c.stats()["transport"] == "ring" and c.stats()["fallback"] is None
        assert c.emit("webhook.post", {"n": 1})
        kinds = [wire.decode(f).kind for f in acknowledge(rings)]
        assert kinds == [wire.STATS, "webhook.post", wire.STATS]  # ping's note, the event, its tick's
        assert c.stats()["unacknowledged"] == {"events": 0, "bytes": 0, "since": None}
        assert c.stats()["sidecar_seen"] is True
    rings.close()
