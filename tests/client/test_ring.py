"""The shared-memory ring on its own: layout, wrap-around, back-pressure, a
producer and the real reader in separate processes, and untrusted rings."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import ring
from client.ring import FILE_HEADER, MIN_RING_BYTES, OFF_HINT, RingWriter
from client.transport import QueueFull, TransportError
from sidecar.ingest.rings import Rings
from sidecar.ops.metrics import Metrics

from ..support import ROOT

pytestmark = pytest.mark.timeout(120)


class V1Writer:
    """A version-1 producer as the previous client wrote its ring: the sidecar's
    read position, wake and quarantine bytes in the producer's own file.
    Minimal: one lap, single-part records."""

    def __init__(self, directory: Path, client_id: str, capacity: int = MIN_RING_BYTES) -> None:
        self.path = str(directory / f"{client_id}.ring")
        self.doorbell = str(directory / ring.DOORBELL)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
        os.ftruncate(self.fd, FILE_HEADER + capacity)
        os.pwrite(self.fd, struct.pack("<8sIIQIIQ", ring.MAGIC_V1, 1, 0, capacity, os.getpid(), 0, time.time_ns()), 0)
        os.pwrite(self.fd, client_id.encode(), ring.OFF_CLIENT_ID)
        os.pwrite(self.fd, b"\1", ring.OFF_WAKE)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.capacity = capacity
        self.pos = 0
        self.doorbells = 0

    def send(self, frame: bytes) -> None:
        rec = ring.record_bytes(len(frame))
        assert self.pos + rec <= self.capacity, "V1Writer writes one lap only"
        buf = bytearray(rec)
        ring.packer(len(frame))(buf, 0, len(frame), 1, 0, 0, 0, frame, self.pos + rec)
        os.pwrite(self.fd, bytes(buf), FILE_HEADER + self.pos)
        self.pos += rec
        if os.pread(self.fd, 1, ring.OFF_WAKE) == b"\1":  # as v1 did: clear, check, ring
            os.pwrite(self.fd, b"\0", ring.OFF_WAKE)
            os.pwrite(self.fd, struct.pack("<Q", self.pos), ring.OFF_HINT)
            self.doorbells += 1
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(b"\1", self.doorbell)
                except OSError:
                    pass

    @property
    def read_pos(self) -> int:
        return int(struct.unpack("<Q", os.pread(self.fd, 8, ring.OFF_READ))[0])

    @property
    def quarantined(self) -> bool:
        return os.pread(self.fd, 1, ring.OFF_QUARANTINED) == b"\1"

    def close(self) -> None:
        os.pwrite(self.fd, struct.pack("<Q", self.pos), ring.OFF_HINT)
        os.pwrite(self.fd, b"\1", ring.OFF_CLOSED)
        os.close(self.fd)


def reader(directory: Path) -> Rings:
    rings = Rings(str(directory), Metrics())
    rings.open()
    return rings


def read_all(rings: Rings) -> list[list[bytes]]:
    """One ingest cycle: adopt, read, acknowledge, then the upkeep an empty read triggers."""
    rings.maintain(time.monotonic(), force=True)
    got = rings.read(1_000_000)
    rings.ack()
    rings.maintain(time.monotonic(), force=True)
    return got


def quarantined(rings: Rings) -> float:
    return rings.metrics.total("sidecar_rings_quarantined_total")


@pytest.mark.parametrize("checksum", [False, True], ids=["commit-mark", "crc32"])
def test_records_come_back_whole_and_in_order_across_thousands_of_wraps(tmp_path: Path, checksum: bool) -> None:
    w = RingWriter.create(str(tmp_path / "r"), "c1", capacity=MIN_RING_BYTES, checksum=checksum)
    rings = reader(tmp_path / "r")
    sent: list[list[bytes]] = []
    got: list[list[bytes]] = []
    n = 0
    for _ in range(300):
        while True:  # fill the ring, then drain it: every wrap position is met
            parts = [b"%d:" % n + b"x" * (n % 301)]
            if n % 13 == 0:
                parts += [os.urandom(n % 200), b""]
            try:
                if len(parts) == 1:
                    w.send(parts[0])
                else:
                    w.send_blobs(parts[0], parts[1:])
            except QueueFull:
                break
            sent.append(parts)
            n += 1
        got += read_all(rings)
    assert got == sent and len(sent) > 50_000
    w.close()
    rings.close()


def test_a_full_ring_refuses_without_blocking_and_takes_again_once_acknowledged(tmp_path: Path) -> None:
    w = RingWriter.create(str(tmp_path), "c1", capacity=MIN_RING_BYTES)
    rings = reader(tmp_path)
    accepted = 0
    with pytest.raises(QueueFull):
        while True:
            w.send(b"y" * 100)
            accepted += 1
    # All of it but the few KiB kept for a closing message.
    assert accepted == (MIN_RING_BYTES - ring.LAST_WORD_BYTES) // ring.record_bytes(100)
    got = rings.read(10)      # read, but not yet committed: the space stays taken
    with pytest.raises(QueueFull):
        w.send(b"y" * 100)
    rings.ack()
    w.send(b"y" * 100)        # acknowledged: taken again
    assert len(got) == 10
    w.close()
    rings.close()


def test_the_producer_rings_the_doorbell_only_when_the_reader_asked(tmp_path: Path) -> None:
    w = RingWriter.create(str(tmp_path), "c1", capacity=MIN_RING_BYTES)
    w.send(b"first")             # a ring no sidecar adopted yet rings on its first record...
    w.send(b"second")            # ...and only then
    assert w.doorbells == 1 and not w.adopted
    rings = reader(tmp_path)
    assert w.adopted             # the reader made its ack file
    for _ in range(100):
        w.send(b"busy")          # the reader is awake: no syscalls
    assert w.doorbells == 1
    assert len(read_all(rings)) == 102
    rings.arm()                  # the reader goes to sleep
    rings.arm()                  # (again: the generation moves once until the ring yields a record)
    w.send(b"wake up")
    w.send(b"again")
    assert w.doorbells == 2
    assert rings.drain_doorbell() == 1
    assert len(read_all(rings)) == 2
    rings.arm()                  # asleep again after reading: a new generation to answer
    w.send(b"once more")
    assert w.doorbells == 3
    w.close()
    rings.close()


def test_a_ring_whose_producer_is_gone_is_drained_then_removed(tmp_path: Path) -> None:
    script = (f"from client.ring import RingWriter\n"
              f"w = RingWriter.create({str(tmp_path)!r}, 'gone', capacity=65536)\n"
              f"for n in range(100): w.send(b'%d' % n)\n"
              f"import os; os._exit(0)  # no close(): as if killed\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=30)
    path = tmp_path / "gone.ring"
    assert path.exists()
    rings = reader(tmp_path)
    got = read_all(rings)
    assert [m[0] for m in got] == [b"%d" % n for n in range(100)]
    read_all(rings)              # empty now, and nobody holds its lock: removed
    assert not path.exists() and not rings.rings
    rings.close()


def test_a_live_producers_empty_ring_stays(tmp_path: Path) -> None:
    w = RingWriter.create(str(tmp_path), "alive", capacity=MIN_RING_BYTES)
    rings = reader(tmp_path)
    read_all(rings)
    read_all(rings)
    assert Path(w.path).exists() and len(rings.rings) == 1
    w.close()
    read_all(rings)
    read_all(rings)
    assert not Path(w.path).exists()
    rings.close()


def corrupt_after_two_records(tmp_path: Path, how: str) -> RingWriter:
    w = RingWriter.create(str(tmp_path), f"bad-{how}", capacity=MIN_RING_BYTES)
    w.send(b"one")
    w.send(b"two")
    after = 2 * ring.record_bytes(3)  # where a third record would start
    with open(w.path, "r+b") as f:
        # Each as the producer would have gone on: its hint says it wrote more.
        f.seek(OFF_HINT)
        f.write(struct.pack("<Q", after + 4096))
        f.seek(FILE_HEADER + after)
        if how == "size":      # a header that claims more than half the ring
            f.write(struct.pack("<IHHII", 1 << 30, 1, 0, 0, 0))
        elif how == "parts":   # a committed record whose part table does not add up
            body = struct.pack("<3I", 5, 5, 99) + b"x" * 10
            rec = ring.record_bytes(len(body))
            f.write(struct.pack("<IHHII", len(body), 3, 0, 0, 0) + body.ljust(rec - 24, b"\0")
                    + struct.pack("<Q", after + rec))
        elif how == "garbage":  # bytes that never commit
            f.write(os.urandom(64))
        elif how == "truncated":
            f.truncate(FILE_HEADER + 16)
    return w


@pytest.mark.parametrize("how", ["size", "parts", "garbage", "truncated"])
def test_a_corrupt_ring_is_quarantined_and_the_others_go_on(tmp_path: Path, how: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sidecar.ingest.rings.STALL_SECONDS", 0.0)
    good = RingWriter.create(str(tmp_path), "good", capacity=MIN_RING_BYTES)
    bad = corrupt_after_two_records(tmp_path, how)
    rings = reader(tmp_path)
    good.send(b"fine")
    got = [m[0] for m in read_all(rings)]
    got += [m[0] for m in read_all(rings)]   # the stall check runs on an empty read
    got += [m[0] for m in read_all(rings)]
    assert b"fine" in got
    if how != "truncated":   # the records before the broken one are journaled first
        assert b"one" in got and b"two" in got
    assert quarantined(rings) == 1
    assert not Path(bad.path).exists()
    assert len(os.listdir(tmp_path / "quarantine")) == 1
    assert bad.quarantined                   # the producer is told, through its own mapping
    good.send(b"still fine")
    assert [m[0] for m in read_all(rings)] == [b"still fine"]
    good.close()
    rings.close()


def test_files_that_are_not_rings_are_quarantined_not_followed(tmp_path: Path) -> None:
    rings_dir = tmp_path / "r"
    rings = reader(rings_dir)
    (rings_dir / "junk.ring").write_bytes(b"not a ring at all")
    (tmp_path / "target").write_bytes(b"\0" * (FILE_HEADER + MIN_RING_BYTES))
    os.symlink(tmp_path / "target", rings_dir / "link.ring")
    read_all(rings)
    read_all(rings)
    assert quarantined(rings) == 2           # each once
    assert sorted(n.split(".ring")[0] for n in os.listdir(rings_dir / "quarantine")) == ["junk", "link"]
    assert (tmp_path / "target").read_bytes() == b"\0" * (FILE_HEADER + MIN_RING_BYTES)  # never followed
    assert not rings.rings
    rings.close()


def test_a_client_whose_ring_was_quarantined_starts_a_new_one_and_continues_its_sequence(tmp_path: Path) -> None:
    from client import Client, wire

    endpoint = f"ipc://{tmp_path}/q.sock"
    rings = reader(tmp_path / "q.rings")
    c = Client(endpoint, ring_bytes=MIN_RING_BYTES)
    assert c.emit("webhook.post", {"n": 1})
    read_all(rings)
    # A producer maps its ack file within a millisecond of adoption, as it
    # emits; here at once, so that the next emit surely hears of the quarantine.
    assert c._transport is not None and c._transport.adopted  # type: ignore[attr-defined]
    first = next(iter(rings.rings.values()))
    rings.quarantine(first, "test")
    assert c.emit("webhook.post", {"n": 2}) is False   # learnt on this emit; counted
    assert c.emit("webhook.post", {"n": 3}) is True
    assert c.stats()["dropped"] == {"ring_quarantined": 1}
    events = [wire.decode(m[0]) for m in read_all(rings)]
    # The refused event took no sequence number; events the sidecar had not
    # read before it set the ring aside would show as a gap.
    assert [(e.seq, e.payload) for e in events if e.seq] == [(2, {"n": 3})]
    c.close()
    rings.close()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_ring_directory_and_files_keep_their_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        rings = reader(tmp_path / "p")
        w = RingWriter.create(str(tmp_path / "p"), "c", capacity=MIN_RING_BYTES, make_dir=False)
        w.send(b"x")
        read_all(rings)
    finally:
        os.umask(old)
    def mode(*p: str) -> int:
        return os.stat(os.path.join(tmp_path, "p", *p)).st_mode & 0o7777
    assert mode() == 0o3770                    # the group's, sticky: nobody removes another's ring
    assert mode("c.ring") == 0o640             # only its producer writes it
    assert mode("acks") == 0o2750 and mode("acks", "c.ring") == 0o640  # only the sidecar writes these
    assert mode("quarantine") == 0o700 and mode("acks", ".lock") == 0o600
    w.close()
    rings.close()


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--records", "1000000", "--kills", "2"],
                                  ["--records", "300000", "--kills", "1", "--checksum"],
                                  ["--records", "20000", "--kills", "2", "--big"]],
                         ids=["commit-mark", "crc32", "blobs-longer-than-a-chunk"])
def test_stress_producer_and_reader_processes_every_byte_checked_reader_killed_midway(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "bench/ring_stress.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=110)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every byte checked, none lost, none out of order" in out.stdout
    assert "reader killed" in out.stdout and "killed 0 time" not in out.stdout


def test_a_flood_into_the_socket_does_not_starve_the_rings(short_tmp: Path) -> None:
    import zmq

    from client import Client
    from sidecar.config import from_dict
    from sidecar.connectors import build_lanes
    from sidecar.ingest.core import Ingest
    from sidecar.journal.store import Journal

    endpoint = f"ipc://{short_tmp}/f.sock"
    cfg = from_dict({"ingest": {"endpoint": endpoint, "batch_max": 1000}, "journal": {"dir": str(short_tmp / "j")}})
    journal = Journal.open(cfg.journal.dir, synchronous="NORMAL")
    ingest = Ingest(cfg.ingest, journal, {n: s.connector for n, s in build_lanes(cfg).items()}, Metrics())
    ingest.bind()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)  # ingest answers the handshake when it reads: until then they wait here
    push.connect(endpoint)
    for _ in range(5_000):
        push.send(b"garbage")
    with Client(endpoint, strict=True) as c:
        for n in range(10):
            c.emit("webhook.post", {"n": n})
    assert ingest.rings is not None and ingest._sock is not None
    assert ingest._sock.poll(5000)     # the garbage is arriving
    ingest.rings.maintain(time.monotonic(), force=True)
    ingest._cycle(ingest._sock)        # one batch: half of it is the rings'
    # The events (their lane is not configured: rejected as unknown_target) and
    # the closing message all came through in that first batch.
    assert journal.conn.execute("SELECT closed FROM clients WHERE client_id=?", (c.client_id,)).fetchall() == [(1,)]
    push.close(0)
    ctx.term()
    ingest.stop()
    journal.close()


def test_a_stale_long_header_of_an_earlier_lap_is_not_a_record(tmp_path: Path) -> None:
    # Fill one lap exactly with records longer than the reader's chunk, read
    # them all: the reader then stands at the next lap's start, on the first
    # record's stale header, whose trailer says an earlier lap. Not a record,
    # and no reason to wait there (it once spun forever).
    cap = 4 << 20
    w = RingWriter.create(str(tmp_path), "laps", capacity=cap)
    rings = reader(tmp_path)
    first, second = ring.record_bytes(1_500_000), ring.record_bytes(1_100_000)
    got = []
    for body in (b"a" * 1_500_000, b"b" * 1_100_000, b"c" * (cap - first - second - 24)):
        w.send(body)
        got += read_all(rings)
    assert [len(m[0]) for m in got] == [1_500_000, 1_100_000, cap - first - second - 24]
    assert rings.read(10) == []
    w.send(b"next lap")
    assert read_all(rings) == [[b"next lap"]]
    w.close()
    rings.close()


def test_a_prefaulted_ring_works_like_any_other(tmp_path: Path) -> None:
    w = RingWriter.create(str(tmp_path), "pf", capacity=MIN_RING_BYTES, prefault=True)
    rings = reader(tmp_path)
    w.send(b"mapped")
    assert read_all(rings) == [[b"mapped"]]
    w.close()
    rings.close()


def test_a_client_closing_on_a_full_ring_still_says_goodbye(tmp_path: Path) -> None:
    from client import Client, wire

    endpoint = f"ipc://{tmp_path}/full.sock"
    ring.make_ring_dir(str(tmp_path / "full.rings"))  # a sidecar ran once (a Client never makes it)
    c = Client(endpoint, ring_bytes=MIN_RING_BYTES)
    while c.emit("webhook.post", {"pad": "x" * 100}):
        pass                                   # no sidecar: until the ring is full
    sent = c.stats()["sent"]
    c.close()
    rings = reader(tmp_path / "full.rings")
    messages = [wire.decode(m[0]) for m in read_all(rings)]
    assert [e.seq for e in messages if e.seq] == list(range(1, sent + 1))
    assert messages[-1].kind == wire.BYE and messages[-1].payload["sent"] == sent
    rings.close()


def test_a_ring_quarantined_while_full_sends_its_client_to_a_new_ring(tmp_path: Path) -> None:
    from client import Client

    endpoint = f"ipc://{tmp_path}/qf.sock"
    rings = reader(tmp_path / "qf.rings")
    c = Client(endpoint, ring_bytes=MIN_RING_BYTES)
    while c.emit("webhook.post", {"pad": "x" * 100}):
        pass                                   # full: nobody reads
    rings.maintain(time.monotonic(), force=True)
    assert c._transport is not None and c._transport.adopted  # type: ignore[attr-defined]  # (within 1 ms anyway)
    rings.quarantine(next(iter(rings.rings.values())), "test")
    assert c.emit("webhook.post", {"n": 1}) is False   # learnt on the full path: counted...
    assert c.emit("webhook.post", {"n": 2}) is True    # ...and a new ring takes the next one
    assert c.stats()["dropped"]["ring_quarantined"] == 1
    c.close()
    rings.close()


def test_a_ring_passed_only_by_a_wrap_is_acknowledged_and_removed_when_its_producer_dies(tmp_path: Path) -> None:
    # A producer killed between writing a wrap record and the record after it.
    script = (f"from client.ring import RingWriter, HEADER\n"
              f"w = RingWriter.create({str(tmp_path)!r}, 'wrapped', capacity=65536)\n"
              f"for _ in range(2): w.send(b'x' * 28000)\n"   # most of the first lap
              f"import os; os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=30)
    rings = reader(tmp_path)
    assert len(read_all(rings)) == 2
    ring_ = next(iter(rings.rings.values()))
    # Forge what the killed producer left: a wrap record from here to the lap's end.
    pos = ring_.pos
    skip = MIN_RING_BYTES - pos
    with open(ring_.path, "r+b") as f:
        f.seek(FILE_HEADER + pos)
        f.write(struct.pack("<IHHII", skip - 24, 0, ring.REC_WRAP, 0, 0))
        f.seek(FILE_HEADER + pos + skip - 8)
        f.write(struct.pack("<Q", pos + skip))
    read_all(rings)
    read_all(rings)
    assert not rings.rings and not list(tmp_path.glob("*.ring"))
    rings.close()


def test_hostile_positions_and_sizes_quarantine_the_ring_and_never_escape(tmp_path: Path) -> None:
    # A read position at the very end of the u64 range, and a record longer
    # than ingest's limits with a valid trailer: both set aside, no exception.
    # (A version-2 ring's read position is the sidecar's own; a version-1 ring holds it.)
    near_end = V1Writer(tmp_path, "near-end")
    huge = RingWriter.create(str(tmp_path), "huge", capacity=1 << 22)
    near_end.close()
    huge.forget()
    with open(tmp_path / "near-end.ring", "r+b") as f:
        f.seek(ring.OFF_READ)
        f.write(struct.pack("<Q", 2**64 - 48))
    size = 1_500_000
    with open(tmp_path / "huge.ring", "r+b") as f:
        f.seek(FILE_HEADER)
        f.write(struct.pack("<IHHII", size, 1, 0, 0, 0))
        f.seek(FILE_HEADER + ring.record_bytes(size) - 8)
        f.write(struct.pack("<Q", ring.record_bytes(size)))
    rings = Rings(str(tmp_path), Metrics(), max_record=1_000_000)
    rings.open()
    for _ in range(3):
        read_all(rings)
    assert quarantined(rings) == 2 and not rings.rings
    rings.close()


def test_on_a_checksum_ring_an_earlier_laps_record_never_passes_for_this_laps(tmp_path: Path) -> None:
    # As a weakly ordered CPU may show it: this lap's trailer, over the header
    # and body of the record that stood here one lap ago.
    w = RingWriter.create(str(tmp_path), "crc", capacity=MIN_RING_BYTES, checksum=True)
    rings = reader(tmp_path)
    w.send(b"lap one")
    rec = ring.record_bytes(7)
    assert read_all(rings) == [[b"lap one"]]
    rest = MIN_RING_BYTES - rec
    for length in (24576, 24576, rest - 2 * 24576):  # the rest of the lap, exactly
        w.send(b"f" * (length - 24))
        assert len(read_all(rings)) == 1
    ring_ = next(iter(rings.rings.values()))
    assert ring_.pos % MIN_RING_BYTES == 0, ring_.pos
    with open(w.path, "r+b") as f:
        f.seek(FILE_HEADER + rec - 8)
        f.write(struct.pack("<Q", ring_.pos + rec))
    assert rings.read(10) == []
    w.close()
    rings.close()


def test_a_file_that_cannot_be_moved_aside_is_left_alone_without_leaking(tmp_path: Path) -> None:
    rings = reader(tmp_path)
    os.rmdir(tmp_path / "quarantine")          # anyone in the group can: moves now fail
    (tmp_path / "junk.ring").write_bytes(b"junk")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        rings.maintain(time.monotonic(), force=True)
    assert len(os.listdir("/proc/self/fd")) <= before + 1
    assert quarantined(rings) == 1            # counted and logged once
    rings.close()


def test_the_quarantine_mark_reaches_the_producer_through_the_sidecars_file(tmp_path: Path) -> None:
    w = RingWriter.create(str(tmp_path), "sticky", capacity=MIN_RING_BYTES)
    rings = reader(tmp_path)
    w.send(b"one")
    read_all(rings)
    rings.quarantine(next(iter(rings.rings.values())), "test")
    assert w.quarantined                      # read from acks/sticky.ring, which stays as a tombstone
    with pytest.raises(TransportError, match="quarantined"):
        w.send(b"two")                        # the bumped generation sends it to look
    w.forget()
    rings.close()


def test_the_room_an_idle_ring_leaves_in_a_batch_goes_to_the_busy_ones(tmp_path: Path) -> None:
    busy = RingWriter.create(str(tmp_path), "busy")
    idle = RingWriter.create(str(tmp_path), "idle")
    for n in range(500):
        busy.send(b"b%d" % n)
    for n in range(5):
        idle.send(b"i%d" % n)
    rings = reader(tmp_path)
    rings.maintain(time.monotonic(), force=True)
    got = [m[0] for m in rings.read(100)]
    # A full batch: the idle ring's 5, and 95 from the busy one (not just its first share of 50), each in order.
    assert len(got) == 100 and [m for m in got if m.startswith(b"i")] == [b"i%d" % n for n in range(5)]
    assert [m for m in got if m.startswith(b"b")] == [b"b%d" % n for n in range(95)]
    rings.ack()
    rest = [m[0] for m in rings.read(1_000)]
    assert rest == [b"b%d" % n for n in range(95, 500)]
    busy.close()
    idle.close()
    rings.close()
