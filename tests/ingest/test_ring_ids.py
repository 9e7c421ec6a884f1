"""Client ids that name their uid (security review F3/F4): a ring whose id
claims another uid is refused unread, ids of the previous client version still
work (bound in the journal as before), a ring's temporary name does not
reveal its id, and a name someone else took makes the Client go on under a
fresh id instead of dropping its events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from client import ring
from client.ring import MIN_RING_BYTES, RingWriter
from sidecar.ingest import ring_adopt
from sidecar.ingest.rings import Rings
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

from ..client.test_ring import read_all, reader
from .test_ring_trust import python_for_others

pytestmark = pytest.mark.timeout(300)

Opened = tuple[Journal, Path, Rings]


@pytest.fixture
def journaled(tmp_path: Path) -> Iterator[Opened]:
    """A journal and a ring directory read with its owner bindings, closed after the test."""
    journal = Journal.open(tmp_path / "journal", synchronous="NORMAL")
    rdir = tmp_path / "rings"
    ring.make_ring_dir(str(rdir))
    rings = Rings(str(rdir), Metrics(), owners=journal.clients)
    rings.open()
    yield journal, rdir, rings
    rings.close()
    journal.close()


def test_a_new_client_id_names_its_uid_within_the_id_rules() -> None:
    cid = ring.new_client_id()
    assert ring.valid_client_id(cid) and ring.id_uid(cid) == os.getuid()
    assert cid.startswith(f"{os.getuid()}u{os.getpid()}-")
    assert ring.id_uid("4242-0a1b2c3d4e5f") is None  # the previous format claims nothing


def test_a_ring_whose_id_claims_another_uid_is_quarantined_unread(journaled: Opened) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    journal, rdir, rings = journaled
    victim_id = "4321u77-0a1b2c3d4e5f"
    forged = RingWriter.create(str(rdir), victim_id, capacity=MIN_RING_BYTES, make_dir=False)
    os.chown(rdir / f"{victim_id}.ring", 12345, -1)   # uid 12345 made it, claiming uid 4321's id
    forged.send(b"forged order")
    mine_id = f"{os.geteuid()}u78-0a1b2c3d4e5f"
    mine = RingWriter.create(str(rdir), mine_id, capacity=MIN_RING_BYTES, make_dir=False)
    mine.send(b"mine")
    assert [m[0] for m in read_all(rings)] == [b"mine"]
    assert rings.metrics.value("sidecar_rings_quarantined_total", reason="wrong_owner") == 1
    assert [n.split(".ring")[0] for n in os.listdir(rdir / "quarantine")] == [victim_id]
    # The id proves its owner: nothing is kept in client_owners for it.
    assert journal.clients.owner(mine_id) is None and journal.clients.owner(victim_id) is None
    for w in (forged, mine):
        w.close()


def test_a_previous_format_id_still_works_and_is_bound_in_the_journal(journaled: Opened) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    journal, rdir, rings = journaled
    old_id = "4242-0a1b2c3d4e5f"                       # a ring of the previous client version
    w = RingWriter.create(str(rdir), old_id, capacity=MIN_RING_BYTES, make_dir=False)
    w.send(b"old client")
    assert [m[0] for m in read_all(rings)] == [b"old client"]
    assert journal.clients.owner(old_id) == os.geteuid()
    forged = RingWriter.create(str(rdir), old_id, capacity=MIN_RING_BYTES, make_dir=False, suffix=".1")
    os.chown(rdir / f"{old_id}.1.ring", 12345, -1)
    forged.send(b"forged order")
    assert read_all(rings) == []
    assert rings.metrics.value("sidecar_rings_quarantined_total", reason="wrong_owner") == 1
    for x in (w, forged):
        x.close()


def test_legacy_bindings_a_uid_adds_to_the_journal_are_capped(journaled: Opened, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_adopt, "MAX_SAVED_PER_UID", 3)
    journal, rdir, rings = journaled
    writers = []
    for n in range(6):
        w = RingWriter.create(str(rdir), f"{n}-0a1b2c3d4e5f", capacity=MIN_RING_BYTES, make_dir=False)
        w.send(b"x")
        writers.append(w)
    assert len(read_all(rings)) == 6                   # all read: the cap is on what is persisted
    (count,) = journal.conn.execute("SELECT count(*) FROM client_owners").fetchone()
    assert count == 3
    for w in writers:
        w.close()


def test_the_temporary_name_does_not_reveal_the_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renamed: list[tuple[str, str]] = []
    real = os.rename

    def spy(src: str, dst: str) -> None:
        renamed.append((src, dst))
        real(src, dst)

    monkeypatch.setattr(os, "rename", spy)
    cid = ring.new_client_id()
    w = RingWriter.create(str(tmp_path), cid, capacity=MIN_RING_BYTES, make_dir=False)
    monkeypatch.undo()
    [(src, dst)] = renamed
    tmp = os.path.basename(src)
    assert dst == str(tmp_path / f"{cid}.ring")
    assert cid not in tmp and cid.split("-")[1] not in tmp
    assert tmp.startswith(".tmp-") and tmp.endswith(ring.RING_SUFFIX + ".tmp") and len(tmp) == 5 + 32 + 9
    w.close()


def test_leftover_temporary_rings_of_both_name_forms_are_removed(tmp_path: Path) -> None:
    from sidecar.ingest import rings as rings_mod
    rings = reader(tmp_path)
    old = os.path.getmtime(tmp_path) - rings_mod.HALF_MADE_SECONDS - 10
    names = [".4242-0a1b2c3d4e5f.ring.tmp", ring.temp_ring_name()]
    for name in names:
        (tmp_path / name).write_bytes(b"killed while making it")
        os.utime(tmp_path / name, (old, old))
    young = tmp_path / ring.temp_ring_name()
    young.write_bytes(b"being made now")
    rings.maintain(10**9, force=True)
    assert not any((tmp_path / n).exists() for n in names) and young.exists()
    rings.close()


def test_a_taken_ring_name_makes_the_client_go_on_under_a_fresh_id(two_users: tuple[int, int, int]) -> None:
    uid_thief, uid_victim, gid = two_users
    base = Path(tempfile.mkdtemp(prefix="f34-ids-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        d = base / "ingest.rings"
        d.mkdir()
        os.chown(d, 0, gid)
        rings = reader(d)
        taken = f"{uid_victim}u1-0a1b2c3d4e5f"
        # The thief's empty file under the name the victim is about to take (sticky: not replaceable).
        fd = os.open(d / f"{taken}.ring", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)
        os.chown(d / f"{taken}.ring", uid_thief, gid)
        script = base / "victim.py"
        script.write_text(textwrap.dedent(f"""
            import json, sys
            from client import core
            first = iter([{taken!r}])
            fresh = core._new_client_id
            core._new_client_id = lambda: next(first, None) or fresh()
            c = core.Client({f"ipc://{base}/ingest.sock"!r}, transport="ring")
            sent = [c.emit("notion.page.create", {{"n": n}}) for n in range(3)]
            print(json.dumps({{"id": c.client_id, "sent": sent, "dropped": dict(c._dropped)}}), flush=True)
            sys.stdin.readline()
            c.close()
        """))
        os.chmod(script, 0o644)
        p = subprocess.Popen([*python_for_others(), str(script)], user=uid_victim, group=gid, extra_groups=[gid],
                             cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line, p.stderr.read() if p.stderr else ""
        report = json.loads(line)
        assert report["sent"] == [True, True, True], report
        assert report["id"] != taken and ring.id_uid(report["id"]) == uid_victim
        got = [orjson.loads(m[0]) for m in read_all(rings)]
        assert [(e[1], e[2], e[4]) for e in got if e[3] == "notion.page.create"] == [(report["id"], n + 1, None)
                                                                       for n in range(3)]
        p.communicate("\n", timeout=60)
        assert p.returncode == 0
        rings.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
