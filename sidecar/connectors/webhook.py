"""Webhooks: POST a JSON body to a configured URL, one lane per webhook.

    # sidecar.toml
    [webhooks.alerts]
    url = "https://hooks.example.com/T0/B0/xyz"
    rate_per_second = 1.0

    # trading code
    sidecar.emit("webhook.post", {"text": "filled 1 lot"}, ref="alerts", key="fill-123")

`ref` names the webhook; lane "webhook.alerts" delivers it. Posts go out one
at a time in emit order, never merged. With `key`, a post whose key was
already delivered is skipped, and the key travels as an `Idempotency-Key`
header so a receiver can drop the copy a lost answer may cause.
"""

from __future__ import annotations

import httpx
import orjson

from client.wire import Envelope
from sidecar.config import Config, WebhookConfig
from sidecar.connectors import LaneSpec
from sidecar.connectors.base import ConnectorBase, Delivered, Pace, Plan, PlanContext, Send, Skip
from sidecar.connectors.http_calls import raise_for_status, request
from sidecar.delivery.limiter import Rule
from sidecar.errors import Reject
from sidecar.journal.store import Event

POST = "webhook.post"
DELIVERED_MARK = "delivered"  # what refs stores for a delivered key


class WebhookConnector(ConnectorBase):
    kinds = frozenset({POST})

    def __init__(self, name: str, cfg: WebhookConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.lane = f"webhook.{name}"
        self.cfg = cfg
        self.http = httpx.AsyncClient(timeout=cfg.timeout, transport=transport,
                                      headers={"Content-Type": "application/json"})

    # -- ingest ---------------------------------------------------------------

    def accepts(self, env: Envelope) -> bool:
        return env.ref == self.name

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        # Ingest asks accepts() only when several lanes share the kind; with
        # a single webhook configured every webhook.post lands here.
        if not self.accepts(env):
            raise Reject("unknown_target", f"no webhook named {env.ref!r} is configured (ref=NAME)")
        if blobs:
            raise Reject("bad_payload", "webhook.post takes no blob: the payload is the JSON body")
        return self.name

    # -- planning -------------------------------------------------------------

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan[Event]:
        head = group[0]
        if head.key is not None and ctx.ref(head.key) is not None:
            return Skip([head], "duplicate")
        return Send([head], head)

    # -- calls ----------------------------------------------------------------

    async def send(self, plan: Send[Event], pace: Pace) -> Delivered:
        event = plan.request  # one event's payload is the body
        headers = {"Idempotency-Key": event.key} if event.key else {}
        response = await request(self.http, "POST", self.cfg.url, content=orjson.dumps(event.payload),
                                 headers=headers)
        # 408 says the receiver gave up waiting for the body: nothing was applied.
        raise_for_status(response, retryable_4xx=frozenset({408}))
        return Delivered(refs={event.key: DELIVERED_MARK} if event.key else {})


def build(cfg: Config) -> list[LaneSpec]:
    return [LaneSpec(WebhookConnector(name, hook), Rule(rate=hook.rate_per_second, burst=hook.burst),
                     quota_id=hook.url)  # a receiver's URL may hold a secret: only its hash is shared
            for name, hook in cfg.webhooks.items()]
