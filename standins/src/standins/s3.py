"""`python -m standins.s3 --port N --bucket B`: moto's S3 server with a bucket and a signing key, on its own.

Prints one JSON line (url, region, bucket, access_key, secret_key) and serves
until SIGTERM or Ctrl-C; requests must be signed (SigV4) with that key:

    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... with [s3] endpoint_url = URL in the sidecar's config

The server itself is `moto_s3.moto_s3()`, as the tests and the demo use it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from standins.moto_s3 import moto_s3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="moto's S3 server on 127.0.0.1, SigV4 checked, with a bucket")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument("--bucket", default="sidecar-test")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with moto_s3(bucket=args.bucket, region=args.region, port=args.port) as s3:
        print(json.dumps({"url": s3.endpoint, "region": s3.region, "bucket": s3.bucket,
                          "access_key": s3.access_key, "secret_key": s3.secret_key}), flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
