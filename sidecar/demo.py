"""`sidecar demo`: the whole path on embedded defaults, in one command.

Starts a Notion simulator on loopback (at Notion's 3 requests/s), a real
sidecar process pointed at it, and a synthetic trading loop that ticks 1,000
times a second: every tick updates a position page, every 50th opens a trade
(a page create) and logs it to a journal page (a block append). Then it waits
for the sidecar to deliver everything and prints what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from client import Client

from .simulators.notion import NotionSimulator, property_value

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
TICK_SECONDS = 0.001


def _text(content: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": content}}]


def _percentile(values: list[int], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] / 1000


def trading_loop(client: Client, db: str, ticks: int) -> tuple[Counter[str], list[int]]:
    """Tick at 1 kHz; return events emitted by kind and each emit's cost in ns."""
    emitted: Counter[str] = Counter()
    costs: list[int] = []
    clock = time.perf_counter_ns

    def emit(kind: str, payload: dict[str, Any], **kw: Any) -> None:
        t0 = clock()
        ok = client.emit(kind, payload, **kw)
        costs.append(clock() - t0)
        emitted[kind if ok else "dropped"] += 1

    for symbol in SYMBOLS:
        emit("notion.page.create", {"parent": {"database_id": db}, "properties": {
            "Name": {"title": _text(f"position {symbol}")}, "Side": {"select": {"name": "FLAT"}}}},
            key=f"position-{symbol}")
    emit("notion.page.create", {"parent": {"database_id": db},
                                "properties": {"Name": {"title": _text("trade log")}}}, key="trade-log")
    next_tick = time.perf_counter()
    for n in range(ticks):
        symbol = SYMBOLS[n % len(SYMBOLS)]
        price = round(1.08 + (n % 97) * 0.0001, 5)
        emit("notion.page.update", {"properties": {"Price": {"number": price}}}, ref=f"position-{symbol}")
        if n % 50 == 0:
            side = "BUY" if n % 100 == 0 else "SELL"
            emit("notion.page.create", {"parent": {"database_id": db}, "properties": {
                "Name": {"title": _text(f"{side} {symbol} #{n}")}, "Price": {"number": price},
                "Side": {"select": {"name": side}}}}, key=f"trade-{n}")
            emit("notion.blocks.append", {"children": [{"object": "block", "type": "paragraph", "paragraph": {
                "rich_text": _text(f"tick {n}: {side} {symbol} at {price}")}}]}, ref="trade-log")
        next_tick += TICK_SECONDS
        while time.perf_counter() < next_tick:  # a real loop would wait for the next quote here
            pass
    return emitted, costs


def main(events: int = 2000) -> int:
    with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp, NotionSimulator(rate_per_second=3, burst=3) as sim:
        db = sim.create_database(title="Trading", properties={
            "Name": "title", "Idempotency Key": "rich_text", "Price": "number", "Side": "select"})
        endpoint = f"ipc://{tmp}/ingest.sock"
        config = Path(tmp) / "sidecar.toml"
        config.write_text(f'[ingest]\nendpoint = "{endpoint}"\n[journal]\ndir = "{tmp}/journal"\n'
                          f'[notion]\nbase_url = "{sim.url}/v1"\n[metrics]\naddress = "127.0.0.1:0"\n')
        print(f"notion simulator  {sim.url}  (3 requests/s, like Notion)")
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "--config", str(config),
                                 "--log-level", "WARNING"], env={**os.environ, "NOTION_TOKEN": sim.token})
        try:
            while not os.path.exists(f"{tmp}/ingest.sock"):
                if proc.poll() is not None:
                    print("the sidecar exited early; see its log above")
                    return 1
                time.sleep(0.02)
            print(f"sidecar           pid {proc.pid}, journal {tmp}/journal")
            started = time.monotonic()
            with Client(endpoint) as client:
                emitted, costs = trading_loop(client, db, events)
            loop_seconds = time.monotonic() - started
            total = sum(v for k, v in emitted.items() if k != "dropped")
            print(f"\ntrading loop      {events} ticks in {loop_seconds:.2f} s, {total} events emitted:")
            for kind, count in sorted(emitted.items()):
                print(f"    {kind:<22} {count}")
            print(f"emit cost         p50 {_percentile(costs, 50):.1f} µs   p99 {_percentile(costs, 99):.1f} µs   "
                  f"max {max(costs) / 1000:.1f} µs")
            expected_pages = emitted["notion.page.create"]
            expected_lines = emitted["notion.blocks.append"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                log_pages = sim.pages_with_property(db, "Idempotency Key", "trade-log")
                lines = len(sim.children(log_pages[0]["id"])) if log_pages else 0
                if len(sim.pages()) >= expected_pages and lines >= expected_lines:
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # let the last coalesced updates land
            delivered_after = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        calls = Counter(f"{r.method} {r.path.split('/')[2]}" for r in sim.requests)
        print(f"\nnotion API calls  {len(sim.requests)} for {total} events "
              f"({total / max(1, len(sim.requests)):.0f} events per call), all delivered "
              f"{delivered_after:.1f} s after the loop started:")
        for name, count in sorted(calls.items()):
            print(f"    {name:<22} {count}")
        print(f"    rate-limited (429)     {sim.stats()['rate_limited']}")
        print("\nfinal state in the simulator:")
        for page in sim.pages():
            name = property_value(page, "Name")
            if name.startswith("position"):
                print(f"    {name:<18} Price={property_value(page, 'Price')}")
        print(f"    {sum(1 for p in sim.pages() if property_value(p, 'Name')[:3] in ('BUY', 'SEL'))} trade pages, "
              f"trade log with {lines} lines")
        print(f"\nsidecar exited with {code} after SIGTERM")
        return 0 if code == 0 and lines == expected_lines else 1
