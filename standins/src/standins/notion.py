"""Notion API simulator on loopback (`/v1`, versions 2022-06-28, 2025-09-03 and 2026-03-11).

Usage::

    with NotionSimulator(rate_per_second=50, burst=50) as sim:
        db = sim.create_database(title="Trades", properties={
            "Name": "title", "Idempotency Key": "rich_text", "Price": "number", "Side": "select"})
        http = httpx.Client(base_url=sim.url + "/v1", headers={
            "Authorization": f"Bearer {sim.token}", "Notion-Version": "2022-06-28"})
        http.post("/pages", json={"parent": {"database_id": db}, "properties": {
            "Name": {"title": [{"text": {"content": "BUY AAPL"}}]},
            "Idempotency Key": {"rich_text": [{"text": {"content": "k-1"}}]}}})
        sim.pages_with_property(db, "Idempotency Key", "k-1")   # -> [page]
        # 2025-09-03: parent {"data_source_id": sim.data_source_id(db)},
        # query POST /v1/data_sources/{id}/query.

HTTP endpoints: `POST /v1/pages`, `GET|PATCH /v1/pages/{id}`,
`PATCH /v1/blocks/{id}/children` (optional `after` or `position`),
`GET /v1/blocks/{id}/children` (`page_size`, `start_cursor` query parameters),
`GET /v1/databases/{id}`, `POST /v1/databases/{id}/query` (2022-06-28 only),
`GET /v1/data_sources/{id}`, `POST /v1/data_sources/{id}/query` (2025-09-03 on).
Create accepts `parent: {database_id}` in every version (refused once the
database holds a second data source, `add_data_source()`) and
`parent: {data_source_id}` from 2025-09-03; pages under a page are not simulated.

What the versions change, from Notion's documents:
- 2025-09-03 (developers.notion.com/docs/upgrade-guide-2025-09-03): a database
  holds data sources; `GET /v1/databases/{id}` lists `data_sources: [{id, name}]`
  and no longer `properties`; queries go to `POST /v1/data_sources/{id}/query`.
  On older versions "create page when using the database as the parent" and
  "database read, write, or query" fail once a database has a second data
  source: the documents do not give the answer's code, so this stand-in says
  400 `validation_error`. The retired `POST /v1/databases/{id}/query` answers
  400 `invalid_request_url` on 2025-09-03 on (the documents call the endpoint
  replaced, not the answer; this code is what an unknown route gets).
- 2026-03-11 (developers.notion.com/docs/upgrade-guide-2026-03-11): an append's
  `after` is removed in favour of `position` (`{"type": "after_block",
  "after_block": {"id"}}`, `{"type": "start"}`, `{"type": "end"}`: notion-sdk-js
  `src/api-endpoints/common.ts` `ContentPositionSchema`), and `archived` in
  favour of `in_trash`: a request still using them is refused (400
  `validation_error`; the documents say "will break", not how).

Size limits (developers.notion.com/reference/request-limits) refuse the whole
request, whichever item breaks them, as Notion does. Checks, in order: `Authorization: Bearer <token>` (401 `unauthorized`),
`Notion-Version` (400 `missing_version`, unknown: 400 `validation_error`),
rate limit per token across connections (429 `rate_limited` + `Retry-After` whole seconds,
`additional_data.rate_limit_reason` in the body, `rate_limit_reason=` sets it),
route (400 `invalid_request_url`), body over 500,000 bytes, not JSON (400
`invalid_json`), any array over 100 items, rich-text content over 2000, link
URL over 2000, equation over 1000, more than 1000 blocks in one request,
children nested more than 2 levels below a top-level block, unknown property
names or wrong value types (400 `validation_error`), unknown ids (404
`object_not_found`), edits of archived pages (400 `validation_error`).

Query: `filter` is `{"property": NAME, TYPE: {"equals": VALUE}}`, where TYPE is
`title`/`rich_text` (plain text of the whole value; also for url properties)
or the property's own type (number, select, checkbox, date, url); archived and
trashed pages are left out; results in creation order; `page_size` <= 100;
`start_cursor` is the `next_cursor` of the previous answer.

Faults beside base.py's: `chaos(errors=0.05, lost=0.05)` answers that share of API
requests 500/503 before applying them (every 20th request at 5%), and that share
504 after applying them (an unknown outcome), spread evenly so that a short test
sees each; `chaos_counts` says how many of each were sent.

Python API for tests: `create_database()`, `add_data_source()`, `data_source_id()`, `pages()`,
`page()`, `children()`, `pages_with_property()`, and `property_value(page, name)`.
Control API (besides base.py's): `POST /_sim/databases {"title", "properties"}`
answers `{"database_id", "data_source_id"}`.

CLI: `python -m standins.notion --port N --token T --rate R --burst B`
prints one JSON line `{"url", "database_id", "data_source_id", "token"}` (a
database with `DEFAULT_SCHEMA`) and serves until SIGTERM/SIGINT. `--rate 0`: unlimited.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from standins.base import Request, Response, SimError, SimServer, cli_parser, retry_after_seconds, run_until_signal

VERSION_2022 = "2022-06-28"
VERSION_2025 = "2025-09-03"
VERSION_2026 = "2026-03-11"
NOTION_VERSIONS = (VERSION_2022, VERSION_2025, VERSION_2026)

MAX_BODY_BYTES = 500_000
MAX_TEXT = 2000
MAX_URL = 2000
MAX_EQUATION = 1000
MAX_ARRAY = 100
MAX_BLOCKS = 1000
# Levels of `children` below a top-level block that one request may carry.
MAX_NESTING = 2

PROPERTY_TYPES = ("title", "rich_text", "number", "select", "multi_select", "checkbox", "date", "url")
TEXT_TYPES = ("title", "rich_text")

DEFAULT_SCHEMA: dict[str, str] = {
    "Name": "title",
    "Idempotency Key": "rich_text",
    "Symbol": "rich_text",
    "Side": "select",
    "Price": "number",
    "Quantity": "number",
    "Tags": "multi_select",
    "Filled": "checkbox",
    "Time": "date",
    "Link": "url",
}

_EMPTY_VALUES: dict[str, Any] = {
    "title": [], "rich_text": [], "number": None, "select": None,
    "multi_select": [], "checkbox": False, "date": None, "url": None,
}
_ANNOTATIONS = {
    "bold": False, "italic": False, "strikethrough": False,
    "underline": False, "code": False, "color": "default",
}


def property_value(page: dict[str, Any], name: str) -> Any:
    """Plain value of a page property::

        property_value(page, "Idempotency Key")   # -> "k-1" (text joined)
        property_value(page, "Side")              # -> "BUY" (select name) or None
    """
    prop = page["properties"][name]
    kind = prop["type"]
    value = prop[kind]
    if kind in TEXT_TYPES:
        return "".join(part["plain_text"] for part in value)
    if kind == "select":
        return value["name"] if value else None
    if kind == "multi_select":
        return [option["name"] for option in value]
    if kind == "date":
        return value["start"] if value else None
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _invalid(message: str) -> SimError:
    return SimError(400, "validation_error", message)


def _body_invalid(message: str) -> SimError:
    return _invalid(f"body failed validation: {message}")


def _not_found(kind: str, object_id: str) -> SimError:
    return SimError(
        404, "object_not_found",
        f"Could not find {kind} with ID: {object_id}. "
        "Make sure the relevant pages and databases are shared with your integration.",
    )


def _uuid(raw: str, what: str) -> str:
    """Notion accepts ids with or without dashes; store them dashed."""
    try:
        return str(uuid.UUID(hex=raw))
    except ValueError:
        raise _invalid(f"path failed validation: path.{what} should be a valid uuid, instead was `\"{raw}\"`.") from None


def _longest_list(value: Any, path: str) -> tuple[str, int] | None:
    """First JSON array longer than MAX_ARRAY, as (path, length)."""
    if isinstance(value, list):
        if len(value) > MAX_ARRAY:
            return path, len(value)
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{path}.{k}", v) for k, v in value.items()]
    else:
        return None
    for sub_path, sub in items:
        found = _longest_list(sub, sub_path)
        if found:
            return found
    return None


def _check_length(value: str, limit: int, path: str) -> None:
    if len(value) > limit:
        raise _body_invalid(f"{path}.length should be ≤ `{limit}`, instead was `{len(value)}`.")


def _rich_text(items: Any, path: str) -> list[dict[str, Any]]:
    """Validate rich text and return it the way Notion answers it (with plain_text)."""
    if not isinstance(items, list):
        raise _body_invalid(f"{path} should be an array.")
    out = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise _body_invalid(f"{where} should be an object.")
        kind = item.get("type") or next((k for k in ("text", "mention", "equation") if k in item), None)
        href = None
        if kind == "text" and isinstance(item.get("text"), dict):
            content = item["text"].get("content")
            if not isinstance(content, str):
                raise _body_invalid(f"{where}.text.content should be a string.")
            _check_length(content, MAX_TEXT, f"{where}.text.content")
            link = item["text"].get("link")
            if link is not None:
                if not isinstance(link, dict) or not isinstance(link.get("url"), str):
                    raise _body_invalid(f"{where}.text.link.url should be a string.")
                _check_length(link["url"], MAX_URL, f"{where}.text.link.url")
                href = link["url"]
            body: dict[str, Any] = {"content": content, "link": link}
            plain = content
        elif kind == "equation" and isinstance(item.get("equation"), dict):
            plain = str(item["equation"].get("expression", ""))
            _check_length(plain, MAX_EQUATION, f"{where}.equation.expression")
            body = {"expression": plain}
        elif kind == "mention" and isinstance(item.get("mention"), dict):
            body = item["mention"]
            plain = str(item.get("plain_text", ""))
        else:
            raise _body_invalid(f"{where} should be a text, mention or equation object.")
        annotations = {**_ANNOTATIONS, **(item.get("annotations") or {})}
        out.append({"type": kind, kind: body, "annotations": annotations, "plain_text": plain, "href": href})
    return out


def _option(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("name", value.get("id")), str):
        raise _body_invalid(f"{path} should be an object with `name`.")
    name = str(value.get("name", value.get("id")))
    _check_length(name, 100, f"{path}.name")
    # Stable ids so the same option name gets the same id on every page.
    return {"id": uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:8], "name": name, "color": value.get("color", "default")}


def _date(value: Any, path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("start"), str):
        raise _body_invalid(f"{path}.start should be an ISO 8601 string.")
    for key in ("start", "end"):
        if value.get(key) is not None:
            try:
                datetime.fromisoformat(value[key])
            except (TypeError, ValueError):
                raise _body_invalid(f"{path}.{key} should be an ISO 8601 date, instead was `{value[key]!r}`.") from None
    return {"start": value["start"], "end": value.get("end"), "time_zone": value.get("time_zone")}


def _property_value(kind: str, value: Any, path: str) -> Any:
    """Validate one property value of schema type `kind`; return the stored form."""
    if kind in TEXT_TYPES:
        return _rich_text(value, path)
    if kind == "number" and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))):
        return value
    if kind == "checkbox" and isinstance(value, bool):
        return value
    if kind == "url" and (value is None or isinstance(value, str)):
        if value is not None:
            _check_length(value, MAX_URL, path)
        return value
    if kind == "select":
        return None if value is None else _option(value, path)
    if kind == "multi_select" and isinstance(value, list):
        return [_option(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "date":
        return _date(value, path)
    raise _body_invalid(f"{path} should be a valid {kind} value, instead was `{value!r}`.")


def _block_children(block: dict[str, Any]) -> list[Any] | None:
    """Nested children sit inside the type object (Notion's form) or, tolerated, beside it."""
    inner = block.get(block.get("type", ""), {})
    kids = inner.get("children") if isinstance(inner, dict) else None
    return kids if kids is not None else block.get("children")


def _count_blocks(blocks: Any, path: str, depth: int) -> int:
    """Validate a `children` array; return how many blocks it holds, nested ones included."""
    if not isinstance(blocks, list):
        raise _body_invalid(f"{path} should be an array.")
    total = 0
    for i, block in enumerate(blocks):
        where = f"{path}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str) or not isinstance(block.get(kind), dict):
            raise _body_invalid(f"{where} should be a block object with `type` and a `{kind or 'type'}` object.")
        if "rich_text" in block[kind]:
            _rich_text(block[kind]["rich_text"], f"{where}.{kind}.rich_text")
        total += 1
        kids = _block_children(block)
        if kids:
            if depth + 1 > MAX_NESTING:
                raise _invalid(
                    f"body failed validation: {where}.{kind}.children is nested more than {MAX_NESTING} levels "
                    "deep; append deeper children in a later request."
                )
            total += _count_blocks(kids, f"{where}.{kind}.children", depth + 1)
    return total


def _check_children(blocks: Any, path: str) -> None:
    if _count_blocks(blocks, path, 0) > MAX_BLOCKS:
        raise _body_invalid(f"the request holds more than {MAX_BLOCKS} block elements.")


def _paginate(items: list[dict[str, Any]], page_size: Any, cursor: Any, where: str) -> dict[str, Any]:
    """One page of a Notion list answer; cursors are the id of the first item of the next page."""
    if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_ARRAY:
        raise _invalid(f"{where} failed validation: {where}.page_size should be ≤ `{MAX_ARRAY}`, "
                       f"instead was `{page_size}`.")
    start = 0
    if cursor is not None:
        ids = [item["id"] for item in items]
        wanted = _uuid(str(cursor), "start_cursor")
        if wanted not in ids:
            raise _invalid(f"{where} failed validation: {where}.start_cursor `{cursor}` is not valid.")
        start = ids.index(wanted)
    has_more = start + page_size < len(items)
    return {
        "object": "list", "results": items[start:start + page_size],
        "next_cursor": items[start + page_size]["id"] if has_more else None, "has_more": has_more,
    }


@dataclass
class _Database:
    id: str
    data_source_id: str
    title: str
    schema: dict[str, str]  # property name -> type
    created_time: str
    # Data sources added beside the first, as (id, name); they share the schema here.
    more_sources: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def schema_json(self) -> dict[str, Any]:
        return {
            name: {"id": "title" if kind == "title" else uuid.uuid5(uuid.NAMESPACE_OID, name).hex[:4],
                   "name": name, "type": kind, kind: {}}
            for name, kind in self.schema.items()
        }


_Route = tuple[str, "re.Pattern[str]", Callable[..., Response]]


class NotionSimulator(SimServer):
    """Loopback Notion API; see the module docstring for the full contract.

    Usage::

        sim = NotionSimulator(token="secret_sim_token", rate_per_second=3.0, burst=3).start()
        db = sim.create_database(title="Trades")      # DEFAULT_SCHEMA
        ...; sim.stop()
    """

    fault_codes: ClassVar[dict[int, str]] = {
        400: "validation_error", 401: "unauthorized", 403: "restricted_resource", 404: "object_not_found",
        409: "conflict_error", 429: "rate_limited", 500: "internal_server_error", 502: "bad_gateway",
        503: "service_unavailable", 504: "gateway_timeout", 529: "service_overload",
    }

    def __init__(
        self, *, token: str = "secret_sim_token", rate_per_second: float | None = 3.0,
        burst: int = 3, port: int = 0, rate_limit_reason: str = "integration_rate_limit",
    ) -> None:
        super().__init__(port=port, rate_per_second=rate_per_second, burst=burst)
        self.token = token
        # The documented values of additional_data.rate_limit_reason are not in our facts: a setting.
        self.rate_limit_reason = rate_limit_reason
        self._databases: dict[str, _Database] = {}
        self._sources: dict[str, str] = {}  # data source id -> database id
        self._pages: dict[str, dict[str, Any]] = {}
        self._blocks: dict[str, dict[str, Any]] = {}
        self._children: dict[str, list[str]] = {}  # page or block id -> child block ids, in order
        self._chaos = (0.0, 0.0)
        self._chaos_seen = 0  # API requests counted since chaos() was set
        self.chaos_counts = {"errors": 0, "lost": 0}
        self._routes: list[_Route] = [
            ("POST", re.compile(r"/v1/pages"), self._create_page),
            ("GET", re.compile(r"/v1/pages/([^/]+)"), self._get_page),
            ("PATCH", re.compile(r"/v1/pages/([^/]+)"), self._update_page),
            ("PATCH", re.compile(r"/v1/blocks/([^/]+)/children"), self._append),
            ("GET", re.compile(r"/v1/blocks/([^/]+)/children"), self._list_children),
            ("GET", re.compile(r"/v1/databases/([^/]+)"), self._get_database),
            ("POST", re.compile(r"/v1/databases/([^/]+)/query"), self._query_database),
            ("GET", re.compile(r"/v1/data_sources/([^/]+)"), self._get_data_source),
            ("POST", re.compile(r"/v1/data_sources/([^/]+)/query"), self._query_data_source),
        ]

    # -- Python API for tests ----------------------------------------------
    def create_database(self, title: str = "Trades", properties: dict[str, str] | None = None) -> str:
        """Create a database (one data source) and return its id.

        `properties` maps name -> type (one of PROPERTY_TYPES, exactly one "title");
        default DEFAULT_SCHEMA.
        """
        schema = dict(properties or DEFAULT_SCHEMA)
        bad = {kind for kind in schema.values() if kind not in PROPERTY_TYPES}
        if bad or list(schema.values()).count("title") != 1:
            raise ValueError(f"need exactly one title property and known types, got {schema}")
        db = _Database(str(uuid.uuid4()), str(uuid.uuid4()), title, schema, _now())
        with self.lock:
            self._databases[db.id] = db
            self._sources[db.data_source_id] = db.id
        return db.id

    def add_data_source(self, database_id: str, name: str = "Second source") -> str:
        """Give a database another data source (same schema here); return its id."""
        with self.lock:
            db = self._databases[database_id]
            source = str(uuid.uuid4())
            db.more_sources.append((source, name))
            self._sources[source] = db.id
            return source

    def chaos(self, *, errors: float = 0.0, lost: float = 0.0) -> None:
        """Answer a share `errors` of API requests 500/503 unapplied, and a share `lost` 504 after applying."""
        with self.lock:
            self._chaos = (errors, lost)
            self._chaos_seen = 0

    def _chaos_hits(self, share: float, offset: float) -> bool:
        """Is this request one of the evenly spread `share` of them?"""
        n = self._chaos_seen + offset
        return share > 0 and int(n * share) > int((n - 1) * share)

    def data_source_id(self, database_id: str) -> str:
        """The single data source of a database (for Notion-Version 2025-09-03)."""
        with self.lock:
            return self._databases[database_id].data_source_id

    def pages(self) -> list[dict[str, Any]]:
        """Every page ever created (archived too), in creation order, as 2025-09-03 objects."""
        with self.lock:
            return copy.deepcopy(list(self._pages.values()))

    def page(self, page_id: str) -> dict[str, Any]:
        """One page by id (dashes optional); KeyError if unknown."""
        with self.lock:
            return copy.deepcopy(self._pages[str(uuid.UUID(hex=page_id))])

    def children(self, block_id: str) -> list[dict[str, Any]]:
        """Child blocks of a page or block, in order (empty if none)."""
        with self.lock:
            ids = self._children.get(str(uuid.UUID(hex=block_id)), [])
            return copy.deepcopy([self._blocks[i] for i in ids])

    def pages_with_property(
        self, database_id: str, name: str, value: Any, *, include_archived: bool = False
    ) -> list[dict[str, Any]]:
        """Pages of a database whose `property_value(page, name) == value`."""
        with self.lock:
            return copy.deepcopy([
                p for p in self._pages.values()
                if p["parent"]["database_id"] == database_id
                and (include_archived or not (p["archived"] or p["in_trash"]))
                and property_value(p, name) == value
            ])

    def state(self) -> dict[str, Any]:
        return {
            "databases": [
                {"id": d.id, "data_source_id": d.data_source_id, "title": d.title, "properties": d.schema}
                for d in self._databases.values()
            ],
            "pages": list(self._pages.values()),
            "children": {parent: [self._blocks[i] for i in ids] for parent, ids in self._children.items()},
        }

    def control(self, request: Request, name: str) -> Response | None:
        if (request.method, name) != ("POST", "databases"):
            return None
        body = request.json() if request.body else {}
        db = self.create_database(body.get("title", "Trades"), body.get("properties"))
        return Response(200, {"database_id": db, "data_source_id": self._databases[db].data_source_id})

    # -- HTTP ---------------------------------------------------------------
    def error(self, err: SimError) -> Response:
        body = {
            "object": "error", "status": err.status, "code": err.code,
            "message": err.message, "request_id": str(uuid.uuid4()), **err.extra,
        }
        headers = {"Retry-After": "1"} if err.status == 429 else {}
        return Response(err.status, body, headers)

    def handle(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise SimError(401, "unauthorized", "API token is invalid.")
        version = request.headers.get("notion-version")
        if version is None:
            raise SimError(
                400, "missing_version",
                "Notion-Version header failed validation: Notion-Version header should be defined, "
                "instead was `undefined`.",
            )
        if version not in NOTION_VERSIONS:
            raise _invalid(
                f"Notion-Version header failed validation: `{version}` is not one of {list(NOTION_VERSIONS)}."
            )
        wait = self.limiter.take(self.token)  # one bucket per token, whatever the connection
        if wait:
            raise SimError(
                429, "rate_limited", "You have been rate limited. Please try again in a few minutes.",
                headers={"Retry-After": str(retry_after_seconds(wait))},
                extra={"additional_data": {"rate_limit_reason": self.rate_limit_reason}},
            )
        errors, lost = self._chaos
        self._chaos_seen += 1
        if self._chaos_hits(errors, 0):
            self.chaos_counts["errors"] += 1
            status = (500, 503)[self.chaos_counts["errors"] % 2]
            raise SimError(status, self.fault_codes[status], "chaos: failed before applying")
        for method, pattern, action in self._routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                # GET handlers receive the query string in place of a body.
                body = self._body(request) if method != "GET" else {k: v[-1] for k, v in request.query.items()}
                answer: Response = action(body, version, *match.groups())
                # Half a period after the errors, so the two never fall on one request.
                if method != "GET" and lost and self._chaos_hits(lost, 0.5 / lost):
                    self.chaos_counts["lost"] += 1
                    raise SimError(504, "gateway_timeout", "chaos: applied, answer lost")
                return answer
        raise SimError(400, "invalid_request_url", f"Invalid request URL: {request.method} {request.path}")

    def _body(self, request: Request) -> dict[str, Any]:
        if len(request.body) > MAX_BODY_BYTES:
            raise _invalid(f"Request body too large: {len(request.body)} bytes, the limit is {MAX_BODY_BYTES}.")
        if not request.body.strip():
            return {}
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            raise SimError(400, "invalid_json", "Error parsing JSON body.") from None
        if not isinstance(body, dict):
            raise _body_invalid("body should be an object.")
        too_long = _longest_list(body, "body")
        if too_long:
            raise _invalid(
                f"body failed validation: {too_long[0]}.length should be ≤ `{MAX_ARRAY}`, "
                f"instead was `{too_long[1]}`."
            )
        return body

    def _database(self, raw: str) -> _Database:
        db = self._databases.get(_uuid(raw, "database_id"))
        if db is None:
            raise _not_found("database", raw)
        return db

    def _data_source(self, raw: str) -> _Database:
        db_id = self._sources.get(_uuid(raw, "data_source_id"))
        if db_id is None:
            raise _not_found("data source", raw)
        return self._databases[db_id]

    def _single_source(self, db: _Database) -> _Database:
        """A database used where one data source is meant (a database parent, the old query)."""
        if db.more_sources:
            raise _invalid(f"Database {db.id} has {1 + len(db.more_sources)} data sources: use a data_source_id "
                           "(Notion-Version 2025-09-03 or later).")
        return db

    def _page(self, raw: str) -> dict[str, Any]:
        page = self._pages.get(_uuid(raw, "page_id"))
        if page is None:
            raise _not_found("page", raw)
        return page

    def _page_json(self, page: dict[str, Any], version: str) -> dict[str, Any]:
        out = copy.deepcopy(page)
        if version == VERSION_2022:
            out["parent"] = {"type": "database_id", "database_id": page["parent"]["database_id"]}
        return out

    def _properties(self, db: _Database, given: Any) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise _body_invalid("body.properties should be an object.")
        ids = {prop["id"]: name for name, prop in db.schema_json().items()}
        out = {}
        for key, value in given.items():
            name = key if key in db.schema else ids.get(key)
            if name is None:
                raise _invalid(f"{key} is not a property that exists.")
            kind = db.schema[name]
            if not isinstance(value, dict) or kind not in value:
                raise _invalid(f"{name} is expected to be {kind}.")
            stored = _property_value(kind, value[kind], f"body.properties.{name}.{kind}")
            out[name] = {"id": db.schema_json()[name]["id"], "type": kind, kind: stored}
        return out

    def _create_page(self, body: dict[str, Any], version: str) -> Response:
        parent = body.get("parent")
        if not isinstance(parent, dict):
            raise _body_invalid("body.parent should be defined, instead was `undefined`.")
        if "data_source_id" in parent:
            if version == VERSION_2022:
                raise _invalid("body.parent.data_source_id requires Notion-Version 2025-09-03.")
            db = self._data_source(str(parent["data_source_id"]))
            source = _uuid(str(parent["data_source_id"]), "data_source_id")
        elif "database_id" in parent:
            db = self._single_source(self._database(str(parent["database_id"])))
            source = db.data_source_id
        else:
            raise _invalid("body.parent: the simulator supports database_id and data_source_id parents only.")
        properties = self._properties(db, body.get("properties", {}))
        if "children" in body:
            _check_children(body["children"], "body.children")
        now, page_id = _now(), str(uuid.uuid4())
        empty = {
            name: {"id": prop["id"], "type": prop["type"], prop["type"]: copy.deepcopy(_EMPTY_VALUES[prop["type"]])}
            for name, prop in db.schema_json().items()
        }
        page = {
            "object": "page", "id": page_id, "created_time": now, "last_edited_time": now,
            "created_by": {"object": "user", "id": "sim-bot"}, "last_edited_by": {"object": "user", "id": "sim-bot"},
            "cover": body.get("cover"), "icon": body.get("icon"),
            "parent": {"type": "data_source_id", "data_source_id": source, "database_id": db.id},
            "archived": False, "in_trash": False, "properties": {**empty, **properties},
            "url": f"https://www.notion.so/{page_id.replace('-', '')}", "public_url": None,
        }
        self._pages[page_id] = page
        if body.get("children"):
            self._store_blocks(page_id, "page_id", body["children"], 0)
        return Response(200, self._page_json(page, version))

    def _get_page(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        return Response(200, self._page_json(self._page(raw_id), version))

    def _update_page(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        page = self._page(raw_id)
        if version >= VERSION_2026 and "archived" in body:
            raise _body_invalid("body.archived is not supported in 2026-03-11: use in_trash.")
        flags = {key: body[key] for key in ("archived", "in_trash") if key in body}
        if any(not isinstance(v, bool) for v in flags.values()):
            raise _body_invalid("body.archived and body.in_trash should be booleans.")
        if (page["archived"] or page["in_trash"]) and False not in flags.values():
            raise _invalid("Can't edit block that is archived. You must unarchive the block before editing.")
        db = self._databases[page["parent"]["database_id"]]
        properties = self._properties(db, body.get("properties", {}))
        page["properties"].update(properties)
        if flags:
            # archived is the older name of in_trash; keep both in step.
            page["archived"] = page["in_trash"] = list(flags.values())[-1]
        for key in ("icon", "cover"):
            if key in body:
                page[key] = body[key]
        page["last_edited_time"] = _now()
        return Response(200, self._page_json(page, version))

    def _append(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        parent_id = _uuid(raw_id, "block_id")
        if parent_id in self._pages:
            parent_type = "page_id"
            if self._pages[parent_id]["archived"] or self._pages[parent_id]["in_trash"]:
                raise _invalid("Can't edit block that is archived. You must unarchive the block before editing.")
        elif parent_id in self._blocks:
            parent_type = "block_id"
        else:
            raise _not_found("block", raw_id)
        if "children" not in body:
            raise _body_invalid("body.children should be defined, instead was `undefined`.")
        if version >= VERSION_2026 and "after" in body:
            raise _body_invalid("body.after is not supported in 2026-03-11: use position.")
        _check_children(body["children"], "body.children")
        index = self._insert_index(parent_id, body)
        blocks = self._store_blocks(parent_id, parent_type, body["children"], index)
        return Response(200, {"object": "list", "results": blocks, "next_cursor": None,
                              "has_more": False, "type": "block", "block": {}})

    def _insert_index(self, parent_id: str, body: dict[str, Any]) -> int:
        """Where appended blocks go: the end, or per `after` / `position`."""
        siblings = self._children.get(parent_id, [])
        position = body.get("position") or {}
        after = body.get("after")
        if position.get("type") not in (None, "start", "end", "after_block"):
            raise _body_invalid(f"body.position.type should be start, end or after_block, instead was "
                                f"`{position.get('type')}`.")
        if position.get("type") == "start":
            return 0
        if position.get("type") == "after_block":
            after = (position.get("after_block") or {}).get("id")
        if after is None:
            return len(siblings)
        after_id = _uuid(str(after), "after")
        if after_id not in siblings:
            raise _body_invalid(f"block {after} is not a child of {parent_id}.")
        return siblings.index(after_id) + 1

    def _store_blocks(
        self, parent_id: str, parent_type: str, blocks: list[dict[str, Any]], index: int
    ) -> list[dict[str, Any]]:
        """Store validated blocks (and their children) under a parent; return the top-level ones."""
        stored = []
        for block in blocks:
            kind = block["type"]
            now, block_id = _now(), str(uuid.uuid4())
            content = {k: v for k, v in block[kind].items() if k != "children"}
            if "rich_text" in content:
                content["rich_text"] = _rich_text(content["rich_text"], "")
            kids = _block_children(block) or []
            new = {
                "object": "block", "id": block_id, "parent": {"type": parent_type, parent_type: parent_id},
                "created_time": now, "last_edited_time": now, "has_children": bool(kids),
                "archived": False, "in_trash": False, "type": kind, kind: content,
            }
            self._blocks[block_id] = new
            stored.append(new)
            if kids:
                self._store_blocks(block_id, "block_id", kids, 0)
        siblings = self._children.setdefault(parent_id, [])
        siblings[index:index] = [b["id"] for b in stored]
        return copy.deepcopy(stored)

    def _get_database(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        db = self._database(raw_id)
        if version == VERSION_2022:
            self._single_source(db)
        out: dict[str, Any] = {
            "object": "database", "id": db.id, "created_time": db.created_time,
            "title": _rich_text([{"text": {"content": db.title}}], "title"),
        }
        if version == VERSION_2022:
            out["properties"] = db.schema_json()
        else:
            out["data_sources"] = [{"id": db.data_source_id, "name": db.title}] + [
                {"id": source, "name": name} for source, name in db.more_sources]
        return Response(200, out)

    def _get_data_source(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        self._need_2025(version)
        db = self._data_source(raw_id)
        return Response(200, {
            "object": "data_source", "id": _uuid(raw_id, "data_source_id"),
            "parent": {"type": "database_id", "database_id": db.id},
            "title": _rich_text([{"text": {"content": db.title}}], "title"), "properties": db.schema_json(),
        })

    def _query_database(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        if version != VERSION_2022:
            raise SimError(400, "invalid_request_url",
                           "Databases are queried through POST /v1/data_sources/{id}/query in 2025-09-03.")
        db = self._single_source(self._database(raw_id))
        return self._query(db, body, version, db.data_source_id)

    def _query_data_source(self, body: dict[str, Any], version: str, raw_id: str) -> Response:
        self._need_2025(version)
        return self._query(self._data_source(raw_id), body, version, _uuid(raw_id, "data_source_id"))

    def _need_2025(self, version: str) -> None:
        if version < VERSION_2025:
            raise SimError(400, "invalid_request_url", "Data source endpoints need Notion-Version 2025-09-03.")

    def _query(self, db: _Database, body: dict[str, Any], version: str, source: str) -> Response:
        keep = self._filter(db, body.get("filter"))
        found = [p for p in self._pages.values()
                 if p["parent"]["data_source_id"] == source and not (p["archived"] or p["in_trash"]) and keep(p)]
        listing = _paginate(found, body.get("page_size", MAX_ARRAY), body.get("start_cursor"), "body")
        listing["results"] = [self._page_json(p, version) for p in listing["results"]]
        return Response(200, {**listing, "type": "page_or_database", "page_or_database": {}})

    def _list_children(self, params: dict[str, Any], version: str, raw_id: str) -> Response:
        parent_id = _uuid(raw_id, "block_id")
        if parent_id not in self._pages and parent_id not in self._blocks:
            raise _not_found("block", raw_id)
        blocks = [self._blocks[i] for i in self._children.get(parent_id, [])]
        size = params.get("page_size", str(MAX_ARRAY))
        listing = _paginate(blocks, int(size) if size.isdigit() else size, params.get("start_cursor"), "query")
        return Response(200, {**copy.deepcopy(listing), "type": "block", "block": {}})

    def _filter(self, db: _Database, spec: Any) -> Callable[[dict[str, Any]], bool]:
        """Compile `{"property": NAME, TYPE: {"equals": VALUE}}` into a predicate."""
        if spec is None:
            return lambda page: True
        if not isinstance(spec, dict) or not isinstance(spec.get("property"), str) or len(spec) != 2:
            raise _body_invalid("body.filter should be {\"property\": NAME, TYPE: {\"equals\": VALUE}}.")
        name = spec["property"]
        if name not in db.schema:
            raise _invalid(f"Could not find property with name or id: {name}")
        condition = next(k for k in spec if k != "property")
        test = spec[condition]
        kind = db.schema[name]
        text_like = condition in TEXT_TYPES and kind in (*TEXT_TYPES, "url")
        if not (text_like or condition == kind):
            raise _body_invalid(f"filter.{condition} does not match property {name} of type {kind}.")
        if not isinstance(test, dict) or list(test) != ["equals"]:
            raise _body_invalid(f"filter.{condition} supports only `equals` in the simulator.")
        wanted = test["equals"]
        return lambda page: property_value(page, name) == wanted


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m standins.notion`."""
    parser = cli_parser("Notion API simulator on 127.0.0.1", rate=3.0, burst=3)
    parser.add_argument("--token", default="secret_sim_token", help="the accepted integration token")
    args = parser.parse_args(argv)
    sim = NotionSimulator(token=args.token, rate_per_second=args.rate or None, burst=args.burst, port=args.port)
    db = sim.create_database()
    return run_until_signal(sim, {"database_id": db, "data_source_id": sim.data_source_id(db), "token": args.token})


if __name__ == "__main__":
    sys.exit(main())
