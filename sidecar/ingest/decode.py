"""Ring records back into the one JSON envelope the journal keeps.

    frame = binary_frame(body, client_id_json(ring.client_id))   # a binary v1 body
    wire.decode(frame)   # as for a format-0 record: ingest checks it the same way

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
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from client.compiled import fastemit
from client.ring import BINARY_KINDS, BINARY_V1, NO_STRING

# Each kind as its JSON string, by code.
KINDS_JSON: tuple[bytes, ...] = tuple(orjson.dumps(kind) for kind in BINARY_KINDS)


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


binary_frame: Callable[[bytes, bytes, tuple[bytes, ...]], bytes] = (
    fastemit.binary_frame if fastemit is not None else binary_frame_py)
