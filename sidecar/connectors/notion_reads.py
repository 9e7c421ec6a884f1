"""What the Notion connector reads from Notion, and how it reads Notion's answers.

    reads = NotionReads(http, version="2025-09-03")
    parent = await reads.parent({"database_id": db}, pace)       # the database's one data source
    page = await reads.find_by_key(parent, "Idempotency Key", key, pace)   # before resending a create
    if await reads.appended_already(block_id, body, pace): ...   # before resending an append
    check(response)                                               # an answer into the error tree

Every read is one paced call (`pace()` takes a token from the lane's limiter
first): checking an unknown outcome costs the lane's quota like any call.
"""

from __future__ import annotations

from typing import Any

import httpx

from sidecar.connectors.base import Pace
from sidecar.connectors.http_calls import bad_response, json_code, json_object, raise_for_status, refuse_credentials, request
from sidecar.errors import Permanent

V2022, V2025, V2026 = "2022-06-28", "2025-09-03", "2026-03-11"


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


def check(response: httpx.Response) -> None:
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


def _same(blocks: list[Any], sent: list[Any]) -> bool:
    """Are these the blocks sent, by type and text?"""
    return len(blocks) == len(sent) and [_plain_text(b) for b in blocks] == [_plain_text(b) for b in sent]


def anchor(body: dict[str, Any]) -> str | None:
    """The block an append is placed after, if any (`after` or `position.after_block`)."""
    position = body.get("position")
    if isinstance(position, dict) and position.get("type") == "after_block":
        found = (position.get("after_block") or {}).get("id")
        return found if isinstance(found, str) else None
    after = body.get("after")
    return after if isinstance(after, str) else None


class NotionReads:
    """The reads that resolve a create's parent and check an unknown outcome, with what they learnt."""

    def __init__(self, http: httpx.AsyncClient, version: str) -> None:
        self.http = http
        self.version = version
        self.sources: dict[str, str] = {}  # database id -> its one data source (2025-09-03 on)
        # parent id -> the last block our appends put at its end, as Notion's answer named it:
        # where to read from when an append's outcome is unknown.
        self.tails: dict[str, str] = {}

    def remember_tail(self, block_id: str, body: dict[str, Any], blocks: Any) -> None:
        """After an append to the end, its last block is where the next one's check starts reading."""
        placed = body.get("position", {}).get("type", "end") if isinstance(body.get("position"), dict) else "end"
        if placed == "end" and "after" not in body and isinstance(blocks, list) and blocks:
            last = blocks[-1].get("id") if isinstance(blocks[-1], dict) else None
            if isinstance(last, str):
                self.tails[block_id] = last

    async def parent(self, parent: dict[str, Any], pace: Pace) -> dict[str, Any]:
        """The parent to create under: from 2025-09-03 on, a database's one data source.

        `GET /v1/databases/{id}` lists `data_sources: [{id, name}]` (upgrade-guide-2025-09-03,
        step 1 "add a discovery step"); the answer is kept for the life of the process.
        """
        db = parent.get("database_id")
        if self.version < V2025 or "data_source_id" in parent or not isinstance(db, str):
            return parent
        if db not in self.sources:
            await pace()
            response = await request(self.http, "GET", f"databases/{db}")
            check(response)
            sources = json_object(response).get("data_sources")
            if not isinstance(sources, list) or not all(isinstance(s, dict) and isinstance(s.get("id"), str)
                                                        for s in sources):
                raise bad_response(response, "database answered without data_sources[].id")
            if len(sources) != 1:
                names = ", ".join(f"{s.get('name')!r} ({s['id']})" for s in sources)
                raise Permanent("ambiguous_database", f"database {db} holds {len(sources)} data sources ({names}): "
                                "emit the create with parent.data_source_id")
            self.sources[db] = sources[0]["id"]
        return {"type": "data_source_id", "data_source_id": self.sources[db]}

    async def find_by_key(self, parent: dict[str, Any], prop: str, key: str, pace: Pace) -> str | None:
        if "data_source_id" in parent:
            path = f"data_sources/{parent['data_source_id']}/query"
        else:
            path = f"databases/{parent['database_id']}/query"
        query = {"filter": {"property": prop, "rich_text": {"equals": key}}, "page_size": 1}
        await pace()
        response = await request(self.http, "POST", path, json=query)
        check(response)
        results = json_object(response).get("results") or []
        found = results[0].get("id") if isinstance(results, list) and results and isinstance(results[0], dict) else None
        if results and not isinstance(found, str):
            raise bad_response(response, "query answered a result without an id")
        return found

    async def appended_already(self, block_id: str, body: dict[str, Any], pace: Pace) -> bool:
        """Did an earlier attempt of this append land? Read the children where it went.

        Placed after a block (or at the end, after the last block our appends put
        there): read from that block on, at most two pages, and compare the blocks
        right after it. Notion's cursors are block ids (a `next_cursor` is the id of
        the next block; reference/get-block-children calls it opaque), so a cursor
        it refuses falls back to reading every child and comparing the last ones.
        """
        sent = body["children"]
        position: dict[str, Any] = body["position"] if isinstance(body.get("position"), dict) else {}
        if position.get("type") == "start":
            page = await self._children_page(block_id, None, pace)
            return _same(page.get("results") or [], sent)
        start = anchor(body) or self.tails.get(block_id)
        if start is not None:
            try:
                page = await self._children_page(block_id, start, pace)
            except Permanent:
                page = {}  # the cursor was refused: read them all
            found = list(page.get("results") or [])
            if found and found[0].get("id") == start:
                if len(found) <= len(sent) and page.get("has_more") and page.get("next_cursor"):
                    found += (await self._children_page(block_id, page["next_cursor"], pace)).get("results") or []
                landed = _same(found[1:1 + len(sent)], sent)
                if landed and anchor(body) is None:
                    self.tails[block_id] = found[len(sent)]["id"]
                return landed
        existing = await self._all_children(block_id, pace)
        if existing and anchor(body) is None and position.get("type", "end") == "end":
            self.tails[block_id] = existing[-1]["id"]
        return len(existing) >= len(sent) and _same(existing[len(existing) - len(sent):], sent)

    async def _children_page(self, block_id: str, cursor: str | None, pace: Pace) -> dict[str, Any]:
        params: dict[str, Any] = {"page_size": 100}
        if cursor:
            params["start_cursor"] = cursor
        await pace()
        response = await request(self.http, "GET", f"blocks/{block_id}/children", params=params)
        check(response)
        return json_object(response)

    async def _all_children(self, block_id: str, pace: Pace) -> list[Any]:
        existing: list[Any] = []
        cursor: str | None = None
        while True:
            doc = await self._children_page(block_id, cursor, pace)
            existing.extend(doc.get("results") or [])
            cursor = doc.get("next_cursor")
            if not doc.get("has_more") or not cursor:
                return existing
