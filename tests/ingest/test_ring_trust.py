"""Trust at the ring directory's edges (issue 17): producers of the group
cannot harm each other's rings, nothing placed in the directory stops the
reader, descriptors and batch memory stay bounded, and version-1 rings of
producers still running the previous client are read beside version 2."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from client import ring
from client.ring import FILE_HEADER, MIN_RING_BYTES, NoRingDirectory, RingWriter
from sidecar.ingest import rings as rings_mod
from sidecar.ingest.rings import Rings
from sidecar.ops import lock
from sidecar.ops.metrics import Metrics

from ..client.test_ring import V1Writer, read_all, reader
from ..support import ROOT

pytestmark = pytest.mark.timeout(300)


# -- version 1 and version 2 side by side ------------------------------------------


def test_a_version_1_and_a_version_2_producer_feed_one_reader(tmp_path: Path) -> None:
    rings = reader(tmp_path)
    old = V1Writer(tmp_path, "old-client")
    new = RingWriter.create(str(tmp_path), "new-client", capacity=MIN_RING_BYTES, make_dir=False)
    for n in range(50):
        old.send(b"v1:%d" % n)
        new.send(b"v2:%d" % n)
    got = [m[0] for m in read_all(rings)]
    assert [m for m in got if m.startswith(b"v1")] == [b"v1:%d" % n for n in range(50)]
    assert [m for m in got if m.startswith(b"v2")] == [b"v2:%d" % n for n in range(50)]
    by_name = {r.name: r for r in rings.rings.values()}
    assert by_name["old-client.ring"].header.version == 1 and by_name["new-client.ring"].header.version == 2
    # Each acknowledged where its producer looks: v1 in its own file, v2 in the sidecar's.
    assert old.read_pos == by_name["old-client.ring"].acked > 0
    assert new.acknowledged == by_name["new-client.ring"].acked > 0
    assert not (tmp_path / "acks" / "old-client.ring").exists()
    # Both wake the sleeping reader their own way.
    rings.arm()
    old.send(b"v1:late")
    new.send(b"v2:late")
    # Each rang on its first record (a new ring) and once now.
    assert old.doorbells == 2 and new.doorbells == 2
    assert rings.drain_doorbell() == 4
    assert sorted(m[0] for m in read_all(rings)) == [b"v1:late", b"v2:late"]
    old.close()
    new.close()
    read_all(rings)
    read_all(rings)
    assert not rings.rings and not list(tmp_path.glob("*.ring"))   # both drained and removed
    assert not list((tmp_path / "acks").glob("*.ring"))             # with the v2 ring's ack file
    assert rings.metrics.total("sidecar_rings_quarantined_total") == 0
    rings.close()


def test_a_client_does_not_make_a_ring_directory_no_sidecar_made(tmp_path: Path) -> None:
    with pytest.raises(NoRingDirectory, match="is the sidecar running"):
        RingWriter.create(str(tmp_path / "ingest.sokc.rings"), "c1", capacity=MIN_RING_BYTES, make_dir=False)
    assert not (tmp_path / "ingest.sokc.rings").exists()


def test_identity_comes_from_the_ring_and_its_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client id"):
        RingWriter.create(str(tmp_path), "x" * 65, capacity=MIN_RING_BYTES)
    with pytest.raises(ValueError, match="client id"):
        RingWriter.create(str(tmp_path), "evil\nline", capacity=MIN_RING_BYTES)
    good = RingWriter.create(str(tmp_path), "alice", capacity=MIN_RING_BYTES)
    again = RingWriter.create(str(tmp_path), "alice", capacity=MIN_RING_BYTES, suffix=".2")
    forged = RingWriter.create(str(tmp_path), "mallory", capacity=MIN_RING_BYTES)
    forged.forget()
    os.rename(tmp_path / "mallory.ring", tmp_path / "bob.ring")  # a header naming another client than its file
    rings = reader(tmp_path)
    assert sorted(r.client_id for r in rings.rings.values()) == ["alice", "alice"]
    assert rings.metrics.total("sidecar_rings_quarantined_total") == 1
    assert [n.split(".ring")[0] for n in os.listdir(tmp_path / "quarantine")] == ["bob"]
    # Each message comes with the ring it was read from: ingest checks the id its frame claims against it.
    good.send(b"from alice")
    again.send(b"from alice's second ring")
    got = {(r.name, r.client_id): [m[0] for m in ms] for r, ms in rings.read_by_ring(100)}
    assert got == {("alice.ring", "alice"): [b"from alice"], ("alice.2.ring", "alice"): [b"from alice's second ring"]}
    good.close()
    again.close()
    rings.close()


# -- one sidecar per ring directory ------------------------------------------------


def test_a_second_reader_of_the_same_ring_directory_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = reader(tmp_path / "ingest.rings")
    # ipc://X and ipc://X.sock: two endpoints, one directory.
    assert ring.ring_dir(f"ipc://{tmp_path}/ingest") == ring.ring_dir(f"ipc://{tmp_path}/ingest.sock")
    second = Rings(str(tmp_path / "ingest.rings"), Metrics())
    with pytest.raises(lock.Locked, match=f"pid {os.getpid()}"):
        second.open()
    first.close()
    second.open()  # free again once the first let go
    second.close()


def test_the_lock_names_another_process_and_dies_with_it(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from sidecar.ops.lock import acquire
        held = acquire({str(path)!r}, "journal directory")
        print("held", flush=True)
        sys.stdin.readline()
    """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(lock.Locked, match=f"journal directory is in use by another sidecar \\(pid {holder.pid}"):
            lock.acquire(str(path), "journal directory")
    finally:
        holder.kill()
        holder.wait()
    held = lock.acquire(str(path), "journal directory")  # the kernel dropped it with its holder
    assert path.read_text() == f"{os.getpid()}\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    held.release()


# -- nothing in the directory stops a start -----------------------------------------


def make_thing(path: Path, kind: str, outside: Path) -> None:
    """Something of `kind` at `path`, owned by another user (nobody) as a member of the group would make it."""
    make_own(path, kind, outside)
    os.lchown(path, 65534, 65534)


def make_own(path: Path, kind: str, outside: Path) -> None:
    if kind == "file":
        path.write_bytes(b"in the way")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    elif kind == "symlink":
        os.symlink(outside, path)
    elif kind == "fifo":
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["file", "directory", "symlink", "fifo"])
@pytest.mark.parametrize("name", ["quarantine", "doorbell", "acks"])
def test_whatever_occupies_the_sidecars_entries_is_moved_aside_never_followed(tmp_path: Path, name: str,
                                                                             kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    d = tmp_path / "r"
    d.mkdir()
    make_thing(d / name, kind, outside)
    outside_mode = outside.stat().st_mode
    rings = reader(d)                          # no exception: it starts
    for own, want in (("quarantine", stat.S_ISDIR), ("acks", stat.S_ISDIR), ("doorbell", stat.S_ISSOCK)):
        st = os.lstat(d / own)
        assert want(st.st_mode) and st.st_uid == os.geteuid(), own
    assert sorted(os.listdir(outside)) == ["precious"] and (outside / "precious").read_bytes() == b"keep"
    assert outside.stat().st_mode == outside_mode  # never chmod-ed through a link
    # And the directory works: a ring flows, a broken one is set aside into the real quarantine/.
    w = RingWriter.create(str(d), "after", capacity=MIN_RING_BYTES, make_dir=False)
    w.send(b"fine")
    (d / "junk.ring").write_bytes(b"junk")
    assert [m[0] for m in read_all(rings)] == [b"fine"]
    assert [n.split(".ring")[0] for n in os.listdir(d / "quarantine")] == ["junk"]
    rings.maintain(time.monotonic() + rings_mod.CLEAN_SECONDS + 1)  # what was moved aside goes at the next tidy
    assert not [n for n in os.listdir(d) if n.startswith(".aside.")]
    assert sorted(os.listdir(outside)) == ["precious"]
    w.close()
    rings.close()


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
def test_a_ring_name_held_by_something_else_is_moved_aside_unopened(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    d = tmp_path / "r"
    rings = reader(d)
    make_thing(d / "odd.ring", kind, outside)
    read_all(rings)
    read_all(rings)
    assert rings.metrics.total("sidecar_rings_quarantined_total") == 1 and not rings.rings
    assert not os.path.lexists(d / "odd.ring") and os.listdir(outside) == []
    rings.close()


def test_quarantine_keeps_its_bounds_oldest_out_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rings_mod, "QUARANTINE_FILES", 5)
    rings = reader(tmp_path)
    for n in range(12):
        (tmp_path / f"junk{n:02d}.ring").write_bytes(b"junk")
        read_all(rings)
    rings.maintain(time.monotonic() + rings_mod.CLEAN_SECONDS + 1)
    left = sorted(n.split(".ring")[0] for n in os.listdir(tmp_path / "quarantine"))
    assert left == [f"junk{n:02d}" for n in range(7, 12)]
    rings.close()


# -- descriptors ---------------------------------------------------------------------

LOW_NOFILE = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    from sidecar.ingest.rings import Rings
    from sidecar.ops.metrics import Metrics
    clock = [time.monotonic()]   # one clock for reads and upkeep, injected: the upkeep runs ahead of real time
    rings = Rings(sys.argv[1], Metrics(), fd_budget=int(sys.argv[3]), clock=lambda: clock[0])
    rings.open()
    now = clock[0]
    first = [m[0] for m in rings.read(100_000)]
    rings.ack()
    live = [r.name for r in rings.rings.values() if r.name.startswith("live")]
    cycles = 0
    while any(n.endswith(".ring") and not n.startswith("live") for n in __import__("os").listdir(sys.argv[1])):
        cycles += 1
        if cycles > 400:
            break
        now += 1
        clock[0] = now
        rings.maintain(now)
        rings.read(100_000)
        rings.ack()
        clock[0] = now + 0.6
        rings.maintain(now + 0.6)
        now += 0.6
    m = rings.metrics
    print(json.dumps({"first": [f.decode() for f in first if f.startswith(b"live")], "live": live,
                      "held": len(rings.rings), "budget": rings.fd_budget, "cycles": cycles,
                      "quarantined": m.total("sidecar_rings_quarantined_total"),
                      "short": m.value("sidecar_rings_deferred_total", reason="fd_shortage"),
                      "over_budget": m.value("sidecar_rings_deferred_total", reason="fd_budget"),
                      "over_uid": m.value("sidecar_rings_deferred_total", reason="fd_budget_uid")}))
""")


def closed_rings(d: Path, n: int) -> None:
    """`n` well-formed rings of producers gone, one record each."""
    for i in range(n):
        w = RingWriter.create(str(d), f"closed-{i}", capacity=MIN_RING_BYTES, allocate=False)
        w.send(b"closed %d" % i)
        w.close()


@pytest.mark.parametrize("budget", [0, 100_000], ids=["budget-from-rlimit", "budget-past-rlimit:EMFILE"])
def test_two_thousand_closed_rings_do_not_keep_a_live_producer_out(tmp_path: Path, budget: int) -> None:
    d = tmp_path / "r"
    ring.make_ring_dir(str(d))
    closed_rings(d, 2_000)
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from client.ring import RingWriter
        w = RingWriter.create({str(d)!r}, "live-1", capacity={MIN_RING_BYTES}, make_dir=False)
        for n in range(20):
            w.send(b"live %d" % n)
        print("ready", flush=True)
        sys.stdin.readline()
        w.close()
    """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdout.readline() == "ready\n"
        out = subprocess.run([sys.executable, "-c", LOW_NOFILE, str(d), "256", str(budget)], cwd=ROOT,
                             capture_output=True, text=True, timeout=240, check=False)
    finally:
        live.communicate("\n", timeout=30)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    # The live producer's ring was adopted first and read in the first batch.
    assert got["live"] == ["live-1.ring"] and got["first"] == [f"live {n}" for n in range(20)]
    assert got["quarantined"] == 0                    # an fd shortage quarantines nothing...
    assert got["cycles"] <= 400 and got["held"] == 1  # ...and every closed ring was drained and removed
    if budget:
        assert got["short"] > 0                       # the descriptors really ran out, and it went on
    else:
        # One uid's rings: past three quarters of the budget they wait as over its share (fd_budget_uid).
        assert got["budget"] == 64 and got["short"] == 0 and got["over_budget"] + got["over_uid"] > 0
    assert not [n for n in os.listdir(d) if n.startswith("closed")]


def test_eleven_hundred_rings_that_never_become_readable_go_within_bounded_upkeep(tmp_path: Path) -> None:
    d = tmp_path / "r"
    ring.make_ring_dir(str(d))
    # Four kinds, none with a producer: data that never commits behind a hint,
    # empty files, headers naming another client, and rings never written to.
    for i in range(1_100):
        kind = i % 4
        if kind == 1:
            (d / f"empty-{i}.ring").write_bytes(b"")
            continue
        w = RingWriter.create(str(d), f"never-{i}", capacity=MIN_RING_BYTES, allocate=False)
        w.forget()
        path = d / f"never-{i}.ring"
        if kind == 0:
            with open(path, "r+b") as f:
                f.seek(ring.OFF_HINT)
                f.write((4096).to_bytes(8, "little"))
                f.seek(FILE_HEADER)
                f.write(b"\x07" * 64)
        elif kind == 2:
            os.rename(path, d / f"other-{i}.ring")
    clock = [1000.0]
    rings = Rings(str(d), Metrics(), fd_budget=64, clock=lambda: clock[0])
    rings.open()
    fds = len(os.listdir("/proc/self/fd"))
    calls = 0
    while list(d.glob("*.ring")) and calls < 200:
        calls += 1
        clock[0] += 0.6                        # injected: nothing sleeps
        rings.maintain(clock[0])
        rings.read(10_000)
        rings.ack()
    assert not list(d.glob("*.ring")) and not rings.rings
    assert calls <= 2 * (1_100 // 64 + 1) + 4, calls  # at most two looks per budget's worth
    assert len(os.listdir("/proc/self/fd")) <= fds     # nothing kept open
    q = rings.metrics.total("sidecar_rings_quarantined_total")
    assert q == 275 * 3                                # removed, the never-written ones; set aside, the rest
    assert len(os.listdir(d / "quarantine")) <= rings_mod.QUARANTINE_FILES  # and quarantine/ stays bounded
    rings.close()


# -- memory: one batch's bytes ---------------------------------------------------------


def test_a_batch_takes_at_most_its_byte_budget_and_one_record_however_many_rings_hold_big_ones(
        tmp_path: Path) -> None:
    big = 40 << 20
    writers = []
    for i in range(24):
        w = RingWriter.create(str(tmp_path), f"blob-{i}", capacity=128 << 20, allocate=False)
        w.send_blobs(b"frame %d" % i, [bytes([i]) * big])
        writers.append(w)
    rings = reader(tmp_path)
    rings.maintain(time.monotonic(), force=True)
    seen: set[bytes] = set()
    reads = 0
    while len(seen) < 24 and reads < 48:
        reads += 1
        got = rings.read(1_000)
        size = sum(len(p) for m in got for p in m)
        assert size <= rings_mod.BATCH_BYTES + big + 4096, (reads, size)
        assert got, "every batch takes at least one record"
        seen |= {m[0] for m in got}
        rings.ack()
        del got
    assert seen == {b"frame %d" % i for i in range(24)}
    for w in writers:
        w.close()
    rings.close()


# -- producers of the group, as two real users ---------------------------------------------


def python_for_others() -> list[str]:
    """A Python 3.11 that other users can run (this one lives under /root), with
    this tree and the venv's packages on its path; the script file follows."""
    exe = "/usr/bin/python3"
    probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"], capture_output=True,
                           text=True, check=False) if os.path.exists(exe) else None
    if probe is None or probe.stdout.strip() != "True":
        pytest.skip("no system Python 3.11 the test users can run")
    site = next(Path(ROOT, ".venv", "lib").glob("python3.11/site-packages"))
    return [exe, "-c", f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(site)!r}]; sys.argv = sys.argv[1:]; "
                       "exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))"]


def test_a_producer_running_as_another_user_cannot_harm_a_ring(two_users: tuple[int, int, int]) -> None:
    uid_a, uid_b, gid = two_users
    base = Path(tempfile.mkdtemp(prefix="h17-trust-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        d = base / "ingest.rings"
        d.mkdir()
        os.chown(d, 0, gid)                    # as the unit makes it: the sidecar's, the trading group's
        rings = reader(d)
        py = python_for_others()
        script_b = base / "b.py"
        script_b.write_text(textwrap.dedent(f"""
            import json, sys
            from client.ring import RingWriter
            w = RingWriter.create({str(d)!r}, "victim", capacity={MIN_RING_BYTES}, make_dir=False)
            for n in range(3):
                w.send(b"b%d" % n)
            print("ready", flush=True)
            sys.stdin.readline()
            w.send(b"b3")
            print(json.dumps({{"adopted": w.adopted, "acked": w.acknowledged, "quarantined": w.quarantined}}),
                  flush=True)
            w.close()
        """))
        os.chmod(script_b, 0o644)
        b = subprocess.Popen([*py, str(script_b)], user=uid_b, group=gid, extra_groups=[gid], cwd="/",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert b.stdin is not None and b.stdout is not None
        assert b.stdout.readline() == "ready\n", b.stderr.read() if b.stderr else ""
        assert [m[0] for m in read_all(rings)] == [b"b0", b"b1", b"b2"]
        victim = d / "victim.ring"
        before = victim.stat()
        assert (before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode)) == (uid_b, gid, 0o640)

        attack = textwrap.dedent(f"""
            import errno, json, os
            d = {str(d)!r}
            def attempt(f):
                try:
                    f()
                    return "DONE"
                except OSError as exc:
                    return errno.errorcode[exc.errno]
            out = {{
                "write": attempt(lambda: os.close(os.open(d + "/victim.ring", os.O_WRONLY))),
                "truncate": attempt(lambda: os.truncate(d + "/victim.ring", 0)),
                "rename": attempt(lambda: os.rename(d + "/victim.ring", d + "/stolen.ring")),
                "delete": attempt(lambda: os.unlink(d + "/victim.ring")),
                "ack_write": attempt(lambda: os.close(os.open(d + "/acks/victim.ring", os.O_WRONLY))),
                "ack_create": attempt(lambda: os.close(os.open(d + "/acks/mine", os.O_WRONLY | os.O_CREAT))),
                "acks_rename": attempt(lambda: os.rename(d + "/acks", d + "/gone")),
                "doorbell_delete": attempt(lambda: os.unlink(d + "/doorbell")),
                "quarantine_list": attempt(lambda: os.listdir(d + "/quarantine")),
                "read": attempt(lambda: open(d + "/victim.ring", "rb").read(8)),
                "own_ring": attempt(lambda: os.close(os.open(d + "/mine.ring.tmp", os.O_WRONLY | os.O_CREAT, 0o640))),
            }}
            print(json.dumps(out))
        """)
        script_a = base / "a.py"
        script_a.write_text(attack)
        os.chmod(script_a, 0o644)
        a = subprocess.run([*py, str(script_a)], user=uid_a, group=gid,
                           extra_groups=[gid], cwd="/", capture_output=True, text=True, timeout=60, check=False)
        assert a.returncode == 0, a.stderr
        got = json.loads(a.stdout)
        assert got == {"write": "EACCES", "truncate": "EACCES", "rename": "EPERM", "delete": "EPERM",
                       "ack_write": "EACCES", "ack_create": "EACCES", "acks_rename": "EPERM",
                       "doorbell_delete": "EPERM", "quarantine_list": "EACCES",
                       "read": "DONE",         # the group reads rings: the README says so
                       "own_ring": "DONE"}     # and makes its own
        after = victim.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size,
                                                                   before.st_mtime_ns)
        out, err = b.communicate("\n", timeout=30)
        assert b.returncode == 0, err
        report = json.loads(out.splitlines()[-1])
        assert report == {"adopted": True, "acked": 3 * ring.record_bytes(2), "quarantined": False}
        assert [m[0] for m in read_all(rings)] == [b"b3"]
        rings.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_tidying_removes_dead_producers_half_made_rings_and_stale_ack_files(tmp_path: Path) -> None:
    rings = reader(tmp_path)
    old = time.time() - rings_mod.HALF_MADE_SECONDS - rings_mod.TOMBSTONE_SECONDS - 10
    (tmp_path / ".dead.ring.tmp").write_bytes(b"killed while making it")
    os.utime(tmp_path / ".dead.ring.tmp", (old, old))
    (tmp_path / ".young.ring.tmp").write_bytes(b"being made now")
    orphan = tmp_path / "acks" / "gone.ring"           # a removal interrupted between its two unlinks
    orphan.write_bytes(ring.ACK_MAGIC + bytes(ring.ACK_BYTES - 8))
    w = RingWriter.create(str(tmp_path), "set-aside", capacity=MIN_RING_BYTES, make_dir=False)
    w.send(b"x")
    read_all(rings)
    rings.quarantine(next(iter(rings.rings.values())), "test")
    tombstone = tmp_path / "acks" / "set-aside.ring"
    later = time.monotonic() + rings_mod.CLEAN_SECONDS + 1
    rings.maintain(later)
    assert not orphan.exists() and not (tmp_path / ".dead.ring.tmp").exists()
    assert (tmp_path / ".young.ring.tmp").exists()
    assert tombstone.exists() and w.quarantined      # kept while its producer may still look
    os.utime(tombstone, (old, old))
    rings.maintain(later + rings_mod.CLEAN_SECONDS + 1)
    assert not tombstone.exists()
    w.forget()
    rings.close()


# -- the security review's findings (adoption after a stall, identity by owner, the directory, fds) ----------


def test_a_ring_adopted_after_an_ingest_stall_is_read_in_full_though_its_producer_is_gone(tmp_path: Path) -> None:
    clock = [1000.0]
    rings = Rings(str(tmp_path), Metrics(), clock=lambda: clock[0])
    rings.open()
    rings.maintain(clock[0], force=True)
    w = RingWriter.create(str(tmp_path), "stalled", capacity=MIN_RING_BYTES, make_dir=False)
    for n in range(20):
        assert w.send(b"event %d" % n) is not False
    w.close()                                  # the producer exits while the sidecar is stopped
    clock[0] += 60.0                           # ...for a minute (SIGSTOP): injected, nothing sleeps
    assert rings.drain_doorbell() >= 1         # its first record rang: adopted through the doorbell
    assert [r.name for r in rings.rings.values()] == ["stalled.ring"]
    clock[0] += 0.6
    rings.maintain(clock[0], force=True)       # the upkeep that used to set it aside unread
    got = rings.read(1000)
    rings.ack()
    assert [m[0] for m in got] == [b"event %d" % n for n in range(20)]
    assert rings.metrics.total("sidecar_rings_quarantined_total") == 0
    clock[0] += 0.6
    rings.read(1000)
    rings.maintain(clock[0], force=True)
    assert not rings.rings and not list(tmp_path.glob("*.ring"))  # drained, then removed
    rings.close()


def test_a_ring_with_no_producer_is_judged_only_from_its_first_read(tmp_path: Path) -> None:
    clock = [1000.0]
    rings = Rings(str(tmp_path), Metrics(), clock=lambda: clock[0])
    rings.open()
    w = RingWriter.create(str(tmp_path), "late", capacity=MIN_RING_BYTES, make_dir=False)
    w.send(b"one")
    w.close()
    rings.scan()
    clock[0] += 3600.0                         # however long before ingest reads it...
    rings.maintain(clock[0], force=True)
    assert list(rings.rings) and rings.metrics.total("sidecar_rings_quarantined_total") == 0
    assert [m[0] for m in rings.read(10)] == [b"one"]   # ...it is read first
    rings.close()


def test_a_ring_of_a_client_id_made_by_another_uid_is_quarantined_unread(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    rings = reader(tmp_path)
    victim = RingWriter.create(str(tmp_path), "victim", capacity=MIN_RING_BYTES, make_dir=False)
    victim.send(b"mine")
    assert [m[0] for m in read_all(rings)] == [b"mine"]
    # The suffix form the victim's Client uses for its next ring, made by someone else.
    forged = RingWriter.create(str(tmp_path), "victim", capacity=MIN_RING_BYTES, make_dir=False, suffix=".1")
    os.chown(tmp_path / "victim.1.ring", 12345, -1)
    forged.send(b"forged order")
    assert read_all(rings) == []
    assert rings.metrics.value("sidecar_rings_quarantined_total", reason="wrong_owner") == 1
    assert [n.split(".ring")[0] for n in os.listdir(tmp_path / "quarantine")] == ["victim.1"]
    # The victim's own next ring is still its own.
    again = RingWriter.create(str(tmp_path), "victim", capacity=MIN_RING_BYTES, make_dir=False, suffix=".2")
    again.send(b"mine again")
    assert [m[0] for m in read_all(rings)] == [b"mine again"]
    for w in (victim, forged, again):
        w.close()
    rings.close()


def test_a_client_ids_owner_outlives_a_restart_and_is_pruned_with_the_client(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    from sidecar.journal.store import Journal
    rdir = tmp_path / "rings"
    ring.make_ring_dir(str(rdir))
    journal = Journal.open(tmp_path / "journal", synchronous="NORMAL")
    rings = Rings(str(rdir), Metrics(), owners=journal.clients)
    rings.open()
    victim = RingWriter.create(str(rdir), "victim", capacity=MIN_RING_BYTES, make_dir=False)
    victim.send(b"mine")
    assert [m[0] for m in read_all(rings)] == [b"mine"]
    victim.close()
    read_all(rings)                            # its producer gone and read to the end: the ring goes
    rings.close()
    assert journal.clients.owner("victim") == os.geteuid()
    # Before the next start, someone else makes the victim's next ring.
    forged = RingWriter.create(str(rdir), "victim", capacity=MIN_RING_BYTES, make_dir=False, suffix=".1")
    os.chown(rdir / "victim.1.ring", 12345, -1)
    forged.send(b"forged order")
    restarted = Rings(str(rdir), Metrics(), owners=journal.clients)
    restarted.open()
    assert read_all(restarted) == []
    assert restarted.metrics.value("sidecar_rings_quarantined_total", reason="wrong_owner") == 1
    again = RingWriter.create(str(rdir), "victim", capacity=MIN_RING_BYTES, make_dir=False, suffix=".2")
    again.send(b"mine again")
    assert [m[0] for m in read_all(restarted)] == [b"mine again"]
    for w in (forged, again):
        w.close()
    restarted.close()
    # A binding goes with its client when the client is pruned, and a ring that
    # never wrote an event (no clients row) loses its binding after as long.
    journal.write_batch(events=[], rejects=[], clients={"victim": (2, 0, True, None, True)})
    journal.clients.bind_owner("silent", 777)
    journal.conn.execute("UPDATE client_owners SET bound_at = bound_at - 100")
    journal.conn.execute("UPDATE clients SET updated_at = updated_at - 100 WHERE client_id = 'victim'")
    journal.write_batch(events=[], rejects=[], clients={"other": (1, 0, True, None, True)})
    assert journal.clients.prune(keep_seconds=50) == ["victim"]
    assert journal.clients.owner("victim") is None and journal.clients.owner("silent") is None
    journal.close()


def test_a_ring_directory_another_uid_owns_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another uid")
    from sidecar.errors import IngestError
    d = tmp_path / "ingest.rings"
    d.mkdir()
    os.chmod(d, 0o3777)                        # as a local user squatting on /tmp would make it
    os.chown(d, 12345, -1)
    rings = Rings(str(d), Metrics())
    with pytest.raises(IngestError, match=f"{d}.*uid 12345.*chown it to uid {os.geteuid()}"):
        rings.open()
    assert os.listdir(d) == []                 # nothing made in it, nothing read from it
    os.chown(d, os.geteuid(), -1)              # once it is the sidecar's, it is used
    rings.open()
    rings.close()


def test_one_uid_filling_the_fd_budget_with_live_empty_rings_leaves_room_for_another(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another uid")
    ring.make_ring_dir(str(tmp_path))
    hogs = []
    for i in range(8):                         # live producers (each holds its lock) that never write
        hogs.append(RingWriter.create(str(tmp_path), f"hog-{i}", capacity=MIN_RING_BYTES, make_dir=False,
                                      allocate=False))
        os.chown(tmp_path / f"hog-{i}.ring", 12345, -1)
    rings = Rings(str(tmp_path), Metrics(), fd_budget=8)
    rings.open()
    assert sorted({r.owner_uid for r in rings.rings.values()}) == [12345] and len(rings.rings) == 6
    assert rings.metrics.value("sidecar_rings_deferred_total", reason="fd_budget_uid") == 2
    newcomer = RingWriter.create(str(tmp_path), "newcomer", capacity=MIN_RING_BYTES, make_dir=False)
    newcomer.send(b"hello")
    assert [m[0] for m in read_all(rings)] == [b"hello"]
    assert rings.metrics.total("sidecar_rings_quarantined_total") == 0
    for w in [*hogs, newcomer]:
        w.close()
    rings.close()
