"""Notion: create pages, update page properties, append blocks.

Kinds and how waiting events are combined (all in emit order):

- ``notion.page.create``: body of ``POST /v1/pages``. One idempotency key
  makes one page, ever: the key is written to the database property
  `idempotency_property`, and after any attempt whose outcome is unknown the
  database is queried for it before creating again. Creates without a key get
  ``auto:<client>:<seq>``, so retries are safe for them too.
- ``notion.page.update``: body of ``PATCH /v1/pages/{id}``, target from
  ``page_id`` in the payload or ``ref=KEY`` of an earlier create. Updates to
  one page waiting together merge into one PATCH, later values winning per
  property.
- ``notion.blocks.append``: body of ``PATCH /v1/blocks/{id}/children``, target
  from ``block_id`` or ``ref``. Appends to one parent go out together, at most
  100 children (and under 500 KB) a request. After an unknown outcome the
  parent's last children are compared with the batch before resending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

import httpx
import orjson

from client.wire import Envelope
from sidecar.config import Config, NotionConfig
from sidecar.connectors import LaneSpec
from sidecar.connectors.base import ConnectorBase, Dead, Delivered, Moved, Pace, Plan, PlanContext, Send, Skip, Wait
from sidecar.connectors.http import bad_response, json_code, json_object, raise_for_status, refuse_credentials, request
from sidecar.delivery.limiter import Rule
from sidecar.errors import Reject
from sidecar.journal.store import Event
from sidecar.ops.credentials import read_secret

CREATE = "notion.page.create"
UPDATE = "notion.page.update"
APPEND = "notion.blocks.append"

REF_RECHECK_SECONDS = 1.0
UPDATE_FIELDS = frozenset({"properties", "archived", "in_trash", "icon", "cover"})


def _rate_limited(response: httpx.Response) -> bool:
    # 529 service_overload is Notion's other way of saying "slow down".
    return response.status_code in (429, 529)


def _limit_reason(response: httpx.Response) -> str:
    """Which limit a 429 hit: `additional_data.rate_limit_reason` in newer answers, else ""."""
    try:
        extra = response.json().get("additional_data")
    except (ValueError, AttributeError):
        return ""
    reason = extra.get("rate_limit_reason") if isinstance(extra, dict) else None
    return reason if isinstance(reason, str) else ""


def _check(response: httpx.Response) -> None:
    if response.status_code == 401:
        # `unauthorized`: the token is wrong, expired or revoked; every call would fail alike.
        refuse_credentials("Notion", response, json_code(response))
    raise_for_status(response, rate_limited=_rate_limited, code_of=json_code, limit_reason_of=_limit_reason)


def _plain_text(block: dict[str, Any]) -> tuple[str, str]:
    """A block's type and visible text: what identifies it in a parent's children."""
    kind = block.get("type") or next((k for k in block if k not in ("object", "id")), "")
    inner = block.get(kind) if isinstance(block.get(kind), dict) else {}
    parts = []
    for item in inner.get("rich_text", []) if isinstance(inner, dict) else []:
        if isinstance(item, dict):
            parts.append(item.get("plain_text") or (item.get("text") or {}).get("content", ""))
    return kind, "".join(parts)


def _count_blocks(children: list[Any]) -> int:
    total = 0
    for child in children:
        total += 1
        if isinstance(child, dict):
            inner = child.get(child.get("type", ""), {})
            if isinstance(inner, dict) and isinstance(inner.get("children"), list):
                total += _count_blocks(inner["children"])
    return total


@dataclass(frozen=True)
class CreatePage:
    """POST /v1/pages, unique by `key` (written into the idempotency property)."""

    key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class UpdatePage:
    """PATCH /v1/pages/{page_id}: the group's updates merged."""

    page_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class AppendBlocks:
    """PATCH /v1/blocks/{block_id}/children: the group's appends that fit one call."""

    block_id: str
    body: dict[str, Any]


NotionRequest = CreatePage | UpdatePage | AppendBlocks


class NotionConnector(ConnectorBase):
    lane = "notion"
    kinds = frozenset({CREATE, UPDATE, APPEND})

    def __init__(self, cfg: NotionConfig, token: str, *, ref_wait: float = 600.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.cfg = cfg
        self._token = token
        self.ref_wait = ref_wait
        self.http = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/") + "/",
            headers={
                "Authorization": f"Bearer {token}",
                "Notion-Version": cfg.version,
                "Content-Type": "application/json",
            },
            timeout=cfg.timeout,
            transport=transport,
        )

    def refresh_credentials(self) -> bool:
        """Read the token again ($CREDENTIALS_DIRECTORY/NAME, else $NAME); True if it changed."""
        token = read_secret(self.cfg.token_env)
        if not token or token == self._token:
            return False
        self._token = token
        self.http.headers["Authorization"] = f"Bearer {token}"
        return True

    # -- ingest ---------------------------------------------------------------

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        body = env.payload
        if not isinstance(body, dict):
            raise Reject("bad_payload", f"{env.kind} payload must be a JSON object")
        if blobs:
            raise Reject("bad_payload", f"{env.kind} takes no blob")
        if env.kind == CREATE:
            parent = body.get("parent")
            if not isinstance(parent, dict) or not (
                {"database_id", "data_source_id", "page_id"} & parent.keys()
            ):
                raise Reject("bad_payload", "notion.page.create needs parent.database_id, data_source_id or page_id")
            return "create:" + (env.key or f"auto:{env.client_id}:{env.seq}")
        if env.kind == UPDATE:
            if "properties" in body and not isinstance(body["properties"], dict):
                raise Reject("bad_payload", "properties must be an object")
            return "update:" + self._target_id(env, "page_id")
        children = body.get("children")
        if not isinstance(children, list) or not children:
            raise Reject("bad_payload", "notion.blocks.append needs a non-empty children list")
        if len(children) > self.cfg.max_children_per_request:
            raise Reject("bad_payload", f"{len(children)} children in one append; Notion takes at most "
                                        f"{self.cfg.max_children_per_request}: split it into several emits")
        return "append:" + self._target_id(env, "block_id")

    @staticmethod
    def _target_id(env: Envelope, field: str) -> str:
        value = env.payload.get(field)
        if isinstance(value, str) and value:
            return value
        if env.ref:
            return "ref:" + env.ref
        raise Reject("bad_payload", f"{env.kind} needs {field} in the payload or ref=KEY")

    def retargets(self, key: str, created_id: str) -> list[tuple[str, str]]:
        return [(f"update:ref:{key}", f"update:{created_id}"), (f"append:ref:{key}", f"append:{created_id}")]

    # -- planning -------------------------------------------------------------

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan[NotionRequest]:
        head = group[0]
        kind, _, ident = head.target.partition(":")
        if kind == "create":
            if ctx.ref(ident) is not None:
                return Skip(group, "duplicate")
            return Send(group, CreatePage(ident, head.payload), merged=len(group) - 1)
        if ident.startswith("ref:"):
            key = ident[4:]
            resolved = ctx.ref(key)
            if resolved is None:
                return self._unresolved(group, key, ctx)
            return Moved(f"{kind}:{resolved}")  # join the page's own group
        if kind == "update":
            return self._merge_updates(group, ident)
        return self._batch_appends(group, ident)

    def _unresolved(self, group: list[Event], key: str, ctx: PlanContext) -> Plan[NotionRequest]:
        if ctx.has_target("create:" + key):
            return Wait(REF_RECHECK_SECONDS, "ref_pending")
        why = ctx.dead_key(CREATE, key)
        if why is not None:
            return Dead(group, "ref_failed", f"the create with key {key!r} was dead-lettered ({why})")
        waited = ctx.now - group[0].received_ns / 1e9
        if waited > self.ref_wait:
            return Dead(group, "unknown_ref", f"no create with key {key!r} arrived within {self.ref_wait:.0f} s"
                        " (or it was delivered longer ago than [journal] refs_keep_hours)")
        return Wait(REF_RECHECK_SECONDS * 5, "ref_unknown")

    def _merge_updates(self, group: list[Event], page_id: str) -> Send[NotionRequest]:
        body: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for event in group:
            for name, value in event.payload.items():
                if name == "properties":
                    properties.update(value)
                elif name in UPDATE_FIELDS:
                    body[name] = value
        if properties:
            body["properties"] = properties
        return Send(group, UpdatePage(page_id, body), merged=len(group) - 1)

    def _batch_appends(self, group: list[Event], block_id: str) -> Send[NotionRequest]:
        taken: list[Event] = []
        children: list[Any] = []
        size = 0
        # A batch whose last attempt may have landed is resent exactly as it
        # was, so the check before resending compares like with like.
        retrying = bool(group[0].unsure)
        for event in group:
            if taken and retrying and not event.unsure:
                break
            body = event.payload
            positioned = "after" in body or "position" in body
            more = body["children"]
            more_size = len(orjson.dumps(more))
            fits = (
                len(children) + len(more) <= self.cfg.max_children_per_request
                and _count_blocks(children) + _count_blocks(more) <= 1000
                and size + more_size <= self.cfg.max_request_bytes
            )
            if taken and (positioned or not fits):
                break
            taken.append(event)
            children.extend(more)
            size += more_size
            if positioned:
                break  # an append placed after a given block goes alone
        extra = {k: v for k, v in taken[0].payload.items() if k in ("after", "position")}
        return Send(taken, AppendBlocks(block_id, {"children": children, **extra}), merged=len(taken) - 1)

    # -- calls ----------------------------------------------------------------

    async def send(self, plan: Send[NotionRequest], pace: Pace) -> Delivered:
        # Only an attempt that may have landed is checked: after a 429 or a
        # refused connection the call certainly did not happen.
        retried = any(e.unsure for e in plan.events)
        match plan.request:
            case CreatePage(key, body):
                return await self._create(key, body, retried, pace, duplicates=len(plan.events) - 1)
            case UpdatePage(page_id, body):
                response = await request(self.http, "PATCH", f"pages/{page_id}", json=body)
            case AppendBlocks(block_id, body):
                if retried and await self._children_already_there(block_id, body["children"], pace):
                    return Delivered()
                response = await request(self.http, "PATCH", f"blocks/{block_id}/children", json=body)
            case _:
                assert_never(plan.request)
        _check(response)
        return Delivered()

    async def _create(self, key: str, body: dict[str, Any], retried: bool, pace: Pace,
                      duplicates: int) -> Delivered:
        body = dict(body)
        parent = body["parent"]
        prop = self.cfg.idempotency_property
        queryable = bool(prop) and ("database_id" in parent or "data_source_id" in parent)
        if queryable:
            properties = dict(body.get("properties") or {})
            properties[prop] = {"rich_text": [{"type": "text", "text": {"content": key}}]}
            body["properties"] = properties
            if retried:
                existing = await self._find_by_key(parent, prop, key, pace)
                if existing is not None:
                    return Delivered(refs={key: existing}, duplicates=duplicates)
        response = await request(self.http, "POST", "pages", json=body)
        _check(response)
        page_id = json_object(response).get("id")
        if not isinstance(page_id, str):
            # The page may exist all the same: the retry queries for the key first.
            raise bad_response(response, "create answered without a page id")
        return Delivered(refs={key: page_id}, duplicates=duplicates)

    async def _find_by_key(self, parent: dict[str, Any], prop: str, key: str, pace: Pace) -> str | None:
        if "data_source_id" in parent:
            path = f"data_sources/{parent['data_source_id']}/query"
        else:
            path = f"databases/{parent['database_id']}/query"
        query = {"filter": {"property": prop, "rich_text": {"equals": key}}, "page_size": 1}
        await pace()
        response = await request(self.http, "POST", path, json=query)
        _check(response)
        results = json_object(response).get("results") or []
        found = results[0].get("id") if isinstance(results, list) and results and isinstance(results[0], dict) else None
        if results and not isinstance(found, str):
            raise bad_response(response, "query answered a result without an id")
        return found

    async def _children_already_there(self, block_id: str, sent: list[Any], pace: Pace) -> bool:
        """Did an earlier attempt of this append land? Compare the parent's last children."""
        existing: list[Any] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"page_size": 100}
            if cursor:
                params["start_cursor"] = cursor
            await pace()
            response = await request(self.http, "GET", f"blocks/{block_id}/children", params=params)
            _check(response)
            doc = json_object(response)
            existing.extend(doc.get("results") or [])
            cursor = doc.get("next_cursor")
            if not doc.get("has_more") or not cursor:
                break
        if len(existing) < len(sent):
            return False
        tail = existing[len(existing) - len(sent):]
        return [_plain_text(b) for b in tail] == [_plain_text(b) for b in sent]


def build(cfg: Config) -> list[LaneSpec]:
    token = read_secret(cfg.notion.token_env)
    paused = None if token else (
        f"no Notion token: set ${cfg.notion.token_env} or a systemd credential of that name, then `sidecar reload`")
    connector = NotionConnector(cfg.notion, token or "", ref_wait=cfg.retry.ref_wait)
    return [LaneSpec(connector, Rule(rate=cfg.notion.rate_per_second, burst=cfg.notion.burst), paused=paused,
                     quota_id=token or "")]
