"""Blobs: what an emit with a large body costs the loop, into the ring or over ZeroMQ.

    python bench/blobs.py             # 64 KiB to 16 MiB, 40 emits each
    python bench/blobs.py --smoke

The ring copies a blob into shared memory during `emit`; ZeroMQ (above
pyzmq's 64 KiB zero-copy threshold) only queues a reference and its IO
thread copies the bytes into the socket afterwards, off the loop's thread,
but the bytes then live in this process until the sidecar has read them, and
are lost if either process dies first. A sidecar reads both; each emit's
blob is fresh random data of the given size.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bench_sidecar, parse_args, tempdir, write_json
from client import Client

SIZES = (64 * 1024, 1024 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024)


def run(smoke: bool) -> dict[str, Any]:
    count = 5 if smoke else 40
    sizes = SIZES[:2] if smoke else SIZES
    out: dict[str, Any] = {}
    with tempdir() as d, bench_sidecar(d, synchronous="NORMAL") as sc:
        for transport in ("ring", "zmq"):
            with Client(sc.endpoint, strict=True, transport=transport) as c:
                for size in sizes:
                    blobs = [os.urandom(size) for _ in range(count)]
                    times = []
                    for n, blob in enumerate(blobs):
                        while True:
                            t = time.perf_counter_ns()
                            ok = c.emit("s3.put", {"bucket": "b", "key": f"k{n}"}, blob=blob)
                            elapsed = time.perf_counter_ns() - t
                            if ok:
                                break
                            # The sidecar spools each blob to disk (fsync): when it falls behind,
                            # the ring fills. That is back-pressure, not what this measures.
                            assert set(c.stats()["dropped"]) == {"queue_full"}, c.stats()
                            time.sleep(0.1)
                        times.append(elapsed)
                        time.sleep(0.02)
                    out[f"{transport} {size >> 10} KiB"] = {
                        "median_us": statistics.median(times) / 1000, "max_us": max(times) / 1000,
                        "gb_per_s": size / statistics.median(times)}
    return out


def main() -> int:
    args = parse_args(__doc__)
    result = run(args.smoke)
    print("## Blobs\n")
    print("What one emit with a blob costs the loop: the ring copies it into shared memory (the first lap "
          "also pays for the ring's pages); ZeroMQ above 64 KiB queues a reference, and the bytes stay in "
          "the producer's memory until sent.\n")
    print("| transport, blob | median µs | max µs | GB/s at the median |\n|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['median_us']:,.0f} | {r['max_us']:,.0f} | {r['gb_per_s']:.2f} |")
    write_json(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
