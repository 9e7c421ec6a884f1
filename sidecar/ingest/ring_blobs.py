"""The blob files one ring's records refer to (`client.blobs`), found through the inbox.

    blobs = RingBlobs(inbox, ring.client_id, ring.owner_uid, alive=ring.producer_alive)
    if not blobs.resolve(parts, pos):    # a file not there yet: the record, and the ring's order, wait
        ...
    blobs.consumed()                     # at the ack: the files read are the journal's now, and go

A reference part is a memoryview of its file name (`ring_reader.split_parts`
marks it so); `resolve` puts a `BlobRef` in its place. Each holds its file
open (the journal copies from that fd) until the ack closes it: at most
MAX_HELD per ring, so a ring of tiny references cannot use up the fds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.ingest.inbox import WAIT_SECONDS, BlobRef, Inbox

MAX_HELD = 64    # blob files one ring may hold open between acks: reading waits for the ack beyond that


class RingBlobs:
    """One ring's side of the inbox: what its records refer to, and how long to wait for it."""

    def __init__(self, inbox: Inbox | None, client_id: str, owner_uid: int, *, alive: Callable[[], bool]) -> None:
        self.inbox = inbox
        self.client_id = client_id
        self.owner_uid = owner_uid
        self.alive = alive
        self.read: list[BlobRef] = []           # inbox files read (and held open) since the last ack
        self.wait_since: float | None = None    # reading stopped at a record whose blob file is not there yet

    def resolve(self, parts: list, pos: int) -> bool:
        """Put a BlobRef in place of each reference part; False while a file
        is not there yet and the producer lives (for at most inbox.WAIT_SECONDS)."""
        inbox = self.inbox
        if len(self.read) + len(parts) - 1 > MAX_HELD and self.read:
            return False  # the next ack closes what is held; this record waits for it
        for k in range(1, len(parts)):
            if isinstance(parts[k], memoryview):  # marked by split_parts: a reference
                raw = parts[k].tobytes()
                if inbox is None or not inbox.ok:
                    parts[k] = BlobRef("", raw[:80].decode("ascii", "replace"), error="blob_no_inbox")
                    continue
                ref = inbox.resolve(raw, self.client_id, self.owner_uid, alive=self._worth_waiting)
                if ref is None:
                    if self.wait_since is None:
                        self.wait_since = time.monotonic()
                    return False
                parts[k] = ref
        self.wait_since = None
        self.read += [p for p in parts[1:] if isinstance(p, BlobRef) and p.path]
        return True

    def consumed(self) -> None:
        """The journal holds the records read so far: their inbox files go."""
        if self.read and self.inbox is not None:
            for ref in self.read:
                ref.close()
            self.inbox.consumed([ref.name for ref in self.read])
            self.read = []

    def _worth_waiting(self) -> bool:
        """Whether a blob file not there yet may still come: its producer lives, and not for too long."""
        since = self.wait_since
        return (since is None or time.monotonic() - since < WAIT_SECONDS) and self.alive()
