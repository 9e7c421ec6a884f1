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
  children right after the place the batch went to are read (from the last
  block our appends put there, as Notion's answer named it) and compared with
  the batch before resending: at most two calls once the sidecar knows that
  block, a read of every child only the first time after a start.

Versions (`[notion] version`, the `Notion-Version` header):

- ``2022-06-28``: creates under ``parent.database_id``, queries
  ``POST /v1/databases/{id}/query``; fails once a database holds a second
  data source (developers.notion.com/docs/upgrade-guide-2025-09-03).
- ``2025-09-03`` (the default, as in notion-sdk-js ``Client.defaultNotionVersion``):
  a database holds data sources. A ``database_id`` parent is resolved once
  through ``GET /v1/databases/{id}`` (``data_sources: [{id, name}]``) and the
  page is created under ``{"type": "data_source_id", ...}``; a database with
  several data sources dead-letters the create (``ambiguous_database``): the
  producer must name the data source. The key lookup before resending a
  create queries ``POST /v1/data_sources/{id}/query``.
- ``2026-03-11``: as 2025-09-03, and an append is placed with ``position``
  (``{"type": "after_block", "after_block": {"id": ...}}``, ``start``, ``end``;
  notion-sdk-js ``src/api-endpoints/common.ts`` ``ContentPositionSchema``);
  ``after`` is removed (upgrade-guide-2026-03-11), so the sidecar translates a
  producer's ``after`` into ``position``, and ``archived`` into ``in_trash``.

Notion refuses a whole request over its size limits (400 `validation_error`,
developers.notion.com/reference/request-limits), so an event over them is
refused alone at ingest (`over_limit`) rather than sinking the events it
would be combined with; anything else Notion refuses in a combined call is
found by splitting the call (sidecar/delivery/split.py).
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
from sidecar.connectors.http_calls import bad_response, json_object, request
from sidecar.connectors.notion_reads import V2025, V2026, NotionReads, check
from sidecar.delivery.limiter import Rule
from sidecar.errors import Reject
from sidecar.journal.store import Event
from sidecar.ops.credentials import how_to_provide, read_secret

CREATE = "notion.page.create"
UPDATE = "notion.page.update"
APPEND = "notion.blocks.append"

REF_RECHECK_SECONDS = 1.0
UPDATE_FIELDS = frozenset({"properties", "archived", "in_trash", "icon", "cover"})


# developers.notion.com/reference/request-limits, "Size limits" (and reference/patch-block-children
# for nesting): a request over any of them is refused whole with 400 validation_error.
MAX_TEXT = 2000  # rich text `text.content`, and `text.link.url`
MAX_EQUATION = 1000  # `equation.expression`
MAX_ARRAY = 100  # any array: rich text, multi-select, relation, people, children
MAX_BLOCKS = 1000  # block elements in one request, nested ones included
MAX_NESTING = 2  # levels of `children` below a top-level block in one request


def _nested(block: Any) -> list[Any]:
    """A block's own children, inside its type object (Notion's form)."""
    inner = block.get(block.get("type", ""), {}) if isinstance(block, dict) else None
    kids = inner.get("children") if isinstance(inner, dict) else None
    return kids if isinstance(kids, list) else []


def _count_blocks(children: list[Any]) -> int:
    return sum(1 + _count_blocks(_nested(child)) for child in children)


def _depth(children: list[Any]) -> int:
    """Levels of children below the top-level blocks: 0 for flat blocks."""
    return max((1 + _depth(_nested(c)) if _nested(c) else 0 for c in children), default=0)


def over_limit(value: Any, path: str = "body") -> str | None:
    """The first of Notion's size limits `value` breaks, said as Notion's message would; else None.

    >>> over_limit({"children": [{"type": "paragraph", "paragraph": {"rich_text": [
    ...     {"type": "text", "text": {"content": "x" * 2001}}]}}]})
    'body.children[0].paragraph.rich_text[0].text.content.length should be ≤ 2000, instead was 2001'
    >>> over_limit({"properties": {"Price": {"number": 1}}}) is None
    True
    """
    found = _over(value)
    return None if found is None else f"{path}{found[0]}{found[1]}"


def _over(value: Any) -> tuple[str, str] | None:
    """(where below `value`, what is wrong) for the first limit broken; the path is
    built only on the way back from a find, so a body within limits costs a plain walk."""
    if isinstance(value, list):
        if len(value) > MAX_ARRAY:
            return "", f".length should be ≤ {MAX_ARRAY}, instead was {len(value)}"
        for i, item in enumerate(value):
            if isinstance(item, (list, dict)) and (found := _over(item)):
                return f"[{i}]{found[0]}", found[1]
    elif isinstance(value, dict):
        for field_, limit in (("content", MAX_TEXT), ("url", MAX_TEXT), ("expression", MAX_EQUATION)):
            text = value.get(field_)
            if isinstance(text, str) and len(text) > limit:
                return f".{field_}", f".length should be ≤ {limit}, instead was {len(text)}"
        for key, item in value.items():
            if isinstance(item, (list, dict)) and (found := _over(item)):
                return f".{key}{found[0]}", found[1]
    return None


def _children_over_limit(children: Any) -> str | None:
    if not isinstance(children, list):
        return None
    if _depth(children) > MAX_NESTING:
        return f"children are nested {_depth(children)} levels deep; Notion takes {MAX_NESTING} in one request"
    if _count_blocks(children) > MAX_BLOCKS:
        return f"{_count_blocks(children)} blocks in one request; Notion takes {MAX_BLOCKS}"
    return None


def _placement(body: dict[str, Any], version: str) -> dict[str, Any]:
    """An append body with its placement in the form `version` takes.

    2026-03-11 removed `after` for `position` (developers.notion.com/docs/upgrade-guide-2026-03-11);
    older versions take `after`. The documents are silent on whether they take `position` too:
    `start` is passed on as given, `end` (the default) is left out.
    """
    after, position = body.get("after"), body.get("position")
    rest = {k: v for k, v in body.items() if k not in ("after", "position")}
    if version >= V2026:
        if after is not None:
            return {**rest, "position": {"type": "after_block", "after_block": {"id": after}}}
        return body
    if isinstance(position, dict) and position.get("type") == "after_block":
        return {**rest, "after": (position.get("after_block") or {}).get("id")}
    if isinstance(position, dict) and position.get("type") == "end":
        return rest
    return body


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
        self.version = cfg.version
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
        self.reads = NotionReads(self.http, cfg.version)

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
            if "data_source_id" in parent and self.version < V2025:
                raise Reject("bad_payload", f"parent.data_source_id needs [notion] version {V2025} or later "
                                            f"(this sidecar speaks {self.version})")
            self._within_limits(body)
            return "create:" + (env.key or f"auto:{env.client_id}:{env.seq}")
        if env.kind == UPDATE:
            if "properties" in body and not isinstance(body["properties"], dict):
                raise Reject("bad_payload", "properties must be an object")
            self._within_limits(body)
            return "update:" + self._target_id(env, "page_id")
        children = body.get("children")
        if not isinstance(children, list) or not children:
            raise Reject("bad_payload", "notion.blocks.append needs a non-empty children list")
        if len(children) > self.cfg.max_children_per_request:
            raise Reject("bad_payload", f"{len(children)} children in one append; Notion takes at most "
                                        f"{self.cfg.max_children_per_request}: split it into several emits")
        self._within_limits(body)
        return "append:" + self._target_id(env, "block_id")

    def _within_limits(self, body: dict[str, Any]) -> None:
        """Refuse an event over Notion's size limits here, alone: in a combined call it
        would get every event of that call refused (400 validation_error)."""
        raw = orjson.dumps(body)
        if len(raw) > self.cfg.max_request_bytes:
            problem: str | None = f"{len(raw)} bytes; the sidecar sends at most {self.cfg.max_request_bytes}"
        elif len(raw) <= MAX_EQUATION and raw.count(b",") < MAX_ARRAY and raw.count(b'"children"') <= MAX_NESTING:
            # No limit can be broken by so small a body: a string over a limit takes more bytes
            # than it, an array over MAX_ARRAY items that many commas, nesting past MAX_NESTING
            # more "children" keys. Most events stop here (the walk cost ingest 6 µs an event).
            return
        else:
            problem = over_limit(body) or _children_over_limit(body.get("children"))
        if problem is not None:
            raise Reject("over_limit", f"{problem} (developers.notion.com/reference/request-limits)")

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
        taken: list[Event] = []
        measured = grown = 0  # the merge's size when last measured, and at most how much it grew since
        for event in group:
            # Each event fits alone (route checked); many distinct properties might not together.
            # Measured only when it might not fit: a hot page's thousands of updates to one
            # property keep the merge small, and a dumps an event was as dear as the merge.
            # An event adds at most its payload, re-encoded: under 8x its frame's bytes
            # (a number written "1e15" is re-encoded in 18).
            grown += 8 * len(event.frame)
            if taken and measured + grown > self.cfg.max_request_bytes:
                measured, grown = len(orjson.dumps([body, properties, event.payload])), 0
                if measured > self.cfg.max_request_bytes:
                    break
            taken.append(event)
            for name, value in event.payload.items():
                if name == "properties":
                    properties.update(value)
                elif name in UPDATE_FIELDS:
                    # 2026-03-11 renamed `archived` to `in_trash` (upgrade-guide-2026-03-11).
                    body["in_trash" if name == "archived" and self.version >= V2026 else name] = value
        if properties:
            body["properties"] = properties
        # Setting properties is idempotent: a resend after a crash or a timeout lands the same values.
        return Send(taken, UpdatePage(page_id, body), merged=len(taken) - 1, idempotent=True)

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
        body = _placement({"children": children, **extra}, self.version)
        return Send(taken, AppendBlocks(block_id, body), merged=len(taken) - 1)

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
                if retried and await self.reads.appended_already(block_id, body, pace):
                    return Delivered()
                response = await request(self.http, "PATCH", f"blocks/{block_id}/children", json=body)
                check(response)
                self.reads.remember_tail(block_id, body, json_object(response).get("results"))
                return Delivered()
            case _:
                assert_never(plan.request)
        check(response)
        return Delivered()

    async def _create(self, key: str, body: dict[str, Any], retried: bool, pace: Pace,
                      duplicates: int) -> Delivered:
        body = dict(body)
        parent = body["parent"] = await self.reads.parent(body["parent"], pace)
        prop = self.cfg.idempotency_property
        queryable = bool(prop) and ("database_id" in parent or "data_source_id" in parent)
        if queryable:
            properties = dict(body.get("properties") or {})
            properties[prop] = {"rich_text": [{"type": "text", "text": {"content": key}}]}
            body["properties"] = properties
            if retried:
                existing = await self.reads.find_by_key(parent, prop, key, pace)
                if existing is not None:
                    return Delivered(refs={key: existing}, duplicates=duplicates)
        response = await request(self.http, "POST", "pages", json=body)
        check(response)
        page_id = json_object(response).get("id")
        if not isinstance(page_id, str):
            # The page may exist all the same: the retry queries for the key first.
            raise bad_response(response, "create answered without a page id")
        return Delivered(refs={key: page_id}, duplicates=duplicates)


def build(cfg: Config) -> list[LaneSpec]:
    token = read_secret(cfg.notion.token_env)
    paused = None if token else (
        f"no Notion token: {how_to_provide(cfg.notion.token_env)}")
    connector = NotionConnector(cfg.notion, token or "", ref_wait=cfg.retry.ref_wait)
    return [LaneSpec(connector, Rule(rate=cfg.notion.rate_per_second, burst=cfg.notion.burst), paused=paused,
                     quota_id=token or "")]
