"""How a Client gets its transport: a ring where a sidecar made the directory, else ZeroMQ.

    dialer = Dialer(endpoint, "auto", ring.ring_dir(endpoint), presence, queue_size=..., ring_bytes=...)
    transport = dialer.connect(client_id)      # None: try again after dialer.retry_ns
    dialer.name, dialer.max_record             # "ring" or "zmq"; the longest record it takes (0: no limit of its own)

A Client never makes a ring directory (`RingWriter.create(make_dir=False)`):
a missing one means a mistyped endpoint or a sidecar that never started,
and a ring there would hold events nobody reads. In "auto" mode it falls
back to a ZeroMQ PUSH socket on the same endpoint, whose bounded queue
(`queue_size`) lives in this process: a sidecar that binds the endpoint
later gets everything, a typo is said once (naming the endpoint and the
directory) and what is still queued at close is counted `linger_expired`.
"ring" mode insists: no directory is a TransportError, tried again once a
second, said once.
"""

from __future__ import annotations

import logging
import os
import time

from . import ring
from .presence import Presence
from .transport import Transport, TransportError, ZmqTransport

log = logging.getLogger("client")

RETRY_TRANSPORT_NS = 1_000_000_000  # a ring that could not be made is tried again this often
FRESH_ID_TRIES = 2                   # a ring name taken by another uid: this many fresh ids tried


class Dialer:
    """One Client's way to a transport; it keeps how many rings it made (their names' suffixes)."""

    def __init__(self, endpoint: str, mode: str, ring_dir: str | None, presence: Presence, *, queue_size: int,
                 ring_bytes: int, prefault: bool) -> None:
        self.endpoint = endpoint
        self.mode = mode                 # "auto", "ring" or "zmq"
        self.ring_dir = ring_dir
        self.presence = presence
        self.queue_size = queue_size
        self.ring_bytes = ring_bytes
        self.prefault = prefault
        self.rings_made = 0
        self.client_id = ""              # the id the last connect used: a fresh one if the name was taken
        self.retry_ns = 0                # a failed connect is not tried again before this (time.time_ns)
        self.name = "ring" if ring_dir else "zmq"
        self.max_record = 0

    def connect(self, client_id: str, *, in_emit: bool = False) -> Transport | None:
        """A transport, or None (said once, tried again after `retry_ns`).
        `in_emit`: made inside an emit (after a fork, a quarantine or a
        failure), so nothing that takes milliseconds."""
        self.presence.fallback = None
        self.client_id = client_id
        try:
            if self.ring_dir is None:
                return self._zmq()
            # A ring's file name carries the client id; a replacement for a
            # quarantined ring gets a suffix and continues the sequence.
            # A name taken by a file of another uid (someone who saw the id)
            # cannot be replaced in the sticky directory: a fresh id, not a drop.
            for tries_left in range(FRESH_ID_TRIES, -1, -1):
                suffix = f".{self.rings_made}" if self.rings_made else ""
                try:
                    made = ring.RingWriter.create(self.ring_dir, self.client_id, capacity=self.ring_bytes,
                                                  suffix=suffix, prefault=self.prefault and not in_emit,
                                                  allocate=not in_emit, make_dir=False)
                    break
                except ring.NoRingDirectory:
                    if self.mode == "ring":
                        raise
                    return self._fall_back(self.client_id)
                except ring.NameTaken as exc:
                    if not tries_left:
                        raise
                    log.warning("client %s: %s; going on as a fresh client id", self.client_id, exc)
                    self.client_id, self.rings_made = ring.new_client_id(), 0
            self.rings_made += 1
            self.name, self.max_record = "ring", made.max_body  # a record holds the frame and the blobs
            return made
        except TransportError as exc:
            # The trading loop still runs: every emit counts a transport_error drop.
            self._say_once(logging.ERROR, "client cannot reach the sidecar on %s: %s", self.endpoint, exc)
            self.retry_ns = time.time_ns() + RETRY_TRANSPORT_NS
            return None

    def _zmq(self) -> Transport:
        self.name, self.max_record = "zmq", 0
        return ZmqTransport(self.endpoint, queue_size=self.queue_size)

    def _fall_back(self, client_id: str) -> Transport:
        self.presence.fallback = f"no ring directory {self.ring_dir}"
        self._say_once(logging.WARNING, "client %s: no sidecar has made the ring directory %s for endpoint %s "
                       "(a mistyped endpoint, or no sidecar started yet); events wait in this process's memory, "
                       "at most %d, and go to a sidecar that binds %s later", client_id, self.ring_dir,
                       self.endpoint, self.queue_size, self.endpoint)
        return self._zmq()

    def _say_once(self, level: int, message: str, *args: object) -> None:
        if not self.presence.told_unreachable:
            self.presence.told_unreachable = True
            log.log(level, message, *args)

    def ring_now(self, client_id: str, sent: int, current: Transport | None) -> Transport | None:
        """A ring in place of a fallback or a failed transport, if the directory
        is there now and nothing was sent yet (a sequence stays on one path); else None."""
        if sent or self.ring_dir is None or not (current is None or self.presence.fallback):
            return None
        if not os.path.isdir(self.ring_dir):
            return None
        made = self.connect(client_id)
        if made is not None and self.presence.fallback:  # gone again meanwhile: keep what we have
            made.close(0.0)
            return None
        return made
