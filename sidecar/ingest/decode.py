"""Ring records back into the one JSON envelope the journal keeps, and the
messages ingest takes from a ring.

    frame = binary_frame(body, client_id_json(ring.client_id))   # a binary v1 body
    wire.decode(frame)   # as for a format-0 record: ingest checks it the same way

    ctx = ring_context(ring.client_id)          # once a ring
    frame, env = ring_event(body, ctx)          # the same frame, and wire.decode(frame)'s Envelope or None

A producer running the compiled emit writes binary v1 bodies (fixed fields,
then the payload's JSON: `client.ring`'s docstring); one running the
previous client, or the pure-Python path, writes the JSON envelope itself.
The reader turns the first into the second, with the ring's own client id
(the ring is the identity), so ingest's checks, the journal's `frame`
column, delivery and the rejects see one format whatever each producer ran:
a sidecar fed by old and new producers at once needs nothing else.

The conversion is C (`client._fastemit.binary_frame`) when the extension is
built, else `binary_frame_py`; both return the same bytes (tests/ingest/
test_decode.py holds them to it). A body that breaks the layout becomes an
empty frame, which ingest rejects as ``bad_json`` (counted, sampled): a
producer's bad record is that event's reject, never its ring's quarantine.

`ring_event` does the same and, on the way, decodes the envelope it made
(issue 20: ingest parsed every envelope it had just built). It takes the
fields from the body, so only the payload is parsed (`orjson.loads`), and
returns the frame with the `Envelope` that `wire.decode(frame)` returns.
The reader leaves a binary body as it is, in a `RingMessage` that carries
its ring's context, and ingest calls `ring_event` as it takes each event:
an envelope lives for one event, not a whole batch (thousands of parsed
payloads alive at once kept the garbage collector busy). Whenever `wire.decode` could refuse the frame or might read it
otherwise, `env` is None and ingest runs `wire.decode` on the frame as
before, so every reject keeps its reason and detail: a body that breaks the
layout (frame b""), a key or ref that is not UTF-8, seq or emitted_ns over
2**63-1, a payload orjson refuses, and one of FAST_PAYLOAD_MAX bytes or more
(only from 2,048 bytes can a payload nest deep enough, 1,024 levels, that
orjson takes it alone and refuses it inside the envelope, one level deeper).
C (`client._fastemit.ring_event`) when built, else `ring_event_py`; both
return the same (tests/ingest/test_decode.py, and bench/fuzz_decode.py
over millions of random and mutated bodies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from client.compiled import fastemit
from client.ring import BINARY_KINDS, BINARY_V1, NO_STRING
from client.wire import MAX_INT, Envelope

FAST_PAYLOAD_MAX = 2048  # a payload this long or longer is parsed within its envelope (module docstring)

# Each kind as its JSON string, by code.
KINDS_JSON: tuple[bytes, ...] = tuple(orjson.dumps(kind) for kind in BINARY_KINDS)


RingContext = tuple[bytes, str, tuple[bytes, ...], tuple[str, ...], type, Callable[[Any], Any]]


class RingMessage(list[bytes]):
    """A message read from a ring: its frames, and the client id of the ring
    (its header's, checked against its file name), which its frame must claim.
    With `ctx` (the ring's `ring_context`) it holds a binary v1 body instead,
    which ingest turns into its frame with `ring_event` (and then drops `ctx`)."""

    __slots__ = ("client_id", "ctx")

    def __init__(self, frames: list[bytes], client_id: str, ctx: RingContext | None = None) -> None:
        super().__init__(frames)
        self.client_id = client_id
        self.ctx = ctx

    def settle(self) -> Envelope | None:
        """Make a binary body its frame (once): then [0] is the envelope, as for
        any other message; returns it decoded, or None (see `ring_event`)."""
        if self.ctx is None:
            return None
        self[0], env = ring_event(self[0], self.ctx)
        self.ctx = None
        return env


def ring_context(client_id: str) -> RingContext:
    """What `ring_event` needs of a ring, made once a ring."""
    return (client_id_json(client_id), client_id, KINDS_JSON, BINARY_KINDS, Envelope, orjson.loads)


def client_id_json(client_id: str) -> bytes:
    """The client id as the envelope spells it (a ring computes it once)."""
    return orjson.dumps(client_id)


def binary_frame_py(body: bytes, cid_json: bytes, kinds: tuple[bytes, ...] = KINDS_JSON) -> bytes:
    """The JSON envelope ``[1, client_id, seq, kind, key, ref, emitted_ns, payload]``
    of a binary v1 body; b"" if the body breaks the layout.

    >>> body = BINARY_V1.pack(7, 99, 2, NO_STRING, 6) + b"k1" + b'{"a":1}'
    >>> binary_frame_py(body, b'"c1"')
    b'[1,"c1",7,"webhook.post","k1",null,99,{"a":1}]'
    """
    if len(body) < BINARY_V1.size:
        return b""
    seq, emitted_ns, key_len, ref_len, code = BINARY_V1.unpack_from(body)
    at = BINARY_V1.size
    klen = 0 if key_len == NO_STRING else key_len
    rlen = 0 if ref_len == NO_STRING else ref_len
    if code >= len(kinds) or at + klen + rlen > len(body):
        return b""
    try:
        key = b"null" if key_len == NO_STRING else orjson.dumps(body[at:at + klen].decode())
        ref = b"null" if ref_len == NO_STRING else orjson.dumps(body[at + klen:at + klen + rlen].decode())
    except UnicodeDecodeError:
        return b""  # the C path copies such bytes, and orjson.loads refuses them: bad_json either way
    return b"".join((b"[1,", cid_json, b",%d," % seq, kinds[code], b",", key, b",", ref, b",%d," % emitted_ns,
                     body[at + klen + rlen:], b"]"))


def ring_event_py(body: bytes, ctx: RingContext) -> tuple[bytes, Envelope | None]:
    """A binary v1 body's envelope (`binary_frame`) and what `wire.decode` makes
    of it, or None where `wire.decode` must look (module docstring).

    >>> body = BINARY_V1.pack(7, 99, 2, NO_STRING, 6) + b"k1" + b'{"a":1}'
    >>> frame, env = ring_event_py(body, ring_context("c1"))
    >>> frame
    b'[1,"c1",7,"webhook.post","k1",null,99,{"a":1}]'
    >>> env
    Envelope(client_id='c1', seq=7, kind='webhook.post', key='k1', ref=None, emitted_ns=99, payload={'a': 1})
    """
    cid_json, cid, kinds_json, kinds, _, loads = ctx
    frame = binary_frame_py(body, cid_json, kinds_json)
    if not frame:
        return frame, None
    seq, emitted_ns, key_len, ref_len, code = BINARY_V1.unpack_from(body)
    at = BINARY_V1.size + (0 if key_len == NO_STRING else key_len) + (0 if ref_len == NO_STRING else ref_len)
    if seq > MAX_INT or emitted_ns > MAX_INT or len(body) - at >= FAST_PAYLOAD_MAX:
        return frame, None
    try:
        payload = loads(body[at:])
    except orjson.JSONDecodeError:
        return frame, None
    # binary_frame_py checked the key and ref (UTF-8), so decoding them again cannot fail.
    key = None if key_len == NO_STRING else body[BINARY_V1.size:BINARY_V1.size + key_len].decode()
    ref = None if ref_len == NO_STRING else body[at - ref_len:at].decode()
    return frame, Envelope(cid, seq, kinds[code], key, ref, emitted_ns, payload)


binary_frame: Callable[[bytes, bytes, tuple[bytes, ...]], bytes] = (
    fastemit.binary_frame if fastemit is not None else binary_frame_py)
ring_event: Callable[[bytes, RingContext], tuple[bytes, Envelope | None]] = (
    fastemit.ring_event if fastemit is not None else ring_event_py)
