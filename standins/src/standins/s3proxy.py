"""A fault-injecting HTTP proxy in front of an S3-compatible server (moto never answers 503 SlowDown).

Usage::

    with S3FaultProxy(moto_url) as proxy:       # start() / stop()
        proxy.url                               # "http://127.0.0.1:PORT": point the S3 client here
        proxy.slow_down(3)                      # the next 3 PUTs get 503 SlowDown, not forwarded
        proxy.inject(Fault(when="after", drip=0.2, method="PUT"))   # base.py's faults, S3-shaped
        proxy.forwarded, proxy.refused          # requests passed upstream / answered by the proxy
        proxy.count("PUT", path="/bucket/key")  # forwarded PUTs of one object
        proxy.records                           # [ProxyRecord(method, path, status, outcome)]
        proxy.bucket_in("eu-bucket", "eu-west-1")   # requests signed for another region: 301 PermanentRedirect

Every other request goes upstream unchanged: method, raw path and query,
headers (Host and Authorization included, so a SigV4 signature made for the
proxy's address verifies upstream) and body; the answer comes back the same
way. Only hop-by-hop headers (Connection, Keep-Alive, ...) stay on their own
connection. A request whose upstream cannot be reached is answered 502.

moto in server mode keeps every bucket in one place and takes a request
signed for any region (checked with moto 5.2), so the proxy answers for S3's
regions: a request to a bucket placed with `bucket_in` whose SigV4 scope names
another region gets 301 `PermanentRedirect` (S3's error codes: "must be
addressed using the specified endpoint"), with the `x-amz-bucket-region`
header (left out with `header=False`) and `<Bucket>`/`<Endpoint>` in the
body, as S3 answers; it is not forwarded.

Not a `SimServer`: those parse the query string, run handlers one at a time
under a lock and answer JSON, while a proxy passes raw requests through
concurrently. Both are a `LoopbackServer` (start/stop/port/url, keep-alive
connections cut on stop).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from standins.base import Fault, LoopbackHandler, LoopbackServer, Response, take_fault

# Per-connection headers (RFC 9110 section 7.6.1): each hop sets its own.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade"})
UPSTREAM_TIMEOUT = 60.0
_SCOPE_REGION = re.compile(r"Credential=[^/,]+/\d{8}/([^/,]+)/s3/aws4_request")

Outcome = Literal["forwarded", "refused", "failed"]


@dataclass(frozen=True)
class ProxyRecord:
    """One request: `path` as received (query included), the `status` answered,
    and whether it was `forwarded`, `refused` by an injected fault, or `failed` upstream."""

    method: str
    path: str
    status: int
    outcome: Outcome


def s3_error(code: str, message: str, resource: str, *, extra: dict[str, str] | None = None) -> bytes:
    """An S3 XML error body (`extra`: more elements, e.g. a redirect's Bucket and Endpoint)::

        s3_error("SlowDown", "Please reduce your request rate.", "/bucket/key")
    """
    request_id = uuid.uuid4().hex[:16].upper()
    more = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in (extra or {}).items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message>'
            f"<Resource>{escape(resource)}</Resource>{more}<RequestId>{request_id}</RequestId></Error>").encode()


class S3FaultProxy(LoopbackServer):
    def __init__(self, upstream_url: str, port: int = 0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream_url!r}")
        super().__init__(_Handler, port=port)
        self.upstream: tuple[str, int] = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._slow_downs = 0
        self._records: list[ProxyRecord] = []
        self._faults: list[Fault] = []
        self._regions: dict[str, tuple[str, bool]] = {}  # bucket -> (its region, send x-amz-bucket-region)

    # -- faults and counts ----------------------------------------------------

    def slow_down(self, count: int) -> None:
        """Answer the next `count` PUTs with 503 SlowDown instead of forwarding them."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._slow_downs += count

    def inject(self, fault: Fault) -> None:
        """Misbehave like a simulator's `Fault`: `when="before"` answers without
        forwarding (an S3 XML error for a status), `"after"` forwards first."""
        with self._lock:
            self._faults.append(fault)

    def bucket_in(self, bucket: str, region: str, *, header: bool = True) -> None:
        """Place `bucket` in `region`: a request signed for another region is answered 301 PermanentRedirect."""
        with self._lock:
            self._regions[bucket] = (region, header)

    def _wrong_region(self, path: str, authorization: str) -> tuple[str, str, bool] | None:
        """(bucket, its region, header?) if the request is signed for another region than its bucket's."""
        bucket = urlsplit(path).path.lstrip("/").split("/", 1)[0]
        scope = _SCOPE_REGION.search(authorization)
        with self._lock:
            placed = self._regions.get(bucket)
        if placed is None or scope is None or scope.group(1) == placed[0]:
            return None
        return bucket, *placed

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            return take_fault(self._faults, method, urlsplit(path).path)

    @property
    def records(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._records)

    def count(self, method: str | None = None, *, path: str | None = None,
              outcome: Outcome = "forwarded") -> int:
        """Requests with this outcome, of one method and path if given."""
        return sum(1 for r in self.records if r.outcome == outcome
                   and (method is None or r.method == method) and (path is None or r.path == path))

    @property
    def forwarded(self) -> int:
        return self.count()

    @property
    def refused(self) -> int:
        return self.count(outcome="refused")

    def _take_slow_down(self) -> bool:
        with self._lock:
            if self._slow_downs <= 0:
                return False
            self._slow_downs -= 1
            return True

    def _record(self, record: ProxyRecord) -> None:
        with self._lock:
            self._records.append(record)


class _Handler(LoopbackHandler[S3FaultProxy]):
    def _serve(self) -> None:
        proxy = self.server.owner
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # S3 itself refuses a body without Content-Length (411 MissingContentLength).
            self.close_connection = True
            self._refuse(411, "MissingContentLength", "You must provide the Content-Length HTTP header.", "failed")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        moved = proxy._wrong_region(self.path, self.headers.get("Authorization", ""))
        if moved is not None:
            self._redirect(*moved)
            return
        if self.command == "PUT" and proxy._take_slow_down():
            self._refuse(503, "SlowDown", "Please reduce your request rate.", "refused")
            return
        fault = proxy._take_fault(self.command, self.path)
        if fault is not None and fault.when == "before" and self._misbehave(fault, None):
            return
        try:
            status, reason, headers, payload = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            self._refuse(502, "BadGateway", f"upstream {proxy.upstream} failed: {exc!r}", "failed")
            return
        proxy._record(ProxyRecord(self.command, self.path, status, "forwarded"))
        if fault is not None and self._misbehave(fault, (status, headers, payload)):
            return
        self._answer(status, reason, headers, payload)

    def _misbehave(self, fault: Fault, upstream: tuple[int, list[tuple[str, str]], bytes] | None) -> bool:
        """Stall, reset or answer as `fault` says; False: answer normally (nothing was sent)."""
        time.sleep(fault.stall)
        if fault.reset:
            self.reset_connection()
            return True
        if fault.status is not None:
            answer = Response(fault.status, headers={"Content-Type": "application/xml", **fault.headers},
                              body=s3_error(fault.code or f"Http{fault.status}", fault.message, self.path))
        elif upstream is not None and fault.shapes_body:
            status, headers, payload = upstream
            answer = Response(status, headers=dict(headers), body=payload)
        else:
            return False
        shaped = fault.shape(answer)
        headers = [(k, v) for k, v in shaped.headers.items() if k.lower() != "content-length"]
        if upstream is None:
            self.server.owner._record(ProxyRecord(self.command, self.path, shaped.status, "refused"))
        try:
            self.send_response_only(shaped.status)
            for name, value in headers:
                self.send_header(name, value)
            self.write_body(shaped.encode(), drip=shaped.drip, cut=shaped.cut)
        except OSError:
            self.close_connection = True
        return True

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        # A fresh upstream connection per request: a reused one that the server
        # closed while idle would need a resend, and a proxy must never send twice.
        conn = http.client.HTTPConnection(*self.server.owner.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.endheaders(body or None)
            response = conn.getresponse()
            payload = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, response.reason, headers, payload
        finally:
            conn.close()

    def _redirect(self, bucket: str, region: str, header: bool) -> None:
        endpoint = f"{bucket}.s3.{region}.amazonaws.com"
        body = s3_error("PermanentRedirect", "The bucket you are attempting to access must be addressed using the "
                        "specified endpoint. Please send all future requests to this endpoint.",
                        self.path.split("?")[0], extra={"Bucket": bucket, "Endpoint": endpoint})
        headers = [("Content-Type", "application/xml")] + ([("x-amz-bucket-region", region)] if header else [])
        self._answer(301, None, headers, body)
        self.server.owner._record(ProxyRecord(self.command, self.path, 301, "refused"))

    def _refuse(self, status: int, code: str, message: str, outcome: Outcome) -> None:
        body = s3_error(code, message, self.path.split("?")[0])
        self._answer(status, None, [("Content-Type", "application/xml")], body)
        self.server.owner._record(ProxyRecord(self.command, self.path, status, outcome))

    def _answer(self, status: int, reason: str | None, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            self.send_response_only(status, reason)  # no Server/Date of our own: upstream's pass through
            for name, value in headers:
                self.send_header(name, value)
            no_body = self.command == "HEAD" or status in (204, 304)
            if not no_body and not any(name.lower() == "content-length" for name, _ in headers):
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not no_body:
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client went away

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve
