"""Blobs outside the ring (issue 19): a Client leaves large blobs and Paths as
files in the sidecar's inbox, the ring record names them (REC_PART_REFS), and
the ring reader hands them on in emit order, waiting for a file still being
written, refusing one that is not the ring owner's or never comes."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client import Client, blobs, ring
from client.core import EmitError
from sidecar.errors import Reject
from sidecar.ingest.inbox import BlobRef, Inbox
from sidecar.ingest.ring_blobs import MAX_HELD
from sidecar.ingest.rings import Rings
from sidecar.journal.spool import Spool
from sidecar.ops.metrics import Metrics

from ..support import ROOT, wait_until

pytestmark = pytest.mark.timeout(120)


def setup(tmp: Path) -> tuple[Rings, Inbox, str]:
    """A ring directory read by `Rings`, an inbox published in it; the endpoint a Client uses."""
    directory = tmp / "ingest.rings"
    inbox = Inbox(str(tmp / "inbox"))
    rings = Rings(str(directory), Metrics(), inbox=inbox)
    rings.open()
    inbox.open(str(directory))
    return rings, inbox, f"ipc://{tmp}/ingest.sock"


def drain(rings: Rings) -> list[list]:
    """Every event read (control messages left out), not acknowledged yet."""
    rings.maintain(time.monotonic(), force=True)
    return events(rings.read(1_000_000))


def events(got: list[list]) -> list[list]:
    return [m for m in got if b'"_client.' not in m[0]]


def test_large_blobs_become_inbox_files_in_emit_order_and_go_once_journaled(tmp_path: Path) -> None:
    rings, inbox, endpoint = setup(tmp_path)
    big = [os.urandom(blobs.THRESHOLD + n) for n in range(3)]
    with Client(endpoint, strict=True) as c:
        c.emit("webhook.post", {"n": 0})
        c.emit("s3.put", {"bucket": "b", "key": "k1"}, blob=big[0])
        c.emit("s3.put", {"bucket": "b", "key": "small"}, blob=b"tiny")  # stays in the record
        c.emit("s3.put", {"bucket": "b", "key": "k2"}, blob=bytearray(big[1]))
        c.emit("webhook.post", {"n": 4})
        c.emit("naver.images.upload", None, key="p", blob=[big[2], b"\x89PNG small"])
    got = drain(rings)
    assert [len(m) for m in got] == [1, 2, 2, 2, 1, 3]
    refs = [m[1] for m in got if len(m) > 1 and isinstance(m[1], BlobRef)]
    assert [r.name.rsplit(".", 2)[0] for r in refs] == [f"{c.client_id}.{s}.0" for s in (2, 4, 6)]
    assert [Path(r.path).read_bytes() for r in refs] == big
    assert got[2][1] == b"tiny" and got[5][2] == b"\x89PNG small"
    assert all(r.error is None and len(r) == len(b) for r, b in zip(refs, big, strict=True))
    # Acknowledged: the journal holds them now, so the inbox does not.
    rings.ack()
    assert os.listdir(inbox.path) == []
    assert ring.DEFAULT_RING_BYTES <= 16 << 20 and c.ring_bytes == ring.DEFAULT_RING_BYTES


def test_a_path_is_linked_at_once_and_later_changes_before_ingest_are_seen(tmp_path: Path) -> None:
    rings, inbox, endpoint = setup(tmp_path)
    report = tmp_path / "report.csv"
    report.write_bytes(b"a,b\n" * 100_000)
    with Client(endpoint, strict=True) as c:
        assert c.emit("s3.put", {"bucket": "b", "key": "r"}, blob=report)
        (name,) = os.listdir(inbox.path)
        assert (Path(inbox.path) / name).stat().st_ino == report.stat().st_ino  # a link, not a copy
        with report.open("ab") as f:
            f.write(b"late,line\n")
        report.unlink()  # harmless: the inbox holds its own name for it
        with pytest.raises(EmitError, match=r"bad_blob: blob file .*No such file"):
            c.emit("s3.put", {"bucket": "b", "key": "gone"}, blob=report)
    (m,) = drain(rings)[:1]
    assert Path(m[1].path).read_bytes().endswith(b"late,line\n") and m[1].nlink == 1


def test_a_file_still_being_written_holds_back_its_record_and_the_ones_after(tmp_path: Path) -> None:
    rings, inbox, endpoint = setup(tmp_path)
    with Client(endpoint, strict=True) as c:
        offload = c._blobs._inbox(c._transport)  # type: ignore[arg-type]
        assert offload is not None
        gate = offload._cv  # the helper writes under no lock; hold its queue instead
        with gate:
            c.emit("s3.put", {"bucket": "b", "key": "k"}, blob=os.urandom(1 << 20))
            c.emit("webhook.post", {"after": True})
            rings.maintain(time.monotonic(), force=True)
            assert rings.read(100) == []  # waiting for the file, and so is the event behind it
            assert not next(iter(rings.rings.values())).stalled(time.monotonic() + 60)
        wait_until(lambda: [n.rsplit(".", 2)[0] for n in os.listdir(inbox.path)] == [f"{c.client_id}.1.0"], timeout=10,
                   what="the helper thread's file")
        # A ring found empty is read again after a short idle probe (ring_reader.py): ask until it is.
        batches: list = []
        wait_until(lambda: batches.extend(events(rings.read(100))) or len(batches) >= 2, timeout=10,
                   what="the held-back record and the one behind it")
        assert [len(m) for m in batches] == [2, 1] and isinstance(batches[0][1], BlobRef)


def test_a_producer_killed_before_its_file_was_complete_gets_blob_missing(tmp_path: Path) -> None:
    rings, inbox, endpoint = setup(tmp_path)
    code = textwrap.dedent(f"""
        import os, sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from client import Client, blobs
        c = Client({endpoint!r}, strict=True)
        begun = threading.Event()
        def half(self, name, job):  # killed mid-write: half the file under its temporary name
            open(os.path.join(self.inbox, "." + name + ".tmp"), "wb").write(b"half")
            begun.set()
        blobs.Offload._write = half
        c.emit("s3.put", {{"bucket": "b", "key": "k"}}, blob=os.urandom(1 << 20))
        c.emit("webhook.post", {{"after": 1}})
        begun.wait(30)
        os._exit(0)   # no close: the file is never renamed
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    got = drain(rings)
    assert got[0][1].error == "blob_missing" and got[1] != [] and len(got) == 2
    assert [n for n in os.listdir(inbox.path) if n.endswith(".tmp")]  # the half file, never taken for whole
    rings.ack()
    assert inbox.clean(set(), time.time() + 3600) == 1 and os.listdir(inbox.path) == []


def test_a_file_of_another_owner_or_name_is_refused(tmp_path: Path) -> None:
    rings, inbox, endpoint = setup(tmp_path)
    with Client(endpoint, strict=True) as c:
        # A record naming a file another user made (names are unguessable now: the record is forged too).
        forged = Path(inbox.path) / blobs.blob_name(c.client_id, 1, 0)
        forged.write_bytes(b"forged")
        os.chown(forged, 4242, 4242)
        frame = b'[1,"x",9,"s3.put",null,null,0,{}]'
        c._transport.send_refs(frame, [forged.name])  # type: ignore[union-attr]
        c._transport.send_refs(frame, ["../../etc/passwd"])  # type: ignore[union-attr]
        got = drain(rings)
    assert got[0][1].error == "blob_wrong_owner"
    assert got[1][1].error == "blob_bad_name"


def test_the_helper_queue_is_bounded_in_bytes_and_a_drop_is_named(tmp_path: Path) -> None:
    _rings, _inbox, endpoint = setup(tmp_path)
    with Client(endpoint, strict=True) as c:
        offload = c._blobs._inbox(c._transport)  # type: ignore[arg-type]
        assert offload is not None
        offload.max_pending = 3 << 20
        with offload._cv:
            ok = [c.emit("s3.put", {"bucket": "b", "key": f"k{n}"}, blob=os.urandom(1 << 20)) for n in range(5)]
        assert ok == [True, True, True, False, False]
        assert c.stats()["dropped"] == {"blob_backlog": 2} and c.stats()["sent"] == 3


def test_without_an_inbox_blobs_stay_in_the_ring(tmp_path: Path) -> None:
    directory = tmp_path / "ingest.rings"
    rings = Rings(str(directory), Metrics())
    rings.open()
    data = os.urandom(1 << 20)
    with Client(f"ipc://{tmp_path}/ingest.sock", strict=True) as c:
        c.emit("s3.put", {"bucket": "b", "key": "k"}, blob=data)
    got = drain(rings)
    assert got[0][1] == data


def test_ring_bytes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ring.RING_BYTES_ENV, "128M")
    assert ring.default_ring_bytes() == 128 << 20
    monkeypatch.setenv(ring.RING_BYTES_ENV, "100M")
    with pytest.raises(ValueError, match="power of two"):
        ring.default_ring_bytes()


def test_a_batch_budget_spans_all_rings_so_large_inline_records_come_one_batch_at_a_time(tmp_path: Path) -> None:
    directory = tmp_path / "ingest.rings"
    rings = Rings(str(directory), Metrics(), batch_bytes=8 << 20)
    rings.open()
    writers = [ring.RingWriter.create(str(directory), f"c{n}", capacity=32 << 20, make_dir=False) for n in range(6)]
    for w in writers:
        w.send_blobs(b"frame", [os.urandom(5 << 20)])
    rings.maintain(time.monotonic(), force=True)
    sizes = []
    for _ in range(6):
        got = rings.read(1000)
        rings.ack()
        sizes.append(len(got))
    assert sizes == [1] * 6  # before: every ring's record in the first batch, 30 MiB for a budget of 8
    for w in writers:
        w.close()


# -- the security review's findings: a file swapped after its check, squatted names --------------


def checked(tmp: Path, body: bytes) -> tuple[Inbox, BlobRef, Path]:
    """An inbox file of this user's, resolved (opened and checked) as the ring reader does."""
    inbox = Inbox(str(tmp / "inbox"))
    (tmp / "rings").mkdir()
    (tmp / "rings" / "acks").mkdir()
    inbox.open(str(tmp / "rings"))
    name = blobs.blob_name("c1", 1, 0)
    path = Path(inbox.path) / name
    path.write_bytes(body)
    ref = inbox.resolve(name.encode(), "c1", os.geteuid(), alive=lambda: True)
    assert ref is not None and ref.error is None and ref.fd >= 0 and len(ref) == len(body)
    return inbox, ref, path


def swap(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


@pytest.mark.parametrize("swapped_in", ["symlink", "fifo"])
def test_a_file_swapped_after_its_check_is_never_followed(tmp_path: Path, swapped_in: str) -> None:
    secret = tmp_path / "credentials"
    secret.write_bytes(b"SECRET" * 20_000)
    os.chmod(secret, 0o600)
    body = os.urandom(200_000)
    _inbox, ref, path = checked(tmp_path, body)
    swap(path, (lambda p: p.symlink_to(secret)) if swapped_in == "symlink" else (lambda p: os.mkfifo(p)))
    spool = Spool(tmp_path / "journal")
    spool.create()
    kept = spool.adopt(ref.fd, ref.size)  # a FIFO opened by path here would block forever
    assert Path(kept).read_bytes() == body and spool.sha256(kept) == hashlib.sha256(body).hexdigest()
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    ref.close()
    ref.close()  # twice: harmless


def test_a_fifo_or_symlink_under_a_blob_name_is_refused_at_once(tmp_path: Path) -> None:
    inbox, ref, path = checked(tmp_path, b"x")
    ref.close()
    os.unlink(path)
    os.mkfifo(path)
    done: list = []
    t = threading.Thread(target=lambda: done.append(inbox.resolve(path.name.encode(), "c1", os.geteuid(),
                                                                  alive=lambda: True)), daemon=True)
    t.start()
    t.join(10)  # O_NONBLOCK: an open of a FIFO with no writer returns at once
    assert not t.is_alive() and done[0].error == "blob_not_a_file" and done[0].fd == -1
    os.unlink(path)
    path.symlink_to(tmp_path / "inbox")
    assert inbox.resolve(path.name.encode(), "c1", os.geteuid(), alive=lambda: True).error == "blob_not_a_file"


@pytest.mark.parametrize("change", ["grown", "shrunk"])
def test_a_file_that_changes_size_after_its_check_is_rejected_not_hashed_for_minutes(tmp_path: Path,
                                                                                      change: str) -> None:
    _inbox, ref, path = checked(tmp_path, os.urandom(100_000))
    os.truncate(path, 1 << 40 if change == "grown" else 10)  # sparse: a TiB costs nothing to make
    spool = Spool(tmp_path / "journal")
    spool.create()
    with pytest.raises(Reject) as caught:
        spool.adopt(ref.fd, ref.size)
    assert caught.value.reason == "blob_changed"
    assert os.listdir(spool.dir) == []  # nothing half copied left behind


def test_names_are_not_guessable_so_planted_files_do_not_disturb_the_victim(tmp_path: Path) -> None:
    rings, inbox, endpoint = setup(tmp_path)
    body = os.urandom(1 << 17)
    with Client(endpoint, strict=True) as c:
        for old in (f"{c.client_id}.1.0.blob", f".{c.client_id}.1.0.blob.tmp"):  # the old, predictable names
            planted = Path(inbox.path) / old
            planted.write_bytes(b"planted")
            os.chown(planted, 4242, 4242)
        assert c.emit("s3.put", {"bucket": "b", "key": "k"}, blob=body)
    (m,) = drain(rings)
    assert m[1].error is None and m[1].name != blobs.blob_name(c.client_id, 1, 0)
    assert Path(m[1].path).read_bytes() == body and c._blobs.offload.failed == 0  # type: ignore[union-attr]
    a, b = blobs.blob_name("c", 1, 0), blobs.blob_name("c", 1, 0)
    assert a != b and a.startswith("c.1.0.") and len(a.split(".")[3]) == blobs.TOKEN_HEX


def test_the_helper_survives_a_failed_write_and_reports_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _rings, inbox, _endpoint = setup(tmp_path)
    offload = blobs.Offload(inbox.path)
    offload.put("no-such-dir/a.blob", b"x" * 10)  # the .tmp cannot be made: an OSError in the helper
    offload.put("no-such-dir/b.blob", b"x" * 10)
    good = blobs.blob_name("c1", 3, 0)
    offload.put(good, b"y" * 10)
    assert offload.close(30)
    assert offload.failed == 2 and offload.written == 1 and offload.pending == 0
    assert offload._thread is not None and offload._thread.is_alive()
    assert (Path(inbox.path) / good).read_bytes() == b"y" * 10
    assert len([r for r in caplog.records if "could not write blob" in r.message]) == 1  # logged once


def test_a_ring_holds_at_most_max_held_blob_files_open_until_the_ack(tmp_path: Path) -> None:
    rings, _inbox, endpoint = setup(tmp_path)
    n = MAX_HELD + 6
    with Client(endpoint, strict=True) as c:
        for k in range(n):
            assert c.emit("s3.put", {"bucket": "b", "key": f"k{k}"}, blob=k.to_bytes(4, "big") * (blobs.THRESHOLD // 4))
    first = drain(rings)
    assert len(first) == MAX_HELD and all(m[1].fd >= 0 for m in first)  # the rest wait for the ack
    rings.ack()
    assert all(m[1].fd == -1 for m in first)  # closed at the ack
    rest: list = []
    wait_until(lambda: rest.extend(events(rings.read(1000))) or len(rest) >= n - MAX_HELD, timeout=10,
               what="the records after the ack")
    assert [m[1].head[:4] for m in first + rest] == [k.to_bytes(4, "big") for k in range(n)]
