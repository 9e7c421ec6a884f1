"""The journal's row shape, its blob spool, the dead-letter round trip and the bounded rejects, on a real SQLite file."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from client import wire
from sidecar.config import Config
from sidecar.ingest.core import Ingest
from sidecar.ingest.rejects import SAMPLE_PER_WINDOW
from sidecar.journal.dlq import list_dead, purge_dead, retry_dead
from sidecar.journal.health import FULL, OK, JournalHealth, JournalUnavailable
from sidecar.journal.repair import acknowledge
from sidecar.journal.spool import Spool
from sidecar.journal.store import EVENT_FIELDS, FRAME, INSERT_EVENT, Event, EventRow, Journal, read_ref
from sidecar.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


def _row(n: int, blob_path: str | None = None) -> EventRow:
    frame = wire.encode("c", n, "s3.put", f"k{n}", None, 0, {"n": n})
    return EventRow(lane="s3", kind="s3.put", target=f"bkt/k{n}", key=f"k{n}", ref=None, client_id="c", seq=n,
                    emitted_ns=n, received_ns=n + 1, frame=frame, blob_path=blob_path)


def test_event_is_the_row_plus_delivery_state() -> None:
    assert tuple(f.name for f in fields(Event)) == EVENT_FIELDS
    assert EventRow._fields[FRAME] == "frame"
    assert INSERT_EVENT == ("INSERT INTO events (lane, kind, target, key, ref, client_id, seq, emitted_ns,"
                            " received_ns, frame, blob_path) VALUES (?,?,?,?,?,?,?,?,?,?,?)")


def test_spool_names_files_by_sha256_and_removes_what_is_there(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.create()
    a, b = spool.put(b"body"), spool.put(b"body")
    assert a != b and Path(a).parent == tmp_path / "blobs"  # the same body twice: two files
    assert spool.read(a) == b"body"
    assert spool.sha256(a) == hashlib.sha256(b"body").hexdigest() == Path(a).name.split(".")[0]
    spool.remove([a, a, b])  # already gone is fine
    assert list((tmp_path / "blobs").iterdir()) == []


def test_a_copy_a_crash_left_mid_adopt_is_removed_at_the_next_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.create()
    kept = spool.put(b"a journaled blob")
    old = spool.dir / ".adopt.1.tmp"           # a crash mid-copy, an hour ago
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = spool.dir / ".adopt.2.tmp"         # a copy under way now (a tool opening the journal meanwhile)
    fresh.write_bytes(b"half")
    Journal.open(tmp_path, synchronous="NORMAL").close()
    assert sorted(p.name for p in spool.dir.iterdir()) == sorted([Path(kept).name, ".adopt.2.tmp"])


def test_a_row_survives_dead_letter_and_retry_and_complete_removes_its_blob(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    path = journal.spool.put(b"jpeg")
    journal.write_batch([_row(1, path)])
    [event] = journal.group("s3", "bkt/k1")
    assert event.row == _row(1, path) and event.blobs() == [b"jpeg"]
    assert event.blob_sha256() == hashlib.sha256(b"jpeg").hexdigest()

    journal.dead_letter([event], "http_403", status=403, detail="denied")
    assert journal.group("s3", "bkt/k1") == [] and Path(path).exists()  # kept for a retry
    assert retry_dead(str(tmp_path), ids=None, lane="s3") == 1
    [again] = journal.group("s3", "bkt/k1")
    assert again.row == event.row and again.attempts == 0

    journal.complete([again.id], lane="s3")
    assert journal.count("events") == 0 and not Path(path).exists()
    journal.close()


def test_purging_a_dead_letter_removes_its_blob(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    path = journal.spool.put(b"png")
    journal.write_batch([_row(1, path)])
    journal.dead_letter(journal.group("s3", "bkt/k1"), "http_404")
    assert purge_dead(str(tmp_path), all_=True) == 1
    assert not Path(path).exists() and journal.count("dead_letters") == 0
    journal.close()


def test_every_tool_names_a_missing_journal_the_same_way(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    message = rf"^no journal at {nowhere / 'journal.db'}: is \[journal\] dir right\?$"
    for tool in (lambda: list_dead(str(nowhere)), lambda: retry_dead(str(nowhere), ids=[1]),
                 lambda: read_ref(nowhere, "naver", "sku-1"), lambda: acknowledge(nowhere)):
        with pytest.raises(FileNotFoundError, match=message):
            tool()
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    journal.complete([], lane="naver", refs={"sku-1": "https://img/1"})
    journal.close()
    # The directory or the file itself.
    assert read_ref(tmp_path, "naver", "sku-1") == read_ref(tmp_path / "journal.db", "naver", "sku-1") == "https://img/1"


def test_a_failed_transaction_is_rolled_back_and_told_to_the_health_as_its_writer(tmp_path: Path) -> None:
    health = JournalHealth(tmp_path, Metrics())
    journal = Journal.open(tmp_path, synchronous="NORMAL", health=health, role="delivery")
    with pytest.raises(JournalUnavailable), journal.transaction() as c:
        c.execute("INSERT INTO refs (lane, key, target_id, created_at) VALUES ('notion', 'k', 'page', 0)")
        raise JournalUnavailable(FULL, "no room")
    assert journal.ref("notion", "k") is None and health.state == FULL
    assert "no room" in (health.problem() or "")
    journal.complete([], lane="notion", refs={"k": "page"})  # the delivery writer's next commit clears it
    assert journal.ref("notion", "k") == "page" and health.state == OK
    journal.close()


def test_a_flood_of_rejects_keeps_a_sample_and_counts_them_all(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    metrics = Metrics()
    ingest = Ingest(Config().ingest, journal, {}, metrics)
    garbage = [[b"not json %d" % i] for i in range(5_000)]
    try:
        with caplog.at_level(logging.WARNING, logger="sidecar.ingest"):
            for start in range(0, len(garbage), 1_000):
                ingest.process(garbage[start:start + 1_000])
    finally:
        ingest.stop()
    assert journal.count("rejects") == SAMPLE_PER_WINDOW == 1_000
    assert journal.reject_counts() == {"bad_json": (5_000, 4_000)}
    assert metrics.value("sidecar_events_rejected_total", reason="bad_json") == 5_000
    assert metrics.value("sidecar_rejects_unsampled_total", reason="bad_json") == 4_000
    [line] = [r.getMessage() for r in caplog.records]  # one line, not 5,000
    assert line.startswith("rejected 1000 frame(s) as bad_json, the first: ")
    journal.close()


def test_refs_and_reject_samples_are_forgotten_after_their_time_oldest_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.journal.store
    clock = [1000.0]
    monkeypatch.setattr(sidecar.journal.store, "time", SimpleNamespace(time=lambda: clock[0]))
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    for n in range(5):  # refs k0..k4 written at 1000..1004, reject samples likewise
        clock[0] = 1000.0 + n
        journal.complete([], lane="notion", refs={f"k{n}": f"page-{n}"})
        journal.write_batch([], rejects=[("bad_json", "d", b"x")])
    clock[0] = 1010.0
    journal.complete([], lane="notion", refs={"k0": "page-0b"})  # replaced: young again, last in rowid order

    assert journal.expire(refs_before=1002.5, rejects_before=1000.5) == (2, 1)  # k1, k2 (k0 moved); 1 reject
    assert [journal.ref("notion", f"k{n}") for n in range(5)] == ["page-0b", None, None, "page-3", "page-4"]
    assert journal.expire(refs_before=1002.5, rejects_before=1000.5) == (0, 0)  # nothing older left
    # A step at a time: `limit` rows looked at per call; a young row stops the step.
    assert journal.expire(refs_before=1005.0, rejects_before=1005.0, limit=1) == (1, 1)
    assert journal.expire(refs_before=1005.0, rejects_before=1005.0, limit=10) == (1, 3)
    assert journal.count("refs") == 1 and journal.ref("notion", "k0") == "page-0b"
    assert journal.count("rejects") == 0 and journal.reject_counts() == {"bad_json": (5, 0)}  # counts stay

    # A ref in use is renewed once past half its keep, so it never expires while used.
    journal.refs_keep = 10.0
    written = "SELECT created_at FROM refs WHERE key='k0'"
    clock[0] = 1014.0
    assert journal.ref("notion", "k0") == "page-0b" and journal.conn.execute(written).fetchone() == (1010.0,)
    clock[0] = 1016.0
    assert journal.ref("notion", "k0") == "page-0b" and journal.conn.execute(written).fetchone() == (1016.0,)
    assert journal.expire(refs_before=1016.0 - 10.0, rejects_before=0.0) == (0, 0)
    assert journal.ref("notion", "missing") is None
    journal.close()


class _Buggy:
    """A connector whose route() has a bug."""

    lane, kinds = "buggy", frozenset({"buggy.kind"})

    def route(self, env: wire.Envelope, blobs: list[bytes]) -> str:
        raise KeyError("oops")


def test_a_bug_on_one_frame_rejects_it_with_one_traceback_a_minute(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    ingest = Ingest(Config().ingest, journal, {"buggy": _Buggy()}, Metrics())  # type: ignore[dict-item]
    frames = [[wire.encode("c", n, "buggy.kind", None, None, 0, {})] for n in range(1, 4)]
    try:
        with caplog.at_level(logging.WARNING, logger="sidecar.ingest"):
            ingest.process(frames[:2])
            ingest.process(frames[2:])
    finally:
        ingest.stop()
    assert journal.reject_counts() == {"internal_error": (3, 0)}
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "rejected 2 frame(s) as internal_error, the first: KeyError: 'oops'"
    journal.close()


def test_a_journal_from_before_auto_vacuum_is_converted_at_start_if_small(tmp_path: Path) -> None:
    import sqlite3

    from sidecar.journal.store import SCHEMA

    old = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")  # as an older sidecar made it: no auto_vacuum
    old.executescript(SCHEMA)
    old.close()
    journal = Journal.open(tmp_path, synchronous="NORMAL")
    journal.write_batch([_row(n) for n in range(2_000)])
    journal.complete(range(1, 1_001), lane="s3")
    journal.checkpoint()
    assert journal.conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    assert journal.release_free_pages() > 0 and journal.conn.execute("PRAGMA freelist_count").fetchone()[0] > 0

    assert not journal.give_back_free_pages(max_bytes=1)  # too big to rewrite at start: left, with a warning
    assert journal.give_back_free_pages()
    assert journal.conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    assert journal.count("events") == 1_000 and journal.group("s3", "bkt/k1999")[0].seq == 1999
    journal.complete(range(1_001, 2_001), lane="s3")
    journal.checkpoint()
    before = (tmp_path / "journal.db").stat().st_size
    journal.release_free_pages(10_000)
    journal.checkpoint()
    assert (tmp_path / "journal.db").stat().st_size < before  # now the file shrinks
    assert not journal.give_back_free_pages()  # once is enough
    journal.close()


@pytest.mark.parametrize("n", [1, 15, 16, 17, 255, 256, 257, 300, 529])
def test_a_group_commit_keeps_its_rows_and_their_order_however_many_a_statement_takes(tmp_path: Path,
                                                                                        n: int) -> None:
    journal = Journal.open(tmp_path, synchronous="OFF")
    rows = [_row(i) for i in range(1, n + 1)]
    journal.write_batch(rows[:1])
    journal.write_batch([tuple(r) for r in rows[1:]])  # plain tuples, as ingest makes them
    got = journal.conn.execute(f"SELECT {', '.join(EventRow._fields)} FROM events ORDER BY id").fetchall()
    assert got == [tuple(r) for r in rows]
    journal.close()
