"""`sidecar demo`: the whole path on embedded defaults, in one command, for all four APIs.

Starts loopback stand-ins for every API the sidecar calls, each with its real
rate limit: a Notion simulator (3 requests/s), a Naver Commerce simulator
(2 requests/s, bcrypt-signed tokens), moto's S3 server with SigV4 checking,
and a webhook receiver. A real sidecar process is pointed at them, and a
synthetic trading loop ticking at 1 kHz emits into it:

- every tick: a position page's price (Notion) and a product's price and
  stock (Naver), both hot keys that the sidecar coalesces;
- every 100th tick: a trade page (Notion create), a line in the trade log
  (Notion append) and an alert (webhook);
- at the end: the day's fills as a CSV report (S3) and product images (Naver).

Then it waits for the sidecar to deliver everything and prints what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import Client
from sidecar.errors import MissingExtra

if TYPE_CHECKING:  # the stand-ins are imported when the demo runs: they are not part of the product
    from standins.moto_s3 import MotoS3
    from standins.naver import NaverSimulator
    from standins.notion import NotionSimulator
    from standins.webhook import WebhookReceiver

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
PRODUCTS = (1001, 1002, 1003)
TICK_SECONDS = 0.001
DELIVERY_DEADLINE = 120.0
FROM_CLONE = "pip install -e ./standins -e '.[demo]'"  # the stand-ins' distribution is not on PyPI


def _text(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": content}}]


def _png(seed: int) -> bytes:
    """A tiny valid PNG (1x1 pixel), different per seed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    pixel = zlib.compress(bytes([0, seed % 256, 80, 160]))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0]))
            + chunk(b"IDAT", pixel) + chunk(b"IEND", b""))


def _percentile(values: list[int], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] / 1000


class Loop:
    """The synthetic trading loop; `emit` times every call."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.emitted: Counter[str] = Counter()
        self.costs: list[int] = []

    def emit(self, kind: str, payload: dict[str, Any], **kw: Any) -> None:
        t0 = time.perf_counter_ns()
        ok = self.client.emit(kind, payload, **kw)
        self.costs.append(time.perf_counter_ns() - t0)
        self.emitted[kind if ok else "dropped"] += 1

    def run(self, db: str, bucket: str, ticks: int) -> list[str]:
        fills: list[str] = []
        for symbol in SYMBOLS:
            self.emit("notion.page.create", {"parent": {"database_id": db}, "properties": {
                "Name": {"title": _text(f"position {symbol}")}}}, key=f"position-{symbol}")
        self.emit("notion.page.create", {"parent": {"database_id": db},
                                         "properties": {"Name": {"title": _text("trade log")}}}, key="trade-log")
        next_tick = time.perf_counter()
        for n in range(ticks):
            symbol = SYMBOLS[n % len(SYMBOLS)]
            price = round(1.08 + (n % 97) * 0.0001, 5)
            self.emit("notion.page.update", {"properties": {"Price": {"number": price}}}, ref=f"position-{symbol}")
            product = PRODUCTS[n % len(PRODUCTS)]
            self.emit("naver.product.update", {"originProductNo": product, "salePrice": 10_000 + n,
                                               "stockQuantity": 500 - n % 500})
            if n % 100 == 0:
                side = "BUY" if n % 200 == 0 else "SELL"
                line = f"tick {n}: {side} {symbol} at {price}"
                fills.append(line)
                self.emit("notion.page.create", {"parent": {"database_id": db}, "properties": {
                    "Name": {"title": _text(f"{side} {symbol} #{n}")}, "Price": {"number": price},
                    "Side": {"select": {"name": side}}}}, key=f"trade-{n}")
                self.emit("notion.blocks.append", {"children": [{"object": "block", "type": "paragraph",
                                                                 "paragraph": {"rich_text": _text(line)}}]},
                          ref="trade-log")
                self.emit("webhook.post", {"text": line}, ref="alerts", key=f"alert-{n}")
            next_tick += TICK_SECONDS
            while time.perf_counter() < next_tick:  # a real loop would wait for the next quote here
                pass
        report = ("tick,side,symbol,price\n" + "\n".join(fills) + "\n").encode()
        self.emit("s3.put", {"bucket": bucket, "key": "reports/fills.csv", "content_type": "text/csv",
                             "metadata": {"source": "demo"}}, blob=report)
        self.emit("naver.images.upload", {}, key="product-1001-images", blob=[_png(1), _png(2)])
        return fills


def _wait(done: Callable[[], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.2)
    return done()


def main(events: int = 2000) -> int:
    try:
        from standins.moto_s3 import moto_s3
        from standins.naver import NaverSimulator
        from standins.notion import NotionSimulator
        from standins.webhook import WebhookReceiver
    except ModuleNotFoundError as exc:
        raise MissingExtra("demo", "demo", exc.name, clone=FROM_CLONE) from None
    with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp, \
            NotionSimulator(rate_per_second=3, burst=3) as notion, \
            NaverSimulator(rate_per_second=2, burst=2) as naver, \
            WebhookReceiver(rate_per_second=5, burst=5) as hooks, \
            moto_s3(bucket="demo-reports") as s3:
        db = notion.create_database(title="Trading", properties={
            "Name": "title", "Idempotency Key": "rich_text", "Price": "number", "Side": "select"})
        for no in PRODUCTS:
            naver.add_product(no, sale_price=9_900, stock=0)
        print(f"notion simulator  {notion.url}  (3 requests/s, like Notion)")
        print(f"naver simulator   {naver.url}  (2 requests/s, bcrypt-signed token)")
        print(f"s3 (moto)         {s3.endpoint}  (SigV4 checked, bucket {s3.bucket})")
        print(f"webhook receiver  {hooks.url}")
        return _run(Path(tmp), events, notion, db, naver, hooks, s3)


def _run(tmp: Path, ticks: int, notion: NotionSimulator, db: str, naver: NaverSimulator,
         hooks: WebhookReceiver, s3: MotoS3) -> int:
    from standins.notion import property_value

    endpoint = f"ipc://{tmp}/ingest.sock"
    config = tmp / "sidecar.toml"
    config.write_text(f"""
[ingest]
endpoint = "{endpoint}"
[journal]
dir = "{tmp}/journal"
[metrics]
address = "127.0.0.1:0"
[notion]
base_url = "{notion.url}/v1"
[naver]
base_url = "{naver.url}/external"
[s3]
endpoint_url = "{s3.endpoint}"
region = "{s3.region}"
[webhooks.alerts]
url = "{hooks.url}/alerts"
rate_per_second = 5.0
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(NOTION_TOKEN=notion.token, NAVER_CLIENT_ID=naver.client_id, NAVER_CLIENT_SECRET=naver.client_secret,
               AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
               AWS_CONFIG_FILE=str(tmp / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "--config", str(config), "--log-level",
                             "WARNING"], env=env)
    try:
        while not (tmp / "ingest.sock").exists():
            if proc.poll() is not None:
                print("the sidecar exited early; see its log above")
                return 1
            time.sleep(0.02)
        print(f"sidecar           pid {proc.pid}, journal {tmp}/journal\n")
        started = time.monotonic()
        with Client(endpoint) as client:
            loop = Loop(client)
            fills = loop.run(db, s3.bucket, ticks)
        loop_seconds = time.monotonic() - started
        emitted, costs = loop.emitted, loop.costs
        total = sum(v for k, v in emitted.items() if k != "dropped")
        print(f"trading loop      {ticks} ticks in {loop_seconds:.2f} s, {total} events emitted, "
              f"{emitted['dropped']} dropped:")
        for kind, count in sorted(emitted.items()):
            print(f"    {kind:<22} {count}")
        print(f"emit cost         p50 {_percentile(costs, 50):.1f} µs   p99 {_percentile(costs, 99):.1f} µs   "
              f"max {max(costs) / 1000:.1f} µs   (what the loop paid; delivery happens elsewhere)")

        def trade_log() -> list[dict[str, Any]]:
            pages = notion.pages_with_property(db, "Idempotency Key", "trade-log")
            return notion.children(pages[0]["id"]) if pages else []

        last = ticks - 1
        done = _wait(lambda: (len(notion.pages()) == emitted["notion.page.create"]
                              and len(trade_log()) == len(fills)
                              and len(hooks.deliveries) == len(fills)
                              and len(naver.images()) == 2
                              and naver.product(PRODUCTS[last % len(PRODUCTS)])["salePrice"] == 10_000 + last
                              and _has_report(s3)), started + DELIVERY_DEADLINE)
        time.sleep(1.0)  # the last coalesced Notion updates
        delivered_after = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    calls = Counter(f"notion {r.method} {r.path.split('/')[2]}" for r in notion.requests)
    calls.update(f"naver {r.method} {r.path.split('/')[-1]}" for r in naver.requests)
    calls.update(f"webhook {r.method}" for r in hooks.requests)
    calls["s3 PUT"] = 1 if _has_report(s3) else 0
    print(f"\nAPI calls         {sum(calls.values())} for {total} events "
          f"({total / max(1, sum(calls.values())):.0f} events per call); "
          f"{'all' if done else 'NOT all'} delivered {delivered_after:.1f} s after the loop started:")
    for name, count in sorted(calls.items()):
        print(f"    {name:<34} {count}")
    limited = notion.stats()["rate_limited"] + naver.stats()["rate_limited"] + hooks.stats()["rate_limited"]
    print(f"    rate-limited answers (429)         {limited}")
    print("\nfinal state:")
    for page in notion.pages():
        name = property_value(page, "Name")
        if name.startswith("position"):
            print(f"    notion  {name:<18} Price={property_value(page, 'Price')}")
    trades = sum(1 for p in notion.pages() if property_value(p, "Name")[:3] in ("BUY", "SEL"))
    print(f"    notion  {trades} trade pages, trade log with {len(trade_log())} lines")
    for no in PRODUCTS:
        product = naver.product(no)
        print(f"    naver   product {no}: salePrice={product['salePrice']} stock={product['stockQuantity']}")
    print(f"    naver   {len(naver.images())} images uploaded")
    if _has_report(s3):
        body, content_type, _ = s3.read("reports/fills.csv")
        print(f"    s3      s3://{s3.bucket}/reports/fills.csv  {len(body)} bytes, {content_type}")
    print(f"    webhook {len(hooks.deliveries)} alerts received, first: {hooks.bodies()[0] if hooks.deliveries else '-'}")
    print(f"\nsidecar exited with {code} after SIGTERM")
    return 0 if code == 0 and done else 1


def _has_report(s3: MotoS3) -> bool:
    try:
        s3.client().head_object(Bucket=s3.bucket, Key="reports/fills.csv")
        return True
    except Exception:  # noqa: BLE001 -- botocore's ClientError for 404; anything else means "not yet" too
        return False
