"""Whether anyone reads a Client: what waits unacknowledged, since when, and one warning.

    presence = Presence(endpoint, ring_dir)      # one per Client
    presence.look(transport, seq, client_id)     # once a second, from the watcher thread: warns once
    presence.report(transport, seq)              # stats()["unacknowledged"] and friends (emit's tick too)

A ring says exactly how far the sidecar's journal holds it (`acknowledged`,
in bytes). Events are counted by marks: every look notes (last sequence
number, bytes written, when), so "events not yet acknowledged" is the
sequence now minus the last mark the sidecar has passed: an upper bound, to
within one look. ZeroMQ acknowledges nothing: there "unacknowledged" is
what was sent while no sidecar was connected (libzmq's handshake events).

A Client whose events stay unacknowledged for WARN_SECONDS logs ONE warning
naming its endpoint and ring directory, and one line when a sidecar reads
it again; the next episode warns again. `watch()` runs the looks on one
daemon thread per process, so the warning comes even if the loop emits once
and then waits; emit itself only looks on its once-a-second tick.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .transport import Transport

log = logging.getLogger("client")

WARN_SECONDS = 5.0        # unacknowledged this long: warn (seconds, so a typo is seen at once)
LOOK_SECONDS = 1.0        # how often the watcher looks
MAX_MARKS = 512           # marks kept; past it the oldest pending one stays, the next ones thin out


class Presence:
    """One Client's view of its reader; the Client calls it on slow paths only."""

    def __init__(self, endpoint: str, ring_dir: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self.endpoint = endpoint
        self.ring_dir = ring_dir
        self.fallback: str | None = None   # why a ring endpoint is on ZeroMQ ("no ring directory ...")
        self.told_unreachable = False      # the one message for a missing directory or a failed transport
        self.clock = clock
        self._marks: deque[tuple[int, int, float]] = deque()  # (seq, bytes written, when) not yet acknowledged
        self._passed = 0                  # the last sequence number the sidecar has certainly passed
        self._away_seq: int | None = None  # ZeroMQ: the sequence when no sidecar was seen connected
        self._away_at: float | None = None
        self._ever_connected = False
        self.warned = False
        self.warnings = 0
        self._mutex = threading.Lock()

    def reset(self) -> None:
        """A new identity (after fork) or a new transport: start counting afresh."""
        self._marks.clear()
        self._passed = 0
        self._away_seq = self._away_at = None
        self._ever_connected = False
        self.warned = False

    # -- looking ----------------------------------------------------------------

    def look(self, transport: Transport | None, seq: int, client_id: str) -> None:
        """Note where the client stands and warn once if nobody has read it for WARN_SECONDS."""
        now = self.clock()
        pending, since, _ = self._pending(transport, seq, now)
        if pending and since is not None and now - since >= WARN_SECONDS:
            if not self.warned:
                self.warned = True
                self.warnings += 1
                log.warning("client %s: no sidecar has acknowledged its events for %.0f s (%d event(s) wait): %s",
                            client_id, now - since, pending, self.why(transport))
        elif not pending and self.warned:
            self.warned = False
            log.info("client %s: a sidecar on %s reads its events again", client_id, self.endpoint)

    def _pending(self, transport: Transport | None, seq: int, now: float) -> tuple[int, float | None, int | None]:
        """(events at most, since when, bytes) not yet acknowledged; bytes None where unknown."""
        with self._mutex:  # the watcher and the emitting thread both look
            return self._pending_locked(transport, seq, now)

    def _pending_locked(self, transport: Transport | None, seq: int, now: float) -> tuple[int, float | None, int | None]:
        if transport is None:
            return 0, None, None
        unacked = transport.unacknowledged
        if unacked is not None:  # a ring: exact bytes, events by marks
            acked = transport.acknowledged
            written = acked + unacked
            marks = self._marks
            while marks and marks[0][1] <= acked:
                self._passed = marks.popleft()[0]
            if unacked and (not marks or marks[-1][1] < written):
                if len(marks) >= MAX_MARKS:
                    del marks[1]  # keep the oldest: it says since when
                marks.append((seq, written, now))
            if not unacked:
                marks.clear()
                self._passed = seq
                return 0, None, 0
            return seq - self._passed, marks[0][2], unacked
        connected = transport.peer_connected()
        if connected or connected is None:
            self._ever_connected |= bool(connected)
            self._away_seq = self._away_at = None
            return 0, None, None
        if self._away_seq is None:  # never connected: everything since the first event waits
            self._away_seq, self._away_at = (seq if self._ever_connected else 0), now
        if seq > self._away_seq:
            return seq - self._away_seq, self._away_at, None
        self._away_at = now  # nothing sent since it left: nothing waits yet
        return 0, None, None

    def why(self, transport: Transport | None) -> str:
        """One line for a human: the endpoint, the directory, and what is likely wrong."""
        if self.fallback:
            return (f"{self.fallback}, so events wait in this process's memory (ZeroMQ) for a sidecar on "
                    f"{self.endpoint}; is the sidecar running, and is the endpoint spelled as in its configuration?")
        if transport is not None and transport.unacknowledged is not None:
            where = f"ring directory {self.ring_dir}, endpoint {self.endpoint}"
            if not transport.adopted:
                return f"no sidecar has adopted this client's ring ({where}); is one running?"
            return (f"the sidecar adopted this client's ring but stopped reading it ({where}): stopped, stuck "
                    "or gone; events wait in the ring and are read when it is back")
        return f"no sidecar connected to {self.endpoint}; events wait in this process's memory"

    # -- telling ----------------------------------------------------------------

    def report(self, transport: Transport | None, seq: int) -> dict[str, Any]:
        """stats()'s view: what waits unacknowledged and since when, and whether a sidecar was seen::

            {"unacknowledged": {"events": 20, "bytes": 6080, "since": 1765137600.5},
             "sidecar_seen": True, "fallback": None}

        `events` is at most that many (counted to within a look), `bytes` is
        exact for a ring and None for ZeroMQ, `since` the wall time of the
        oldest (None when nothing waits); `fallback` says why a ring endpoint
        is on ZeroMQ ("no ring directory ...")."""
        events, since, size = self._pending(transport, seq, self.clock())
        seen = None if transport is None else transport.adopted
        if seen is None and transport is not None:
            seen = transport.peer_connected()
        return {"unacknowledged": {"events": events, "bytes": size, "since": since},
                "sidecar_seen": bool(seen), "fallback": self.fallback}


    @staticmethod
    def answered(transport: Transport) -> bool:
        """`Client.ping`'s test: a ring is read once the sidecar's journal has
        acknowledged all of it (so a stopped sidecar answers False); a socket
        once a sidecar is connected; a transport that cannot tell, at once."""
        unacked = transport.unacknowledged
        if unacked is not None:
            return unacked == 0 and bool(transport.adopted)
        return transport.peer_connected() is not False

    def closing(self, transport: Transport, seq: int, client_id: str) -> None:
        """At close: a script that emits and exits before any warning could come hears it here."""
        waiting = self._pending(transport, seq, self.clock())[0]
        if waiting and transport.adopted is False:
            log.warning("client %s closes with %d event(s) in its ring in %s, which no sidecar has adopted yet; "
                        "a sidecar on %s reads them when it starts", client_id, waiting, self.ring_dir, self.endpoint)


# -- the watcher: one daemon thread per process --------------------------------

_watcher: tuple[int, threading.Thread] | None = None
_watcher_lock = threading.Lock()


def watch(clients: Callable[[], Iterable[Any]], look: Callable[[Any], None]) -> None:
    """Start (once per process, again after a fork) the thread that calls
    `look(client)` for each client every LOOK_SECONDS. Cheap to call often."""
    global _watcher
    pid = os.getpid()
    if _watcher is not None and _watcher[0] == pid:
        return
    with _watcher_lock:
        if _watcher is not None and _watcher[0] == pid:
            return
        thread = threading.Thread(target=_run, args=(clients, look), name="client-presence", daemon=True)
        _watcher = (pid, thread)
        thread.start()


def _new_lock_in_child() -> None:
    global _watcher_lock
    _watcher_lock = threading.Lock()  # another thread of the parent may have held it at fork()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _run(clients: Callable[[], Iterable[Any]], look: Callable[[Any], None]) -> None:
    me = os.getpid()
    while _watcher is not None and _watcher[0] == me:
        time.sleep(LOOK_SECONDS)
        for client in list(clients()):
            try:
                look(client)
            except Exception:  # a look must never take the process down
                log.debug("presence look failed", exc_info=True)
