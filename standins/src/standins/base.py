"""Shared machinery for the loopback HTTP simulators.

Every simulator is a `SimServer`: a real HTTP/1.1 server (keep-alive) on
127.0.0.1 that runs in a daemon thread, logs each API request, rate-limits with
a token bucket and can be told to misbehave with `Fault`s::

    with NotionSimulator() as sim:                 # start() / stop()
        sim.url, sim.port                          # "http://127.0.0.1:PORT"
        sim.inject(Fault(when="after", status=500, path_prefix="/v1/pages"))
        ...                                        # drive your client
        sim.requests                               # [RequestRecord(time, method, path, status)]
        sim.stats()                                # counts, 429s, peak per 1-second window
        sim.wait_until(lambda: len(sim.pages()) == 3, timeout=5)

Faults (only API requests, never `/_sim/...`), first matching fault wins and
is used up after `count` requests:

- `Fault(status=503)`: answer the error without applying (`when="before"`).
- `Fault(when="after", status=500)`: apply the request, then answer the error.
- `Fault(stall=2.0)`: sleep 2 s, then handle normally (client timeouts);
  with `when="after"` the change is applied first and the answer comes late.
- `Fault(reset=True)`: close the TCP connection (RST) with no answer; with
  `when="after"` the request is applied first.
- `status` may be combined with `stall`; `code`/`message` fill the simulator's
  own error body, `body` replaces it whole, `headers` adds headers (e.g.
  `{"Retry-After": "2"}`). `method` and `path_prefix` narrow what it hits.
- A hostile or broken answer (the fault's own with a status, else with
  `when="after"` the API's real one): `raw="<html>"` sends that body as is
  (`Fault(when="after", status=200, raw="oops")`: applied, answered 200 with
  a body that is not JSON; `body={}`: JSON without the fields a client
  reads); `huge=N` pads the body with JSON whitespace to N bytes;
  `drip=0.2` sends it chunked, one byte every 0.2 s, and never ends;
  `cut=True` resets the connection halfway through the body. A redirect is
  `Fault(status=307, headers={"Location": "http://elsewhere/"})`.

Control API, so a simulator in another process can be driven over HTTP:

- `GET /_sim/state`: the simulator's data (`state()`).
- `GET /_sim/stats`: `{"requests", "by_status", "rate_limited", "max_in_1s",
  "max_accepted_in_1s"}`: counts by status ("0": reset by a fault, or still
  in flight), 429s, and the most requests (all / not answered 429) whose
  arrival fell in any sliding 1-second window.
- `POST /_sim/faults`: one fault (or a list) as JSON, fields as `Fault`.
- `POST /_sim/reset`: drop pending faults, the request log and rate buckets;
  stored data (pages, products, deliveries) is kept.
- Subclasses add their own (`control()`), e.g. `POST /_sim/databases`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

Clock = Callable[[], float]

# Anything larger is refused before parsing so a runaway client cannot eat memory.
MAX_READ_BYTES = 32 * 1024 * 1024


def retry_after_seconds(wait: float) -> int:
    """Whole seconds for a `Retry-After` header, never below 1::

        retry_after_seconds(0.2)  # -> 1
        retry_after_seconds(1.5)  # -> 2
    """
    return max(1, math.ceil(wait))


class TokenBucket:
    """Thread-safe token bucket: `rate` tokens a second, at most `burst` saved::

        now = [0.0]
        b = TokenBucket(rate=1.0, burst=2, clock=lambda: now[0])
        b.take(), b.take(), b.take()   # -> (0.0, 0.0, 1.0): 0.0 = granted, else seconds to wait
        now[0] = 1.0
        b.take()                       # -> 0.0
    """

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens; return 0.0 if granted, else the wait until they would be."""
        with self._lock:
            self._refill()
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) / self.rate

    @property
    def remaining(self) -> float:
        """Tokens available now."""
        with self._lock:
            self._refill()
            return self._tokens


class RateLimiter:
    """One `TokenBucket` per key (token, application, ...); `rate=None` never limits::

        limiter = RateLimiter(rate=3.0, burst=3)
        limiter.take("secret_a")       # -> 0.0 (granted)
    """

    def __init__(self, rate: float | None, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[Any, TokenBucket] = {}
        self._lock = threading.Lock()

    def bucket(self, key: Any) -> TokenBucket | None:
        """The bucket for `key`, created full on first use (None when unlimited)."""
        if self.rate is None:
            return None
        with self._lock:
            if key not in self._buckets:
                self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
            return self._buckets[key]

    def take(self, key: Any) -> float:
        """0.0 if the request may pass, else seconds until it could."""
        bucket = self.bucket(key)
        return 0.0 if bucket is None else bucket.take()

    def reset(self) -> None:
        """Forget every bucket (all start full again)."""
        with self._lock:
            self._buckets.clear()


@dataclass
class RequestRecord:
    """One API request: arrival `time` (monotonic), `method`, `path`, `status`.

    `status` is 0 while in flight and for connections reset by a fault.
    """

    time: float
    method: str
    path: str
    status: int = 0


_FAULT_FIELDS = {
    "when", "status", "code", "message", "body", "headers",
    "stall", "reset", "method", "path_prefix", "count", "raw", "huge", "drip", "cut",
}


@dataclass
class Fault:
    """A misbehaviour for the next `count` matching API requests (`count` counts down)::

        Fault(status=503, code="service_unavailable")      # error, nothing applied
        Fault(when="after", status=500, path_prefix="/v1/pages", method="POST")
        Fault(when="after", stall=3.0)                     # applied, answered late
        Fault(reset=True, count=2)                         # no answer, socket reset
        Fault(when="after", drip=0.2)                      # applied, answer never ends
    """

    when: Literal["before", "after"] = "before"
    status: int | None = None
    code: str | None = None
    message: str = "fault injected by the simulator"
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    reset: bool = False
    method: str | None = None
    path_prefix: str | None = None
    count: int = 1
    raw: str | None = None
    huge: int = 0
    drip: float = 0.0
    cut: bool = False

    def __post_init__(self) -> None:
        if self.when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        if self.status is None and not self.reset and self.stall <= 0 and not self.shapes_body:
            raise ValueError("a fault needs status, stall, reset, raw, huge, drip or cut")
        if self.reset and (self.status is not None or self.shapes_body):
            raise ValueError("reset excludes status and the body faults")
        if self.shapes_body and self.when == "before" and self.status is None:
            raise ValueError("a body fault before the request is applied needs a status to answer")
        if self.count < 1 or self.stall < 0 or self.huge < 0 or self.drip < 0:
            raise ValueError("count must be >= 1; stall, huge and drip >= 0")

    @property
    def shapes_body(self) -> bool:
        """True if the answer's body is mangled (raw, huge, drip or cut)."""
        return self.raw is not None or self.huge > 0 or self.drip > 0 or self.cut

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from the JSON of `POST /_sim/faults`; unknown keys are refused."""
        unknown = set(data) - _FAULT_FIELDS
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)

    def shape(self, response: Response) -> Response:
        """`response` with this fault's body faults applied (itself if there are none)."""
        if not self.shapes_body:
            return response
        body = self.raw.encode() if self.raw is not None else response.encode()
        body += b" " * max(0, self.huge - len(body))  # trailing whitespace keeps JSON valid
        return Response(response.status, headers=dict(response.headers), body=body, drip=self.drip, cut=self.cut)

    def matches(self, method: str, path: str) -> bool:
        """True if this fault applies to a request with `method` and `path`."""
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


@dataclass
class Request:
    """An incoming request as the simulators see it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises `orjson.JSONDecodeError`)."""
        return orjson.loads(self.body)


@dataclass
class Response:
    """What a simulator answers; `json_body` is serialised when `body` is None."""

    status: int
    json_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    drip: float = 0.0  # faults (Fault.shape): a never-ending chunked answer, one byte per `drip` s
    cut: bool = False  # reset the connection halfway through the body

    def encode(self) -> bytes:
        if self.body is not None:
            return self.body
        return b"" if self.json_body is None else orjson.dumps(self.json_body)


class SimError(Exception):
    """Raise inside `handle()` to answer the simulator's error body::

        raise SimError(404, "object_not_found", "Could not find page")
    """

    def __init__(
        self, status: int, code: str, message: str, *,
        headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


class _ResetConnection(Exception):
    """Internal: close the socket without answering."""


class LoopbackServer:
    """An HTTP/1.1 server on 127.0.0.1 serving `handler` in a daemon thread::

        server = MyServer().start(); server.url; server.stop()
        with MyServer(port=8081) as server: ...

    `port=0` binds any free port. Open connections are tracked so `stop()`
    can cut keep-alive ones, which would otherwise go on answering.
    Subclasses hook in with `_on_start()` / `_on_stop()`.
    """

    def __init__(self, handler: type[LoopbackHandler[Any]], *, port: int = 0) -> None:
        self._handler_class = handler
        self._wanted_port = port
        self._httpd: _LoopbackHTTPServer[Any] | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    def _on_start(self) -> None:
        """Called by `start()` before binding."""

    def _on_stop(self) -> None:
        """Called by `stop()` before the server shuts down."""

    def start(self) -> Self:
        """Bind 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._on_start()
        self._httpd = _LoopbackHTTPServer(("127.0.0.1", self._wanted_port), self._handler_class, self)
        # A short poll interval keeps stop() (which waits for the loop to notice) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=f"{type(self).__name__}:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections (they would still answer)."""
        if self._httpd is None:
            return
        self._on_stop()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conn_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. `http://127.0.0.1:40123`."""
        return f"http://127.0.0.1:{self.port}"

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)


Owner = TypeVar("Owner", bound=LoopbackServer)


class _LoopbackHTTPServer(ThreadingHTTPServer, Generic[Owner]):
    daemon_threads = True  # stalled handlers must not keep the process alive

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Owner) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on an answer (its deadline) resets the connection: not a server bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackHandler(BaseHTTPRequestHandler, Generic[Owner]):
    """Request handler of a `LoopbackServer`; `self.server.owner` is that server."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    # Headers and body go out in separate writes; with Nagle on, the body waits
    # for the client's delayed ACK and every answer takes 40 ms.
    disable_nagle_algorithm = True
    server: _LoopbackHTTPServer[Owner]

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        self.server.owner._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass  # the socket may already be reset

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the server's own records instead of stderr noise

    def write_body(self, payload: bytes, *, drip: float = 0.0, cut: bool = False) -> None:
        """End the headers and send `payload`, or misbehave as `Response.drip`/`cut` say."""
        if drip > 0:
            self.close_connection = True
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            # Never ends: the client's give-up (or stop() shutting the socket) ends it with an OSError.
            for n in itertools.count():
                self.wfile.write(b"1\r\n" + (payload[n:n + 1] or b" ") + b"\r\n")
                time.sleep(drip)
        if cut:
            payload = payload or b"{}"  # an empty answer (S3's 200 to a PUT) has no middle to cut in
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if cut:
            self.wfile.write(payload[: len(payload) // 2])
            self.reset_connection()
            return
        self.wfile.write(payload)

    def reset_connection(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST, as a crashed peer or a middlebox would.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class SimServer(LoopbackServer):
    """Base of every simulator. Subclasses implement `handle()` and `error()`::

        sim = MySim().start(); sim.url; sim.stop()
        with MySim(port=8081) as sim: ...

    `lock` guards the simulator's data: `handle()` always runs under it, and
    test-side accessors take it too. `limiter` is the simulated rate limit
    (`rate_per_second=None`: unlimited); subclasses choose the bucket key.
    """

    # Error code a `Fault` with a status but no `code` answers, per status.
    fault_codes: ClassVar[dict[int, str]] = {}

    def __init__(
        self, *, port: int = 0, rate_per_second: float | None = None, burst: float = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(_Handler, port=port)
        self.clock = clock
        self.limiter = RateLimiter(rate_per_second, burst, clock)
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._stopping = threading.Event()

    # -- to implement -------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Answer one API request (called with `lock` held)."""
        raise NotImplementedError

    def error(self, err: SimError) -> Response:
        """Render `err` in this API's error-body format."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """The data shown by `GET /_sim/state`."""
        return {}

    def control(self, request: Request, name: str) -> Response | None:
        """Extra `/_sim/<name>` endpoints; None means unknown."""
        return None

    def reset_faults_and_log(self) -> None:
        """What `POST /_sim/reset` does: no faults, empty log, full rate buckets."""
        with self.lock:
            self._faults.clear()
            self._log.clear()
            self.limiter.reset()

    # -- lifecycle (start/stop/port/url: LoopbackServer) -------------------
    def _on_start(self) -> None:
        self._stopping.clear()

    def _on_stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers

    # -- faults, log, stats -------------------------------------------------
    def inject(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order they were injected."""
        with self.lock:
            self._faults.append(fault)

    @property
    def pending_faults(self) -> list[Fault]:
        with self.lock:
            return list(self._faults)

    @property
    def requests(self) -> list[RequestRecord]:
        """Copies of the API request log, in arrival order."""
        with self.lock:
            return [dataclasses.replace(r) for r in self._log]

    def stats(self) -> dict[str, Any]:
        """Counts by status, 429s, and the peak number of requests in any 1 s window (see module doc)."""
        with self.lock:
            records = list(self._log)
        by_status: dict[str, int] = {}
        for r in records:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
        return {
            "requests": len(records),
            "by_status": by_status,
            "rate_limited": by_status.get("429", 0),
            "max_in_1s": _max_in_window([r.time for r in records], 1.0),
            "max_accepted_in_1s": _max_in_window([r.time for r in records if r.status != 429], 1.0),
        }

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until `predicate()` is true (checked after every request), or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{type(self).__name__}: condition not met within {timeout} s")
                self._changed.wait(left)

    # -- request pipeline (called from handler threads) -------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            return take_fault(self._faults, method, path)

    def _dispatch(self, request: Request) -> Response:
        """Run one request through faults, the subclass and the log."""
        if request.path.startswith("/_sim/"):
            return self._control(request)
        record = RequestRecord(self.clock(), request.method, request.path)
        with self.lock:
            self._log.append(record)
        try:
            response = self._faulted(request, self._take_fault(request.method, request.path))
        except _ResetConnection:
            self._finish(record, 0)
            raise
        self._finish(record, response.status)
        return response

    def _faulted(self, request: Request, fault: Fault | None) -> Response:
        if fault is not None and fault.when == "before":
            early = self._misbehave(fault)
            if early is not None:
                return fault.shape(early)
        response = self._apply(request)
        if fault is not None and fault.when == "after":
            late = self._misbehave(fault)
            return fault.shape(response if late is None else late)
        return response

    def _misbehave(self, fault: Fault) -> Response | None:
        """Stall, then reset the connection or answer the fault's error; None: answer normally."""
        if fault.stall > 0:
            self._stopping.wait(fault.stall)  # an Event, so stop() cuts the stall short
        if fault.reset:
            raise _ResetConnection
        return None if fault.status is None else self._fault_response(fault, fault.status)

    def _apply(self, request: Request) -> Response:
        with self.lock:
            try:
                return self.handle(request)
            except SimError as err:
                return self._render(err)
            except Exception as exc:  # noqa: BLE001 - a simulator bug: show it to the test, keep serving
                traceback.print_exc()
                return self._render(SimError(500, "internal_server_error", f"simulator bug: {exc!r}"))

    def _render(self, err: SimError) -> Response:
        response = self.error(err)
        response.headers.update(err.headers)
        return response

    def _fault_response(self, fault: Fault, status: int) -> Response:
        headers = dict(fault.headers)
        if fault.body is not None:
            return Response(status, fault.body, headers)
        code = fault.code or self.fault_codes.get(status, f"http_{status}")
        return self._render(SimError(status, code, fault.message, headers=headers))

    def _finish(self, record: RequestRecord, status: int) -> None:
        with self._changed:
            record.status = status
            self._changed.notify_all()

    def _control(self, request: Request) -> Response:
        name = request.path[len("/_sim/"):]
        route = (request.method, name)
        if route == ("GET", "state"):
            with self.lock:
                return Response(200, self.state())
        if route == ("GET", "stats"):
            return Response(200, self.stats())
        if route == ("POST", "reset"):
            self.reset_faults_and_log()
            return Response(200, {"ok": True})
        try:
            if route == ("POST", "faults"):
                data = request.json()
                for item in data if isinstance(data, list) else [data]:
                    self.inject(Fault.from_dict(item))
                return Response(200, {"ok": True, "pending": len(self.pending_faults)})
            with self.lock:
                extra = self.control(request, name)
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
            return Response(400, {"error": str(exc)})
        if extra is None:
            return Response(404, {"error": f"unknown control endpoint {request.method} {request.path}"})
        with self._changed:
            self._changed.notify_all()
        return extra


def take_fault(faults: list[Fault], method: str, path: str) -> Fault | None:
    """The first fault of `faults` matching the request, counted down (removed when used up)."""
    for fault in faults:
        if fault.matches(method, path):
            fault.count -= 1
            if fault.count == 0:
                faults.remove(fault)
            return fault
    return None


def _max_in_window(times: list[float], window: float) -> int:
    """Most timestamps inside any half-open interval of length `window`."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class _Handler(LoopbackHandler[SimServer]):
    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_READ_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_READ_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            body = None
        if body is None:
            self.close_connection = True
            self._write(Response(413, {"error": "request body unreadable or too large"}))
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.owner._dispatch(request)
        except _ResetConnection:
            self.reset_connection()
            return
        self._write(response)

    def _write(self, response: Response) -> None:
        payload = response.encode()
        try:
            self.send_response(response.status)
            headers = {"Content-Type": "application/json", **response.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.write_body(payload, drip=response.drip, cut=response.cut)
        except OSError:
            self.close_connection = True  # client went away (e.g. its timeout fired)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def run_until_signal(sim: SimServer, info: dict[str, Any]) -> int:
    """Start `sim`, print `info` (plus `url`) as one JSON line, serve until SIGTERM/SIGINT.

    Used by the `python -m standins.X` entry points; returns the exit code 0.
    """
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim.start()
    print(json.dumps({"url": sim.url, **info}), flush=True)
    done.wait()
    sim.stop()
    return 0


def cli_parser(description: str, rate: float, burst: int) -> argparse.ArgumentParser:
    """The options every simulator entry point shares: --port, --rate, --burst."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument("--rate", type=float, default=rate, help="requests per second allowed (0 = unlimited)")
    parser.add_argument("--burst", type=int, default=burst, help="token bucket size")
    return parser
