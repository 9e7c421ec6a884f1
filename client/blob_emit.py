"""emit's blob branch: check the blobs, then send them in the record or as
files in the sidecar's blob inbox (`client.blobs` has the design).

    sender = BlobSender(max_blob_bytes=wire.MAX_BLOB_BYTES)
    try:
        sender.send(transport, frame, seq, blob, client_id, max_record)
    except BlobRefused as refused:
        ...count refused.reason (a misuse, or "blob_backlog": the helper's queue is full)
    sender.close()        # at Client.close: wait for the files still being written

Small blobs travel in the ring record with the event; blobs of
`blobs.THRESHOLD` bytes or more, and every `pathlib.Path`, become files in
the inbox the sidecar publishes beside the ring directory. With no inbox
(ZeroMQ, or a sidecar that publishes none) every blob goes with the event.
Nothing here runs on emit's common path (an event without a blob).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import blobs as offload
from . import wire
from .transport import Transport

log = logging.getLogger("client")

Blob = bytes | bytearray | memoryview | Path
BLOB_TYPES = (bytes, bytearray, memoryview, Path)
INBOX_LOOK_NS = 1_000_000_000   # a missing blob inbox is looked for again this often
CLOSE_SECONDS = 600.0           # close() waits this long at most for blobs still being written


class BlobRefused(Exception):
    """An emit's blobs cannot go: `reason` is the drop's name in `stats()["dropped"]`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BlobSender:
    """One Client's blob branch, with the inbox helper it starts on first need."""

    def __init__(self, max_blob_bytes: int) -> None:
        self.max_blob_bytes = max_blob_bytes
        self.offload: offload.Offload | None = None
        self._look_ns = 0

    def send(self, transport: Transport, frame: bytes, seq: int, blob: Any, client_id: str, max_record: int) -> None:
        """Send `frame` with `blob`; raises BlobRefused, and QueueFull / TransportError as `send` does."""
        blobs = [blob] if isinstance(blob, BLOB_TYPES) else blob
        if not isinstance(blobs, (list, tuple)) or not blobs or not all(isinstance(b, BLOB_TYPES) for b in blobs):
            raise BlobRefused("bad_blob", "blob must be bytes-like, a pathlib.Path or a non-empty list of "
                                          f"them, not {type(blob).__name__}")
        if len(blobs) > wire.MAX_BLOBS:
            raise BlobRefused("bad_blob", f"{len(blobs)} blobs, limit {wire.MAX_BLOBS}")
        sizes = []
        for b in blobs:
            try:
                sizes.append(os.stat(b).st_size if isinstance(b, Path) else memoryview(b).nbytes)
            except OSError as exc:
                raise BlobRefused("bad_blob", f"blob file {b}: {exc.strerror}") from None
        size = sum(sizes)
        if size > self.max_blob_bytes:
            raise BlobRefused("too_large", f"blob is {size} bytes, limit {self.max_blob_bytes}")
        inbox = self._inbox(transport)
        if inbox is None:
            self._inline(transport, frame, blobs, size, max_record)
        else:
            self._by_file(inbox, transport, frame, seq, blobs, sizes, client_id, max_record)

    def _inline(self, transport: Transport, frame: bytes, blobs: Sequence[Blob], size: int, max_record: int) -> None:
        # ZeroMQ sends contiguous buffers only; a strided view is copied here rather than
        # failing halfway through a multipart message.
        inline = [b.read_bytes() if isinstance(b, Path) else
                  b.tobytes() if isinstance(b, memoryview) and not b.contiguous else b for b in blobs]
        if size + len(frame) + 4 * len(blobs) + 4 > max_record:
            limit = min(self.max_blob_bytes, max_record - len(frame) - 4 * len(blobs) - 4)
            raise BlobRefused("too_large", f"blob is {size} bytes, limit {limit}")
        transport.send_blobs(frame, inline)

    def _by_file(self, inbox: offload.Offload, transport: Transport, frame: bytes, seq: int, blobs: Sequence[Blob],
                 sizes: list[int], client_id: str, max_record: int) -> None:
        # Large ones (and every Path) become files; the helper's queue is bounded in bytes.
        held = sum(n for b, n in zip(blobs, sizes, strict=True) if not isinstance(b, Path) and n >= offload.THRESHOLD)
        if not inbox.room(held):
            raise BlobRefused("blob_backlog")
        out: list[Any] = []
        for i, b in enumerate(blobs):
            if isinstance(b, Path) or sizes[i] >= offload.THRESHOLD:
                out.append(offload.blob_name(client_id, seq, i))
            else:
                out.append(b.tobytes() if isinstance(b, memoryview) and not b.contiguous else b)
        if sum(len(o) if isinstance(o, str) else sizes[i] for i, o in enumerate(out)) + len(frame) \
                + 5 * len(out) + 5 > max_record:
            raise BlobRefused("too_large", "the blobs kept in the record do not fit the ring")
        # The record first (emit order is the ring's), then the files: the sidecar waits for them.
        transport.send_refs(frame, out)
        for i, b in enumerate(blobs):
            if isinstance(b, Path):
                if not inbox.link(out[i], b):
                    inbox.fail(out[i])  # gone since the stat: the sidecar is told at once
            elif isinstance(out[i], str):
                # bytes are immutable: kept as they are; anything else is copied once, now.
                inbox.put(out[i], b if isinstance(b, bytes) else bytes(b))

    def _inbox(self, transport: Transport) -> offload.Offload | None:
        """The blob inbox's helper for a ring whose sidecar published one (looked for once a second)."""
        directory = transport.ring_dir
        if self.offload is not None or directory is None:
            return self.offload
        now = time.time_ns()
        if now >= self._look_ns:
            self._look_ns = now + INBOX_LOOK_NS
            path = offload.find_inbox(directory)
            if path is not None:
                self.offload = offload.Offload(path)
        return self.offload

    def close(self) -> None:
        """Wait for the files still being written (at most CLOSE_SECONDS)."""
        if self.offload is not None and not self.offload.close(CLOSE_SECONDS):
            log.error("blobs still being written into %s after %.0f s: their events are rejected as blob_missing",
                      self.offload.inbox, CLOSE_SECONDS)

    def after_fork(self) -> None:
        """In a forked child: the parent's helper thread is not the child's."""
        if self.offload is not None:
            self.offload.after_fork()
