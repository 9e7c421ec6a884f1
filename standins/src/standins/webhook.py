"""Webhook receiver on loopback: records every JSON POST, in order.

Usage::

    with WebhookReceiver() as hook:
        httpx.post(hook.url + "/hooks/trades", json={"id": 1})
        hook.wait_for(1, timeout=5)
        hook.deliveries[0].path, hook.deliveries[0].body    # -> "/hooks/trades", {"id": 1}
        hook.bodies()                                         # -> [{"id": 1}]
        hook.inject(Fault(status=503))                        # next POST answered 503, not recorded
        hook.inject(Fault(when="after", status=500))          # recorded, then answered 500

A POST with a JSON body (any path) is recorded and answered 200 `{"ok": true}`;
a body that is not JSON is answered 400 and not recorded; other methods get
405. With `rate_per_second` set, POSTs over the token bucket get 429 with
`Retry-After` (whole seconds) and are not recorded. Error bodies are
`{"error": CODE, "message": ...}`.

Control API: base.py's, with `GET /_sim/state` = `{"deliveries": [{path, headers, body}]}`.
CLI: `python -m standins.webhook --port N [--rate R --burst B]` prints `{"url"}`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from standins.base import Request, Response, SimError, SimServer, cli_parser, retry_after_seconds, run_until_signal


@dataclass(frozen=True)
class Delivery:
    """One recorded POST: monotonic arrival `time`, `path`, lower-cased `headers`, parsed `body`."""

    time: float
    path: str
    headers: dict[str, str]
    body: Any


class WebhookReceiver(SimServer):
    """Records JSON POSTs; `rate_per_second=None` (default) never answers 429.

    Usage::

        hook = WebhookReceiver(rate_per_second=1.0, burst=1).start(); ...; hook.stop()
    """

    fault_codes: ClassVar[dict[int, str]] = {
        429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "unavailable",
    }

    def __init__(self, port: int = 0, *, rate_per_second: float | None = None, burst: int = 1) -> None:
        super().__init__(port=port, rate_per_second=rate_per_second, burst=burst)
        self._deliveries: list[Delivery] = []

    @property
    def deliveries(self) -> list[Delivery]:
        """Recorded POSTs in arrival order."""
        with self.lock:
            return list(self._deliveries)

    def bodies(self) -> list[Any]:
        """Just the parsed bodies, in order."""
        return [d.body for d in self.deliveries]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until at least `count` deliveries are recorded (TimeoutError otherwise)."""
        self.wait_until(lambda: len(self._deliveries) >= count, timeout)
        return self.deliveries

    def clear(self) -> None:
        """Forget recorded deliveries."""
        with self.lock:
            self._deliveries.clear()

    def state(self) -> dict[str, Any]:
        return {"deliveries": [{"path": d.path, "headers": d.headers, "body": d.body} for d in self._deliveries]}

    def error(self, err: SimError) -> Response:
        headers = {"Retry-After": "1"} if err.status == 429 else {}
        return Response(err.status, {"error": err.code, "message": err.message}, headers)

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            raise SimError(405, "method_not_allowed", "only POST is accepted")
        wait = self.limiter.take("all")
        if wait:
            raise SimError(429, "rate_limited", "too many requests",
                           headers={"Retry-After": str(retry_after_seconds(wait))})
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            raise SimError(400, "invalid_json", "body is not JSON") from None
        self._deliveries.append(Delivery(self.clock(), request.path, dict(request.headers), body))
        return Response(200, {"ok": True})


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m standins.webhook` (`--rate 0`: no limit)."""
    args = cli_parser("Webhook receiver on 127.0.0.1", rate=0.0, burst=1).parse_args(argv)
    return run_until_signal(WebhookReceiver(args.port, rate_per_second=args.rate or None, burst=args.burst), {})


if __name__ == "__main__":
    sys.exit(main())
