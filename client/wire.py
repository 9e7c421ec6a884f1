"""The wire contract between `client` and `sidecar`: kinds, envelope, endpoint.

One event is one ZeroMQ message. Its first frame is a JSON array::

    [1, client_id, seq, kind, key, ref, emitted_ns, payload]

and any further frames carry binary blobs (an S3 body, images to upload).
A positional array costs less to encode than an object, and the sidecar
stores the frame as received, so the hot path serialises exactly once.

`seq` counts from 1 per client; control messages (kinds starting with
``_``) carry ``seq = 0`` and never count towards gap detection.

>>> frame = encode("c1", 1, "webhook.post", None, None, 0, {"text": "hi"})
>>> decode(frame).kind
'webhook.post'
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, NamedTuple

import orjson

VERSION = 1

# Every kind the sidecar can deliver. The client refuses others at once, so
# a typo shows up in the trading process rather than in the sidecar's rejects.
KINDS: frozenset[str] = frozenset(
    {
        "notion.page.create",
        "notion.page.update",
        "notion.blocks.append",
        "s3.put",
        "naver.product.update",
        "naver.images.upload",
        "webhook.post",
    }
)

# Control kinds: the client's own counters, sent now and then and at close.
STATS = "_client.stats"
BYE = "_client.bye"
CONTROL_KINDS: frozenset[str] = frozenset({STATS, BYE})

# Limits both sides hold to: the client refuses (and counts) what the sidecar
# would reject, so a mistake shows in the trading process, not in rejects.
MAX_EVENT_BYTES = 1024 * 1024        # the JSON frame
MAX_BLOB_BYTES = 48 * 1024 * 1024    # all blobs of one event together; fits half the default ring
MAX_BLOBS = 16                       # frames after the first; Naver takes 10 images a call

SYSTEMD_RUNTIME_DIR = "/run/trading-sidecar"
MAX_INT = 2**63 - 1  # SQLite's INTEGER; larger numbers in a frame are refused, not stored


def default_endpoint() -> str:
    """Where client and sidecar meet when nothing is configured.

    ``SIDECAR_ENDPOINT`` wins; else the systemd unit's runtime directory if
    it exists; else a per-user socket in the temp directory.
    """
    env = os.environ.get("SIDECAR_ENDPOINT")
    if env:
        return env
    if os.path.isdir(SYSTEMD_RUNTIME_DIR):
        return f"ipc://{SYSTEMD_RUNTIME_DIR}/ingest.sock"
    return f"ipc://{tempfile.gettempdir()}/trading-sidecar-{os.getuid()}.sock"


def encode(
    client_id: str,
    seq: int,
    kind: str,
    key: str | None,
    ref: str | None,
    emitted_ns: int,
    payload: Any,
) -> bytes:
    """Serialise one event's first frame (raises TypeError if not JSON-able)."""
    return orjson.dumps([VERSION, client_id, seq, kind, key, ref, emitted_ns, payload])


class WireError(ValueError):
    """A frame that is not a valid envelope; `reason` names why, for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Envelope(NamedTuple):
    """One decoded event. A NamedTuple: ingest builds one per event, and a
    tuple is several times cheaper to make than a frozen dataclass."""

    client_id: str
    seq: int
    kind: str
    key: str | None
    ref: str | None
    emitted_ns: int
    payload: Any


def decode(frame: bytes) -> Envelope:
    """Parse and check one first frame; raise WireError with a counter reason."""
    try:
        doc = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise WireError("bad_json", str(exc)) from None
    # `type(x) is T` rather than isinstance: exact types (bool is not an int
    # here) and cheaper, since ingest runs this for every event.
    if type(doc) is not list or len(doc) != 8:
        raise WireError("bad_envelope", "expected a JSON array of 8 items")
    version, client_id, seq, kind, key, ref, emitted_ns, payload = doc
    if version != VERSION:
        raise WireError("bad_version", f"envelope version {version!r}, expected {VERSION}")
    if type(client_id) is not str or not client_id:
        raise WireError("bad_envelope", "client_id must be a non-empty string")
    if type(seq) is not int or not 0 <= seq <= MAX_INT:
        raise WireError("bad_envelope", "seq must be an integer from 0 to 2**63-1")
    if type(kind) is not str:
        raise WireError("bad_envelope", "kind must be a string")
    if key is not None and type(key) is not str:
        raise WireError("bad_envelope", "key must be a string or null")
    if ref is not None and type(ref) is not str:
        raise WireError("bad_envelope", "ref must be a string or null")
    if type(emitted_ns) is not int or not 0 <= emitted_ns <= MAX_INT:
        raise WireError("bad_envelope", "emitted_ns must be an integer from 0 to 2**63-1")
    return Envelope(client_id, seq, kind, key, ref, emitted_ns, payload)
