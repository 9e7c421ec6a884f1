"""Each client's sequence numbers: replays dropped, gaps counted, closing messages applied.

    sequences = Sequences(journal, metrics)          # starts from what the journal holds
    if sequences.accept(env.client_id, env.seq, touched, ring=True): ...   # False: a replay, drop it
    sequences.control(env, touched, ring=False)      # a client's hello/stats/bye
    sequences.restore()                              # after a batch the journal refused
    sequences.prune(time.monotonic())                # now and then: forget clients long gone

Every event carries its client's identity and a sequence number. A number at
or below the last one seen is a replay (a ring re-read after a crash, a copy
already journaled): dropped and counted. A jump is a gap, events lost in
between, counted and logged (at most a line per client a minute, and a line
a second in all: a flood of made-up ids must not flood the log). The
client's closing message announces its last number, so a lost tail counts
too. `touched` collects the states a batch changed; ingest writes them with
the batch, once per client.

Whose numbers they are: a ring's client id is the ring's own (its header,
checked against its file name; ingest refuses a ring frame claiming
another), so a state made by ring frames (`ClientSeq.ring`) belongs to that
ring, and a ZeroMQ frame claiming its id is refused as `wrong_client`: no
process that can reach the socket can push another producer's sequence to
2**63-1 and have its next events dropped as replays. A ring frame finding a
state that ZeroMQ frames made (someone claimed the id first) takes it over
from zero. States from before this rule (`ring` unknown) serve both.

Memory and the journal stay bounded whatever ids arrive: at most
MAX_IN_MEMORY states are held (the oldest are looked up again in the
journal when their client comes back), at most that many are loaded at
start, and `prune` deletes clients idle past `keep_seconds`.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice

import orjson

from client import wire
from sidecar.errors import Reject
from sidecar.ingest.rejects import Throttle
from sidecar.journal.clients import ClientState
from sidecar.journal.store import Journal
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.ingest")

MAX_IN_MEMORY = 50_000          # client states held (about 10 MB); the journal has the rest
DEFAULT_KEEP_SECONDS = 7 * 86400.0  # [ingest] clients_keep_hours: a client idle this long is forgotten
PRUNE_SECONDS = 600.0           # how often `prune` runs at most
PRUNE_CHUNK = 10_000            # rows one prune deletes at most (a short transaction)
GAP_LOG_CLIENT_SECONDS = 60.0   # a gap line per client at most this often...
GAP_LOG_SECONDS = 1.0           # ...and one in all at most this often
_REASON = re.compile(r"[a-z0-9_]{1,32}")  # a drop reason a client reports, as metrics label it


@dataclass
class ClientSeq:
    """One client's place: as written to the journal's `clients` table."""

    last_seq: int
    gaps: int
    closed: bool = False
    stats: bytes | None = None
    ring: bool | None = None  # made by ring frames (True), ZeroMQ frames (False), or before this was kept


class Sequences:
    def __init__(self, journal: Journal, metrics: Metrics, *, keep_seconds: float = DEFAULT_KEEP_SECONDS,
                 max_in_memory: int = MAX_IN_MEMORY) -> None:
        self.journal = journal
        self.metrics = metrics
        self.keep_seconds = keep_seconds
        self.max_in_memory = max_in_memory
        self.clients: dict[str, ClientSeq] = {}
        self.stale = False  # the journal could not be read back: `restore` again before the next commit
        self._per_client = Throttle(GAP_LOG_CLIENT_SECONDS)
        self._overall = Throttle(GAP_LOG_SECONDS)
        self._unlogged = 0  # events lost in gaps whose lines were held back since the last line
        self._pruned_at = float("-inf")
        self._load(journal.clients.states(limit=max_in_memory))

    def _load(self, states: Mapping[str, ClientState]) -> None:
        self.clients = {cid: ClientSeq(st.last_seq, st.gaps, ring=st.ring) for cid, st in states.items()}

    def restore(self) -> bool:
        """Each client's sequence as the journal has it: a refused batch advanced
        them in memory, and its retry must not count its own events as replays.
        False if the journal cannot be read either; the retry waits until it can."""
        try:
            states = self.journal.clients.states(limit=self.max_in_memory)
        except sqlite3.Error:
            self.stale = True
            return False
        self._load(states)
        self.stale = False
        return True

    def trim(self) -> None:
        """Between batches: forget the oldest states beyond `max_in_memory` (the journal keeps them)."""
        excess = len(self.clients) - self.max_in_memory
        if excess > 0:
            for cid in list(islice(self.clients, excess)):
                del self.clients[cid]

    def prune(self, now: float) -> int:
        """Delete clients idle past `keep_seconds` from the journal, every PRUNE_SECONDS at most;
        how many went. Idle is counted from the journal's latest client update, so a
        sidecar stopped for a week does not forget, at its start, rings it must still re-read."""
        if now - self._pruned_at < PRUNE_SECONDS:
            return 0
        self._pruned_at = now
        try:
            gone = self.journal.clients.prune(self.keep_seconds, limit=PRUNE_CHUNK)
        except sqlite3.Error as exc:  # the journal's health reports it; try again next time
            log.warning("could not prune the clients table: %s", exc)
            return 0
        if gone:
            for cid in gone:
                self.clients.pop(cid, None)
            log.info("forgot %d client(s) idle for more than %.0f hours", len(gone), self.keep_seconds / 3600)
        return len(gone)

    def _state(self, client_id: str, ring: bool) -> ClientSeq:
        """The client's state for a frame from a ring (`ring`) or the socket; Reject if not its to touch."""
        state = self.clients.get(client_id)
        if state is None:
            state = self._lookup(client_id)
            self.clients[client_id] = state
        if state.ring is None:  # from before origins were kept, or new: the first to write it owns it
            state.ring = ring
        elif state.ring != ring:
            if not ring:
                raise Reject("wrong_client", f"client id {client_id} belongs to a ring; a socket frame claimed it")
            # The ring's own frames win over whoever claimed its id on the socket first.
            log.warning("client %s: ring frames take over the id a socket frame had claimed", client_id)
            state.last_seq, state.gaps, state.closed, state.ring = 0, 0, False, True
        return state

    def _lookup(self, client_id: str) -> ClientSeq:
        try:
            st = self.journal.clients.state(client_id)
        except sqlite3.Error:
            self.stale = True  # the write will most likely fail too, and restore() follows
            st = None
        return ClientSeq(0, 0) if st is None else ClientSeq(st.last_seq, st.gaps, ring=st.ring)

    def accept(self, client_id: str, seq: int, touched: dict[str, ClientSeq], *, ring: bool = False) -> bool:
        """Track the client's sequence; False for a replay of a number already seen.
        Raises Reject("wrong_client") for a socket frame claiming a ring's id."""
        state = self.clients.get(client_id)
        if state is not None and state.ring is ring and seq == state.last_seq + 1:
            # The common case in one test: a known client's next number, from where its id belongs.
            state.last_seq = seq
            touched[client_id] = state
            return True
        state = self._state(client_id, ring)
        if seq <= state.last_seq:
            self.metrics.deduplicated.labels(kind="any", reason="replayed_seq").inc()
            return False
        if seq > state.last_seq + 1:
            missing = seq - state.last_seq - 1
            state.gaps += missing
            self._gap(client_id, missing, f"before seq {seq}")
        state.last_seq = seq
        touched[client_id] = state  # written to the journal once per batch
        return True

    def control(self, env: wire.Envelope, touched: dict[str, ClientSeq], *, ring: bool = False) -> None:
        """A client's own counters; its closing message (BYE) also settles its tail."""
        stats = _clean_stats(env.payload)
        state = self._state(env.client_id, ring)
        self.metrics.clients.update(env.client_id, stats)
        state.stats = orjson.dumps(stats)
        announced = stats.get("sent")
        if env.kind == wire.BYE and isinstance(announced, int) and announced > state.last_seq:
            missing = announced - state.last_seq
            state.gaps += missing
            state.last_seq = announced
            self._gap(env.client_id, missing, "at its close (never arrived)")
        if env.kind == wire.BYE:
            state.closed = True
        touched[env.client_id] = state
        if state.closed:
            del self.clients[env.client_id]  # persisted; no need to keep it in memory

    def _gap(self, client_id: str, missing: int, where: str) -> None:
        """Count a gap; log it unless this client's or the overall line rate is spent."""
        self.metrics.gaps.inc(missing)
        now = time.monotonic()
        held = self._per_client.due(client_id, now, missing)
        if held is None or self._overall.due("gaps", now) is None:
            self._unlogged += missing + (held or 0)
            return
        unlogged, self._unlogged = self._unlogged + held, 0
        log.warning("client %s: %d event(s) lost %s%s", client_id, missing, where,
                    f"; {unlogged} more lost in gaps not logged since the last such line" if unlogged else "")


def _clean_stats(payload: object) -> dict[str, object]:
    """A client's own counters, kept only if well-formed: they end up in metrics."""
    if not isinstance(payload, dict):
        raise Reject("bad_payload", "client stats must be an object")

    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= wire.MAX_INT

    stats: dict[str, object] = {}
    if count(payload.get("sent")):
        stats["sent"] = payload["sent"]
    dropped = payload.get("dropped")
    if isinstance(dropped, dict):
        # Reasons become metric labels: the client's own short words only (queue_full...).
        stats["dropped"] = {k: v for k, v in list(dropped.items())[:32] if _REASON.fullmatch(str(k)) and count(v)}
    return stats
