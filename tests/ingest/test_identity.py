"""Identity comes from the ring (issue 17, item 3): a frame cannot claim another
producer's id, on a ring or the socket; client ids are short; the clients
table and the gap log stay bounded whatever ids arrive; no metric label
carries a client id."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import zmq

from client import wire
from client.ring import MIN_RING_BYTES, RingWriter
from sidecar.config import from_dict
from sidecar.connectors import build_lanes
from sidecar.ingest.core import Ingest
from sidecar.ingest.rejects import Throttle
from sidecar.ingest.sequences import Sequences
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(60)

MAX_SEQ = 2**63 - 1


def frame(client_id: str, seq: int, key: str | None = None, kind: str = "notion.page.create") -> bytes:
    payload = {"parent": {"database_id": "db"}, "properties": {}}
    return wire.encode(client_id, seq, kind, key or f"{client_id}-{seq}", None, 1, payload)


@pytest.fixture()
def ingest(short_tmp: Path) -> Iterator[Ingest]:
    cfg = from_dict({"ingest": {"endpoint": f"ipc://{short_tmp}/i.sock"},
                     "journal": {"dir": str(short_tmp / "j"), "synchronous": "NORMAL"}})
    journal = Journal.open(cfg.journal.dir, synchronous="NORMAL")
    ing = Ingest(cfg.ingest, journal, {n: s.connector for n, s in build_lanes(cfg).items()}, Metrics())
    ing.bind()
    yield ing
    ing.stop()
    journal.close()


def run(ing: Ingest) -> None:
    """Batches until the rings and the socket have nothing more, each committed
    as soon as read (no commit window: the window's own tests are test_group_commit's)."""
    assert ing.rings is not None and ing._sock is not None
    ing.rings.maintain(time.monotonic(), force=True)
    while ing._cycle(ing._sock, now_or_never=True):
        pass


def run_until(ing: Ingest, done: Callable[[], bool], what: str) -> None:
    """Batches until `done` (socket frames arrive when libzmq has them), or fail naming `what`."""
    assert ing._sock is not None
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        ing._sock.poll(50)
        run(ing)


def journaled(ing: Ingest, client_id: str) -> list[int]:
    return [s for (s,) in ing.journal.conn.execute("SELECT seq FROM events WHERE client_id=? ORDER BY seq",
                                                   (client_id,))]


def rejected(ing: Ingest, reason: str) -> float:
    return ing.metrics.value("sidecar_events_rejected_total", reason=reason)


def push(ing: Ingest) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(ing.cfg.endpoint)
    return sock


def test_a_ring_frame_claiming_another_clients_id_is_refused_and_that_client_goes_on(ingest: Ingest) -> None:
    assert ingest.rings is not None
    victim = RingWriter.create(ingest.rings.directory, "victim-1", capacity=MIN_RING_BYTES, make_dir=False)
    attacker = RingWriter.create(ingest.rings.directory, "attacker-1", capacity=MIN_RING_BYTES, make_dir=False)
    victim.send(frame("victim-1", 1))
    run(ingest)
    attacker.send(frame("victim-1", MAX_SEQ))  # the victim's id, read from its ring's file name
    attacker.send(frame("attacker-1", 1))
    run(ingest)
    for seq in range(2, 102):
        victim.send(frame("victim-1", seq))
    run(ingest)
    assert journaled(ingest, "victim-1") == list(range(1, 102))
    assert journaled(ingest, "attacker-1") == [1]
    assert rejected(ingest, "wrong_client") == 1
    assert ingest.metrics.value("sidecar_events_deduplicated_total", kind="any", reason="replayed_seq") == 0
    victim.close()
    attacker.close()


def test_a_socket_frame_cannot_take_a_rings_sequence(ingest: Ingest) -> None:
    assert ingest.rings is not None
    victim = RingWriter.create(ingest.rings.directory, "victim-2", capacity=MIN_RING_BYTES, make_dir=False)
    victim.send(frame("victim-2", 1))
    run(ingest)
    sock = push(ingest)
    sock.send(frame("victim-2", MAX_SEQ))
    bye = wire.encode("victim-2", 0, wire.BYE, None, None, 1, {"sent": MAX_SEQ})
    sock.send(bye)
    run_until(ingest, lambda: rejected(ingest, "wrong_client") == 2, "both frames refused")
    victim.send(frame("victim-2", 2))
    run(ingest)
    assert journaled(ingest, "victim-2") == [1, 2]
    assert ingest.journal.conn.execute("SELECT last_seq, gaps, ring FROM clients WHERE client_id='victim-2'"
                                       ).fetchall() == [(2, 0, 1)]
    sock.close()
    victim.close()


def test_a_ring_takes_its_id_back_from_a_socket_frame_that_claimed_it_first(ingest: Ingest) -> None:
    assert ingest.rings is not None and ingest._sock is not None
    sock = push(ingest)
    sock.send(frame("early-3", MAX_SEQ))  # before the ring exists: nothing to refuse it yet
    run_until(ingest, lambda: journaled(ingest, "early-3") == [MAX_SEQ], "the socket's frame")
    victim = RingWriter.create(ingest.rings.directory, "early-3", capacity=MIN_RING_BYTES, make_dir=False)
    for seq in (1, 2, 3):
        victim.send(frame("early-3", seq))
    run(ingest)
    assert journaled(ingest, "early-3") == [1, 2, 3, MAX_SEQ]
    sock.send(frame("early-3", 4))  # and the socket cannot claim it again
    run_until(ingest, lambda: rejected(ingest, "wrong_client") == 1, "the socket's second frame")
    assert journaled(ingest, "early-3") == [1, 2, 3, MAX_SEQ]
    assert rejected(ingest, "wrong_client") == 1
    sock.close()
    victim.close()


@pytest.mark.parametrize("client_id", ["x" * 65, "a/b", "c1\n2024-01-01 ERROR forged", "é"])
def test_socket_client_ids_are_short_and_plain(ingest: Ingest, client_id: str) -> None:
    assert ingest._sock is not None
    sock = push(ingest)
    sock.send(frame(client_id, 1))
    sock.send(frame("x" * 64, 1))
    run_until(ingest, lambda: ingest.journal.count("events") == 1, "the good frame")
    assert journaled(ingest, "x" * 64) == [1]
    assert rejected(ingest, "bad_client_id") == 1
    assert ingest.journal.count("clients") == 1
    sock.close()


def test_a_message_of_too_many_frames_is_refused_and_counted(ingest: Ingest) -> None:
    assert ingest._sock is not None
    sock = push(ingest)
    sock.send_multipart([frame("many-1", 1, kind="s3.put"), *[b"b" * 1000] * 60])
    sock.send(frame("many-1", 2))
    run_until(ingest, lambda: bool(journaled(ingest, "many-1")), "the event after it")
    assert journaled(ingest, "many-1") == [2]
    assert rejected(ingest, "bad_frames") == 1
    sock.close()


def test_no_metric_label_grows_with_the_number_of_clients(ingest: Ingest) -> None:
    assert ingest._sock is not None
    sock = push(ingest)
    for n in range(300):
        cid = f"client-{n}"
        sock.send(frame(cid, 5))  # a gap of 4 each
        sock.send(wire.encode(cid, 0, wire.STATS, None, None, 1,
                              {"sent": 5, "dropped": {"queue_full": 1, f"made-up-{n}": 1, "x" * 40: 1}}))
    run_until(ingest, lambda: ingest.metrics.value("sidecar_client_sent_total") == 5 * 300, "every report")
    from prometheus_client import generate_latest
    text = generate_latest(ingest.metrics.registry).decode()
    assert "client-" not in text and "made-up" not in text
    assert ingest.metrics.value("sidecar_client_sequence_gaps_total") == 4 * 300
    assert ingest.metrics.value("sidecar_client_sent_total") == 5 * 300
    assert ingest.metrics.value("sidecar_client_dropped_total", reason="queue_full") == 300
    sock.close()


def test_gap_lines_are_throttled_per_client_and_overall(ingest: Ingest, caplog: pytest.LogCaptureFixture) -> None:
    assert ingest._sock is not None
    sock = push(ingest)
    with caplog.at_level(logging.WARNING, logger="sidecar.ingest"):
        for n in range(200):
            sock.send(frame(f"gappy-{n}", 10))
            sock.send(frame(f"gappy-{n}", 20))
        run_until(ingest, lambda: ingest.journal.count("events") == 400, "every event")
    lines = [r for r in caplog.records if "lost" in r.getMessage()]
    assert ingest.metrics.value("sidecar_client_sequence_gaps_total") == 200 * (9 + 9)
    assert 1 <= len(lines) <= 3  # a line a second at most, however many clients
    sock.close()


def test_throttle_keys_are_bounded() -> None:
    throttle = Throttle(interval=60.0, max_keys=100)
    assert all(throttle.due(f"c{n}", now=0.0) == 0 for n in range(100))
    assert throttle.due("c-new", now=1.0) is None      # no room: held back, not remembered
    assert len(throttle._last) == 100
    assert throttle.due("c-new", now=61.0) == 0        # the others' interval has passed: room again
    assert len(throttle._last) == 1


def test_clients_idle_past_the_window_are_pruned_and_loading_is_bounded(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    journal.write_batch([], clients={f"old-{n}": (n + 1, 0, False, None, True) for n in range(50)})
    journal.conn.execute("UPDATE clients SET updated_at = updated_at - 7200")
    journal.write_batch([], clients={f"new-{n}": (n + 1, 0, False, None, False) for n in range(50)})
    seqs = Sequences(journal, Metrics(), keep_seconds=3600, max_in_memory=60)
    assert len(seqs.clients) == 60 and all(f"new-{n}" in seqs.clients for n in range(50))
    assert seqs.clients["new-3"].ring is False
    # A client not loaded is looked up when it comes back: its replay is still one.
    assert not seqs.accept("old-7", 8, {}, ring=True)
    assert seqs.prune(time.monotonic()) == 50
    assert journal.count("clients") == 50 and "old-7" not in seqs.clients
    assert seqs.prune(time.monotonic()) == 0  # not again so soon
    journal.close()


def test_a_journal_from_before_gets_the_ring_column(tmp_path: Path) -> None:
    import sqlite3
    conn = sqlite3.connect(tmp_path / "journal.db")
    conn.execute("CREATE TABLE clients (client_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, gaps INTEGER NOT "
                 "NULL, closed INTEGER NOT NULL DEFAULT 0, stats BLOB, updated_at REAL NOT NULL)")
    conn.execute("INSERT INTO clients VALUES ('c1', 7, 0, 0, NULL, 1.0)")
    conn.commit()
    conn.close()
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    state = journal.clients.states()["c1"]
    assert (state.last_seq, state.ring) == (7, None)
    seqs = Sequences(journal, Metrics())
    assert not seqs.accept("c1", 7, {}, ring=True)  # an old row serves a ring: the re-read is still a replay
    assert orjson.loads(orjson.dumps(seqs.clients["c1"].ring)) is True
    journal.close()
