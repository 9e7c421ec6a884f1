"""Ring stress: a producer process and the sidecar's real reader, every byte checked.

    python bench/ring_stress.py --records 20000000               # ~1 min here
    python bench/ring_stress.py --records 2000000 --kills 3      # the reader is SIGKILLed 3 times midway
    python bench/ring_stress.py --checksum                       # the aarch64 path (CRC-32 per record)
    python bench/ring_stress.py --big --records 20000            # blobs longer than the reader's chunk
    python bench/ring_stress.py --client --kills 3               # events through Client.emit (the compiled
                                                                 # path if built; SIDECAR_PURE_PYTHON=1: pure)

The producer writes records whose bytes are a function of their index, of
varied length (8 to ~600 bytes; every 97th a multi-part record with blobs),
into a small ring so it wraps thousands of times and is often full. The
reader (`sidecar.ingest.rings.Rings`, in its own process) checks each record byte
for byte, "commits" the index it reached to a file and only then acknowledges
the ring, as ingest does with the journal. Killed with SIGKILL and restarted,
it reads again from the last acknowledged position: records up to its last
commit come again and are skipped (as the journal's sequence check does);
any other order, or any wrong byte, fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client import wire
from client.compiled import fastemit
from client.ring import RingWriter
from client.transport import QueueFull

RING_BYTES = 1 << 20
BIG_RING_BYTES = 16 << 20
PATTERN = bytes(range(256)) * 4
BIG = bytes(range(256)) * (5 << 12)   # 5 MiB to slice blobs from


def record(n: int, big: bool = False) -> list[bytes]:
    """The parts of record n: deterministic, varied in length and shape; with
    `big`, every 50th carries a blob of 1 to 5 MiB (longer than the reader's
    1 MiB chunk, and making wraps longer than half the ring)."""
    head = n.to_bytes(8, "little")
    if big and n % 50 == 7:
        size = (1 << 20) + (n * 7919) % (4 << 20)
        return [head, BIG[n % 256:n % 256 + size]]
    start = n % 256
    body = head + PATTERN[start:start + n % 600]
    if n % 97 == 0:
        return [body, head * (1 + n % 50), b"", bytes([n & 0xFF]) * (n % 3000)]
    return [body]


def event(n: int) -> tuple[str | None, dict]:
    """Event n of a --client run: key and payload, varied in length."""
    return (f"k{n}" if n % 3 else None), {"n": n, "text": PATTERN[:n % 600].hex()[: n % 600]}


def produce_events(directory: str, count: int) -> None:
    """--client: a Client emits the events; a full ring is waited out and the event emitted again."""
    from client import Client

    endpoint = "ipc://" + directory[: -len(".rings")] + ".sock"
    client = Client(endpoint, ring_bytes=RING_BYTES)
    full = 0
    for n in range(count):
        key, payload = event(n)
        while not client.emit("webhook.post", payload, key=key):
            if set(client.stats()["dropped"]) != {"queue_full"}:
                raise SystemExit(f"producer: emit dropped for {client.stats()['dropped']}")
            full += 1
            time.sleep(0.0001)
    client.close()
    print(f"producer: {count} events, {full} times full", flush=True)


def produce(directory: str, count: int, checksum: bool, big: bool, client: bool = False) -> None:
    if client:
        return produce_events(directory, count)
    ring = RingWriter.create(directory, "stress", capacity=BIG_RING_BYTES if big else RING_BYTES, checksum=checksum)
    full = 0
    for n in range(count):
        parts = record(n, big)
        while True:
            try:
                if len(parts) == 1:
                    ring.send(parts[0])
                else:
                    ring.send_blobs(parts[0], parts[1:])
                break
            except QueueFull:
                full += 1
                time.sleep(0.0001)
    ring.close()
    print(f"producer: {count} records, {full} times full, {ring.doorbells} doorbells", flush=True)


def consume(directory: str, count: int, commit_file: str, big: bool, client: bool = False) -> None:
    """The reader process: verify, commit, acknowledge; exits once `count` are verified."""
    from sidecar.ingest.rings import Rings
    from sidecar.ops.metrics import Metrics

    committed = int(Path(commit_file).read_text()) if os.path.exists(commit_file) else -1
    rings = Rings(directory, Metrics())
    rings.open()
    replayed = 0
    while committed < count - 1:
        rings.maintain(time.monotonic(), force=True)
        got = rings.read(4096)
        if not got:
            time.sleep(0.0005)
            continue
        for parts in got:
            if client:
                env = wire.decode(parts[0])
                if not env.seq:
                    continue  # the client's stats and goodbye
                n = env.seq - 1
            else:
                n = int.from_bytes(parts[0][:8], "little")
            if n <= committed:
                replayed += 1  # read again after a restart: already "journaled"
                continue
            if n != committed + 1:
                raise SystemExit(f"reader: expected record {committed + 1}, got {n}")
            if (client and (env.key, env.payload) != event(n)) or (not client and parts != record(n, big)):
                raise SystemExit(f"reader: record {n} differs from what was written")
            committed = n
        tmp = commit_file + ".tmp"
        Path(tmp).write_text(str(committed))
        os.replace(tmp, commit_file)   # the "journal commit"...
        rings.ack()                    # ...then the acknowledgement
    print(f"reader: verified up to {committed}, {replayed} replayed after restarts", flush=True)


def run(count: int, kills: int, checksum: bool, big: bool, client: bool = False) -> dict[str, float]:
    """One stress run; raises SystemExit if any record is lost, doubled past a
    commit, out of order or not byte for byte what was written."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        ring_dir = os.path.join(d, "stress.rings")
        commit_file = os.path.join(d, "committed")
        me = [sys.executable, __file__]
        started = time.perf_counter()
        flags = [*(["--checksum"] if checksum else []), *(["--big"] if big else []), *(["--client"] if client else [])]
        producer = subprocess.Popen([*me, "--role", "produce", "--dir", ring_dir, "--records", str(count), *flags])
        reader_args = [*me, "--role", "consume", "--dir", ring_dir, "--records", str(count), "--commit", commit_file,
                       *flags]
        if client:
            os.mkdir(ring_dir)  # the sidecar's job: a Client makes no ring directory
        time.sleep(0.2)  # let the producer make the ring
        reader = subprocess.Popen(reader_args)
        done_kills = 0
        while done_kills < kills:
            time.sleep(0.5 + done_kills * 0.3)
            if reader.poll() is not None:
                break
            reader.send_signal(signal.SIGKILL)
            reader.wait()
            done_kills += 1
            reader = subprocess.Popen(reader_args)
        if producer.wait(600) != 0:
            raise SystemExit("producer failed")
        if reader.wait(600) != 0:
            raise SystemExit("reader failed")
        seconds = time.perf_counter() - started
    what = f" emitted by Client ({'compiled' if fastemit else 'pure-Python'} path)" if client else ""
    print(f"{count} records{what}{' (every 50th with a 1-5 MiB blob)' if big else ''} through a "
          f"{(BIG_RING_BYTES if big else RING_BYTES) >> 10} KiB ring in {seconds:.1f} s "
          f"({count / seconds:,.0f}/s), reader killed {done_kills} time(s), checksum {'on' if checksum else 'off'}: "
          "every byte checked, none lost, none out of order")
    return {"records": count, "seconds": seconds, "kills": done_kills}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000_000)
    ap.add_argument("--kills", type=int, default=0)
    ap.add_argument("--checksum", action="store_true")
    ap.add_argument("--big", action="store_true", help="every 50th record carries a 1-5 MiB blob")
    ap.add_argument("--client", action="store_true", help="events emitted by client.Client (its compiled path if built)")
    ap.add_argument("--role", choices=["run", "produce", "consume"], default="run")
    ap.add_argument("--suite", action="store_true",
                    help="the three runs of RESULTS.md: 20M records, 5M with CRC-32, 20k with 1-5 MiB blobs")
    ap.add_argument("--smoke", action="store_true", help="the suite, small (CI)")
    ap.add_argument("--json", type=Path, help="the suite's figures")
    ap.add_argument("--out", type=Path, help="unused; accepted like every benchmark's")
    ap.add_argument("--dir")
    ap.add_argument("--commit")
    args = ap.parse_args()
    if args.role == "produce":
        produce(args.dir, args.records, args.checksum, args.big, args.client)
    elif args.role == "consume":
        consume(args.dir, args.records, args.commit, args.big, args.client)
    elif args.suite or args.smoke or args.json:
        n = 20 if args.smoke else 1
        runs = {"commit mark": run(20_000_000 // n // (50 if args.smoke else 1), 3, False, False),
                "CRC-32 (the aarch64 path)": run(5_000_000 // n // (50 if args.smoke else 1), 2, True, False),
                "1-5 MiB blobs": run(20_000 // (10 if args.smoke else 1), 2, False, True),
                f"Client.emit, {'compiled' if fastemit else 'pure-Python'} path":
                    run(2_000_000 // n // (50 if args.smoke else 1), 3, False, False, True)}
        print("\n## Ring stress\n")
        print("A producer process and the sidecar's reader (`sidecar.ingest.rings`) in another, every record checked "
              "byte for byte, the reader SIGKILLed and restarted midway (`python bench/ring_stress.py "
              "--suite`).\n")
        print("| run | records | reader kills | seconds | records/s |\n|---|---|---|---|---|")
        for name, r in runs.items():
            print(f"| {name} | {r['records']:,} | {r['kills']} | {r['seconds']:.1f} | "
                  f"{r['records'] / r['seconds']:,.0f} |")
        if args.json:
            args.json.write_text(json.dumps(runs, indent=2))
    else:
        run(args.records, args.kills, args.checksum, args.big, args.client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
