"""S3 without network: plans, routes, SigV4 signing and error mapping, the paused lane."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.credentials import Credentials

from client import wire
from sidecar.config import Config, S3Config
from sidecar.connectors.base import Dead, Send, Skip, unpaced
from sidecar.connectors.s3 import S3Connector, bucket_region, build
from sidecar.errors import CredentialsRefused, Permanent, RateLimited, Reject, Retryable
from sidecar.journal.spool import Spool
from sidecar.journal.store import Event

from ..support import journaled

pytestmark = pytest.mark.timeout(120)


class _Ctx:
    def __init__(self, refs: dict[str, str] | None = None) -> None:
        self.refs, self.now = refs or {}, 1000.0

    def ref(self, key: str) -> str | None:
        return self.refs.get(key)

    def has_target(self, target: str) -> bool:
        return False

    def dead_key(self, kind: str, key: str) -> str | None:
        return None


def _put(n: int, journal_dir: Path, body: bytes, *, key: str = "k", **fields: Any) -> Event:
    """An s3.put event as the journal holds it, its blob in the journal's spool."""
    payload = {"bucket": "bkt", "key": key, "content_type": "text/plain", **fields}
    spool = Spool(journal_dir)
    spool.create()
    return journaled(n, "s3", "s3.put", f"bkt/{key}", payload, blob_path=spool.put(body))


def _connector(handler: Any = None) -> S3Connector:
    transport = httpx.MockTransport(handler or (lambda request: httpx.Response(200)))
    return S3Connector(S3Config(endpoint_url="http://s3.test", region="eu-west-1"),
                       Credentials("AKIDEXAMPLE", "secret"), transport=transport)


def _send(conn: S3Connector, plan: Send) -> Any:
    async def go() -> Any:
        try:
            return await conn.send(plan, unpaced)
        finally:
            await conn.aclose()
    return asyncio.run(go())


def test_s3_plan_keeps_only_the_last_put_of_an_object(tmp_path: Path) -> None:
    conn = _connector()
    group = [_put(n, tmp_path, f"v{n}".encode()) for n in range(4)]
    plan = conn.plan(group, _Ctx())
    assert isinstance(plan, Skip) and plan.reason == "superseded"
    assert [e.id for e in plan.events] == [0, 1, 2]
    last = conn.plan(group[3:], _Ctx())
    assert isinstance(last, Send) and [e.id for e in last.events] == [3]
    # A put journaled under looser rules can never go out: dead-lettered, not a crash.
    dead = conn.plan([_put(5, tmp_path, b"x", key="a/./b")], _Ctx())
    assert isinstance(dead, Dead) and dead.reason == "bad_payload"


def test_s3_plan_skips_a_put_identical_to_the_last_delivered(tmp_path: Path) -> None:
    conn = _connector()
    event = _put(1, tmp_path, b"body", metadata={"desk": "fx"})
    plan = conn.plan([event], _Ctx())
    assert isinstance(plan, Send)
    refs = _send(conn, plan).refs
    assert refs["bkt/k"] == hashlib.sha256(b"body").hexdigest()
    again = _put(2, tmp_path, b"body", metadata={"desk": "fx"})
    skip = conn.plan([again], _Ctx(refs))
    assert isinstance(skip, Skip) and skip.reason == "identical"
    # Same body with other headers, or another body: a real change.
    assert isinstance(conn.plan([_put(3, tmp_path, b"body", metadata={"desk": "eq"})], _Ctx(refs)), Send)
    assert isinstance(conn.plan([_put(4, tmp_path, b"body", content_type="text/csv")], _Ctx(refs)), Send)
    assert isinstance(conn.plan([_put(5, tmp_path, b"other", metadata={"desk": "fx"})], _Ctx(refs)), Send)


@pytest.mark.parametrize("payload, blobs, why", [
    ({"bucket": "bkt", "key": "k", "content_type": "text/plain"}, [], "exactly one blob"),
    ({"bucket": "bkt", "key": "k", "content_type": "text/plain"}, [b"a", b"b"], "exactly one blob"),
    ({"bucket": "bkt", "key": "k"}, [b"a"], "content_type"),
    ({"bucket": "Bad_Bucket", "key": "k", "content_type": "text/plain"}, [b"a"], "bucket"),
    ({"bucket": "bkt", "key": "", "content_type": "text/plain"}, [b"a"], "key"),
    ({"bucket": "bkt", "key": "a/../b", "content_type": "text/plain"}, [b"a"], "'..'"),
    ({"bucket": "bkt", "key": "k", "content_type": "t", "metadata": {"n": 1}}, [b"a"], "metadata"),
    ({"bucket": "bkt", "key": "k", "content_type": "t", "metadata": {"a b": "x"}}, [b"a"], "metadata"),
    ({"bucket": "bkt", "key": "k", "content_type": "t", "contentType": "t"}, [b"a"], "contentType"),
    (["bkt", "k"], [b"a"], "JSON object"),
])
def test_s3_route_rejects_puts_s3_could_never_take(payload: Any, blobs: list[bytes], why: str) -> None:
    env = wire.decode(wire.encode("c", 1, "s3.put", None, None, 0, payload))
    with pytest.raises(Reject, match=re.escape(why)) as err:
        _connector().route(env, blobs)
    assert err.value.reason == "bad_payload"


def test_s3_send_signs_the_put_and_maps_errors_once(tmp_path: Path) -> None:
    body = os.urandom(1000)
    seen: list[httpx.Request] = []
    answers = iter([
        httpx.Response(200),
        httpx.Response(503, text="<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
        httpx.Response(500, text="<Error><Code>InternalError</Code></Error>"),
        httpx.Response(403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>"),
        httpx.Response(404, text="<Error><Code>NoSuchBucket</Code></Error>"),
        httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>"),
    ])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    plan = _connector().plan([_put(1, tmp_path, body, key="a b/ü", metadata={"desk": "fx"})], _Ctx())
    assert isinstance(plan, Send)
    outcomes: list[Any] = []
    for _ in range(6):
        try:
            outcomes.append(_send(_connector(handler), plan))
        except (Permanent, Retryable, CredentialsRefused) as exc:
            outcomes.append(exc)
    sent = seen[0]
    assert sent.method == "PUT" and sent.url.raw_path == b"/bkt/a%20b/%C3%BC" and sent.content == body
    assert sent.headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert sent.headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert sent.headers["content-type"] == "text/plain" and sent.headers["x-amz-meta-desk"] == "fx"
    assert sent.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/s3/aws4_request" in sent.headers["authorization"]
    slow, server, refused, missing, denied = outcomes[1:]
    assert isinstance(slow, RateLimited) and slow.detail == "SlowDown"
    assert isinstance(server, Retryable) and not isinstance(server, RateLimited) and server.ambiguous
    # The key pair refused: the lane pauses. Access to one object refused: that put's dead letter.
    assert isinstance(refused, CredentialsRefused) and refused.pause_reason == "credentials refused by S3"
    assert refused.status == 403 and refused.detail == "SignatureDoesNotMatch"
    assert isinstance(missing, Permanent) and missing.detail == "NoSuchBucket"
    assert isinstance(denied, Permanent) and (denied.reason, denied.detail) == ("http_403", "AccessDenied")


def test_s3_lane_pauses_without_credentials_naming_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    [spec] = build(Config())
    asyncio.run(spec.connector.aclose())
    assert spec.paused is not None and "AWS_ACCESS_KEY_ID" in spec.paused and "instance role" in spec.paused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    [spec] = build(Config())
    asyncio.run(spec.connector.aclose())
    assert spec.paused is None and spec.concurrency == 4 and spec.rule.rate == 100.0


REDIRECT_BODY = ("<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be "
                 "addressed using the specified endpoint.</Message><Bucket>bkt</Bucket><Endpoint>{}</Endpoint></Error>")


@pytest.mark.parametrize("status, headers, body, region", [
    (301, {"x-amz-bucket-region": "eu-west-1"}, REDIRECT_BODY.format("bkt.s3.amazonaws.com"), "eu-west-1"),
    (301, {}, REDIRECT_BODY.format("bkt.s3.ap-northeast-2.amazonaws.com"), "ap-northeast-2"),
    (301, {}, REDIRECT_BODY.format("bkt.s3-ap-southeast-2.amazonaws.com"), "ap-southeast-2"),
    (301, {}, REDIRECT_BODY.format("bkt.s3.amazonaws.com"), None),  # no region anywhere: stays a refusal
    (400, {}, "<Error><Code>AuthorizationHeaderMalformed</Code><Region>eu-central-1</Region></Error>", "eu-central-1"),
    (400, {"x-amz-bucket-region": "eu-west-1"}, "<Error><Code>BadDigest</Code></Error>", None),
    (301, {"x-amz-bucket-region": "evil.example.com/x"}, "", None),  # never into a host name or a signature
    (200, {"x-amz-bucket-region": "eu-west-1"}, "", None),
])
def test_bucket_region_is_read_where_botocore_reads_it(status: int, headers: dict[str, str], body: str,
                                                       region: str | None) -> None:
    assert bucket_region(httpx.Response(status, headers=headers, text=body)) == region
