"""Amazon S3: put objects, one signed ``PUT /{bucket}/{key}`` per event.

    client.emit("s3.put", {"bucket": "reports", "key": "2024/06/pnl.csv", "content_type": "text/csv",
                           "metadata": {"desk": "fx"}}, blob=data)

The body travels as the event's single blob, spooled at ingest to a file
named by its SHA-256, and is streamed from that file (`CHUNK` at a time,
never held whole in memory), signed with that SHA-256 as
``X-Amz-Content-SHA256`` (botocore's signer is told it, not given the body). Puts to one object are delivered in emit order, and
only the last of those waiting together goes out: S3 keeps the last write
anyway, so the others are skipped as ``superseded``. A put equal (body,
content type and metadata) to the last one delivered for its object is
skipped as ``identical``.

Requests are signed by botocore's SigV4 signer with credentials from
botocore's standard chain (environment, shared config and credentials
files, container or instance role); with none, the lane is paused.

A bucket in another region than `[s3] region` answers 301 PermanentRedirect
(or 400 AuthorizationHeaderMalformed when signed for the wrong region). Its
region is read where botocore's S3RegionRedirector reads it (the
``x-amz-bucket-region`` header, else the XML body's ``<Region>``, else a
regional ``<Endpoint>``); the put is signed for that region and sent there
once more (AWS's endpoint for it, or the same `endpoint_url`), and the
bucket's region is remembered for the life of the process (logged once).

Errors: 503 SlowDown slows the lane down (RateLimited); other 5xx and
transport errors are retried (a PUT is idempotent, so resending after an
unknown outcome is harmless); a 403 that refuses the credential itself
(InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken, InvalidToken)
pauses the lane until the chain is read again (CredentialsRefused); other
400/403/404 (AccessDenied on one object, NoSuchBucket, BadDigest...)
dead-letter with S3's XML body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import botocore.session
import httpx
import orjson
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, InvalidRegionError
from botocore.utils import validate_region_name

from client.wire import Envelope
from sidecar.config import Config, S3Config
from sidecar.connectors import LaneSpec
from sidecar.connectors.base import ConnectorBase, Dead, Delivered, Pace, Plan, PlanContext, Send, Skip
from sidecar.connectors.http_calls import raise_for_status, refuse_credentials, request
from sidecar.delivery.limiter import Rule
from sidecar.errors import Permanent, Reject, Retryable
from sidecar.journal.spool import CHUNK, Spool
from sidecar.journal.store import Event

log = logging.getLogger("sidecar.s3")

PUT = "s3.put"
SUPERSEDED = "superseded"
IDENTICAL = "identical"
# Refs kept per object: the body's SHA-256 under "bucket/key", and a digest of
# the headers under this prefix (bucket names cannot hold ":", so no clash).
HEADERS_REF = "headers:"

FIELDS = frozenset({"bucket", "key", "content_type", "metadata"})
MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata, names and values together
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_REGION = re.compile(r"<Region>([^<]*)</Region>")
# A regional endpoint in a PermanentRedirect body: bucket.s3.eu-west-1.amazonaws.com, s3-ap-southeast-2...
_ENDPOINT_REGION = re.compile(r"<Endpoint>(?:[^<]*\.)?s3[.-](?:dualstack\.)?([a-z0-9-]+)\.amazonaws\.com</Endpoint>")
# Answers that name the bucket's region (botocore.utils.S3RegionRedirectorv2.redirect_from_error).
WRONG_REGION = {301: "PermanentRedirect", 400: "AuthorizationHeaderMalformed"}
# 403 codes about the key pair or session token, whatever the object: every put would fail alike.
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"})

NO_CREDENTIALS = (
    "no AWS credentials: botocore's chain found none (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
    "environment, the shared files ~/.aws/credentials and ~/.aws/config or AWS_SHARED_CREDENTIALS_FILE, "
    "AWS_CONFIG_FILE and AWS_PROFILE, a container or EC2 instance role); provide one, then restart"
)


@dataclass(frozen=True)
class ObjectPut:
    """One validated ``s3.put`` payload."""

    bucket: str
    key: str
    content_type: str
    metadata: dict[str, str]

    @property
    def target(self) -> str:
        return f"{self.bucket}/{self.key}"

    def headers_digest(self) -> str:
        """What identifies the headers of a put, beside its body's SHA-256."""
        doc = orjson.dumps([self.content_type, sorted(self.metadata.items())])
        return hashlib.sha256(doc).hexdigest()


def parse_put(body: Any) -> ObjectPut:
    """Validate an ``s3.put`` payload; raise Reject("bad_payload", why) if S3 could never take it."""
    if not isinstance(body, dict):
        raise Reject("bad_payload", "s3.put payload must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise Reject("bad_payload", f"unknown field(s) {', '.join(unknown)}; s3.put takes {', '.join(sorted(FIELDS))}")
    bucket, key, content_type = body.get("bucket"), body.get("key"), body.get("content_type")
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise Reject("bad_payload", f"bucket must be an S3 bucket name (3-63 of a-z 0-9 . -), got {bucket!r}")
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
        raise Reject("bad_payload", f"key must be a non-empty string of at most {MAX_KEY_BYTES} UTF-8 bytes")
    if any(part in (".", "..") for part in key.split("/")):
        # HTTP clients fold "." and ".." out of URL paths, so the object would land elsewhere.
        raise Reject("bad_payload", f"key {key!r} has a '.' or '..' path segment")
    if not isinstance(content_type, str) or not content_type or not _PRINTABLE_ASCII.fullmatch(content_type):
        raise Reject("bad_payload", "content_type must be a non-empty printable ASCII string, e.g. \"text/csv\"")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and _HEADER_NAME.fullmatch(k) and isinstance(v, str) and _PRINTABLE_ASCII.fullmatch(v)
            for k, v in metadata.items()):
        raise Reject("bad_payload", "metadata must map header-safe names to printable ASCII strings")
    if sum(len(k) + len(v) for k, v in metadata.items()) > MAX_METADATA_BYTES:
        raise Reject("bad_payload", f"metadata over S3's {MAX_METADATA_BYTES} bytes")
    return ObjectPut(bucket, key, content_type, metadata)


def xml_code(response: httpx.Response) -> str:
    """The <Code> of an S3 XML error body, or ""."""
    found = _XML_CODE.search(response.text)
    return found.group(1) if found else ""


def bucket_region(response: httpx.Response) -> str | None:
    """The region S3 says the bucket is in, on an answer refusing the region used; None otherwise.

        bucket_region(httpx.Response(301, headers={"x-amz-bucket-region": "eu-west-1"}))  # "eu-west-1"
    """
    code = xml_code(response)
    if response.status_code not in WRONG_REGION or code not in ("", WRONG_REGION[response.status_code]):
        return None
    found = _XML_REGION.search(response.text) or _ENDPOINT_REGION.search(response.text)
    region = response.headers.get("x-amz-bucket-region") or (found.group(1) if found else None)
    try:
        validate_region_name(region)  # it goes into a host name and the signature's scope
    except InvalidRegionError:
        return None
    return region


def _check(response: httpx.Response) -> None:
    if response.status_code == 403 and xml_code(response) in CREDENTIAL_CODES:
        refuse_credentials("S3", response, xml_code(response))
    # S3 says "slow down" with 503 SlowDown (no Retry-After): back the lane off.
    raise_for_status(response, rate_limited=lambda r: r.status_code in (429, 503), code_of=xml_code)


@dataclass(frozen=True)
class PutObject:
    """One PUT: the validated payload, the body's spool file and its SHA-256 from ingest."""

    put: ObjectPut
    path: str
    sha256: str


class S3Connector(ConnectorBase):
    lane = "s3"
    kinds = frozenset({PUT})

    def __init__(self, cfg: S3Config, credentials: Any, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`credentials`: botocore Credentials (refreshable or not), None if the chain found none."""
        self.region = cfg.region
        self.endpoint_url = cfg.endpoint_url.rstrip("/")
        self.credentials = credentials
        self.http = httpx.AsyncClient(timeout=cfg.timeout, transport=transport)
        self.bucket_regions: dict[str, str] = {}  # buckets S3 said live outside `region`

    def endpoint(self, region: str) -> str:
        """The configured endpoint, else AWS's for `region`."""
        return self.endpoint_url or f"https://s3.{region}.amazonaws.com"

    def refresh_credentials(self) -> bool:
        """Run botocore's chain again (a rewritten shared credentials file); True if the keys changed.

        Environment variables cannot change in a running process: use a file for keys that rotate.
        """
        found, _ = find_credentials()
        if found is None:
            return False
        old = self.credentials.get_frozen_credentials() if self.credentials is not None else None
        self.credentials = found
        return found.get_frozen_credentials() != old

    # -- ingest ---------------------------------------------------------------

    def route(self, env: Envelope, blobs: list[bytes]) -> str:
        put = parse_put(env.payload)
        if len(blobs) != 1:
            raise Reject("bad_payload", f"s3.put takes the object's body as exactly one blob, got {len(blobs)}")
        return put.target

    # -- planning -------------------------------------------------------------

    def plan(self, group: list[Event], ctx: PlanContext) -> Plan[PutObject]:
        if len(group) > 1:
            return Skip(group[:-1], SUPERSEDED)  # the lane plans again and sends the last
        event = group[0]
        try:
            put = parse_put(event.payload)
        except Reject as exc:  # journaled by a sidecar with looser rules: it can never go out now
            return Dead([event], exc.reason, exc.detail)
        sha256 = event.blob_sha256(0)
        if ctx.ref(put.target) == sha256 and ctx.ref(HEADERS_REF + put.target) == put.headers_digest():
            return Skip([event], IDENTICAL)
        return Send([event], PutObject(put, event.blob_paths[0], sha256))

    # -- calls ----------------------------------------------------------------

    async def send(self, plan: Send[PutObject], pace: Pace) -> Delivered:
        put = plan.request.put
        region = self.bucket_regions.get(put.bucket, self.region)
        response = await self._put(plan.request, region)
        moved = bucket_region(response)
        if moved is not None and moved != region:
            if self.bucket_regions.get(put.bucket) != moved:
                log.warning("S3 bucket %s is in %s, not %s: signing its puts for %s from now on "
                            "(set [s3] region to avoid the first redirect)", put.bucket, moved, region, moved)
            self.bucket_regions[put.bucket] = moved
            await pace()  # once, within the lane's rate
            response = await self._put(plan.request, moved)
        _check(response)
        return Delivered(refs={put.target: plan.request.sha256, HEADERS_REF + put.target: put.headers_digest()})

    async def _put(self, put: PutObject, region: str) -> httpx.Response:
        # Hashing the spool file and a credential refresh may both block: off the loop.
        url, headers = await asyncio.to_thread(self._signed, put.put, put.path, put.sha256, region)
        return await request(self.http, "PUT", url, headers=headers, content=_stream(put.path))

    def _signed(self, put: ObjectPut, path: str, sha256: str, region: str) -> tuple[str, dict[str, str]]:
        """The URL and signed headers of a put whose body streams from `path`
        (never held whole in memory): signed with the SHA-256 known since
        ingest, after checking, in chunks, that the file still has it."""
        if self.credentials is None:
            raise Retryable("no_credentials", NO_CREDENTIALS)
        try:
            credentials = self.credentials.get_frozen_credentials()  # refreshes a role's token when due
        except BotoCoreError as exc:
            raise Retryable("credentials", str(exc)) from None
        size, md5, actual = _digests(path)
        if actual != sha256:
            raise Permanent("blob_corrupt", f"spool file {path} no longer matches the SHA-256 it was received with")
        url = f"{self.endpoint(region)}/{put.bucket}/{quote(put.key, safe='/')}"
        headers = {
            "Content-Type": put.content_type,
            "Content-Length": str(size),  # explicit: httpx would send a stream chunked, which S3 refuses
            "Content-MD5": md5,
            "X-Amz-Content-SHA256": sha256,
            **{f"x-amz-meta-{name}": value for name, value in put.metadata.items()},
        }
        aws = AWSRequest(method="PUT", url=url, data=b"", headers=headers)
        _KnownPayloadAuth(credentials, "s3", region, sha256).add_auth(aws)
        return url, dict(aws.headers.items())


class _KnownPayloadAuth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, told the body's SHA-256 rather than given
    the body: `S3SigV4Auth` sets ``X-Amz-Content-SHA256`` from `payload()`,
    which would hash the (here empty) request body."""

    def __init__(self, credentials: Any, service: str, region: str, sha256: str) -> None:
        super().__init__(credentials, service, region)
        self._sha256 = sha256

    def payload(self, request: AWSRequest) -> str:
        return self._sha256


def _digests(path: str) -> tuple[int, str, str]:
    """(size, base64 MD5, hex SHA-256) of a spool file, read in chunks."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    try:
        with Spool.open(path) as f:
            while chunk := f.read(CHUNK):
                md5.update(chunk)
                sha.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise Permanent("blob_missing", f"spool file {path} is gone") from None
    return size, base64.b64encode(md5.digest()).decode(), sha.hexdigest()


async def _stream(path: str) -> AsyncIterator[bytes]:
    """The body of a put, read from its spool file a chunk at a time (off the event loop)."""
    f = await asyncio.to_thread(Spool.open, path)
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


def find_credentials() -> tuple[Any, str | None]:
    """botocore's credential chain: (credentials, None), or (None, why the lane must pause)."""
    try:
        found = botocore.session.get_session().get_credentials()
    except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
        return None, f"AWS credentials could not be loaded: {exc}; fix it, then restart"
    return (found, None) if found is not None else (None, NO_CREDENTIALS)


def build(cfg: Config) -> list[LaneSpec]:
    credentials, paused = find_credentials()
    connector = S3Connector(cfg.s3, credentials)
    return [LaneSpec(connector, Rule(rate=cfg.s3.rate_per_second, burst=cfg.s3.burst),
                     concurrency=cfg.s3.concurrency, paused=paused,
                     # S3 throttles per bucket prefix, not per credential: share by endpoint.
                     quota_id=f"{cfg.s3.endpoint_url or 'aws'}|{cfg.s3.region}")]
