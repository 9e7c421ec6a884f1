"""Each client's sequence numbers: replays dropped, gaps counted, closing messages applied.

    sequences = Sequences(journal, metrics)          # starts from what the journal holds
    if sequences.accept(env.client_id, env.seq, touched): ...   # False: a replay, drop it
    sequences.control(env, touched)                  # a client's hello/stats/bye
    sequences.restore()                              # after a batch the journal refused

Every event carries its client's identity and a sequence number. A number at
or below the last one seen is a replay (a ring re-read after a crash, a copy
already journaled): dropped and counted. A jump is a gap, events lost in
between, counted per client and logged. The client's closing message
announces its last number, so a lost tail counts too. `touched` collects the
states a batch changed; ingest writes them with the batch, once per client.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from client import wire
from sidecar.errors import Reject
from sidecar.journal.store import ClientState, Journal
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.ingest")


@dataclass
class ClientSeq:
    """One client's place: as written to the journal's `clients` table."""

    last_seq: int
    gaps: int
    closed: bool = False
    stats: bytes | None = None


class Sequences:
    def __init__(self, journal: Journal, metrics: Metrics) -> None:
        self.journal = journal
        self.metrics = metrics
        self.clients: dict[str, ClientSeq] = {}
        self.stale = False  # the journal could not be read back: `restore` again before the next commit
        self._load(journal.client_states())

    def _load(self, states: Mapping[str, ClientState]) -> None:
        self.clients = {cid: ClientSeq(st.last_seq, st.gaps) for cid, st in states.items()}

    def restore(self) -> bool:
        """Each client's sequence as the journal has it: a refused batch advanced
        them in memory, and its retry must not count its own events as replays.
        False if the journal cannot be read either; the retry waits until it can."""
        try:
            states = self.journal.client_states()
        except sqlite3.Error:
            self.stale = True
            return False
        self._load(states)
        self.stale = False
        return True

    def accept(self, client_id: str, seq: int, touched: dict[str, ClientSeq]) -> bool:
        """Track the client's sequence; False for a replay of a number already seen."""
        state = self.clients.get(client_id)
        if state is None:
            state = self.clients[client_id] = ClientSeq(0, 0)
        if seq <= state.last_seq:
            self.metrics.deduplicated.labels(kind="any", reason="replayed_seq").inc()
            return False
        if seq > state.last_seq + 1:
            missing = seq - state.last_seq - 1
            state.gaps += missing
            self.metrics.gaps.labels(client=client_id).inc(missing)
            log.warning("client %s: %d event(s) lost before seq %d", client_id, missing, seq)
        state.last_seq = seq
        touched[client_id] = state  # written to the journal once per batch
        return True

    def control(self, env: wire.Envelope, touched: dict[str, ClientSeq]) -> None:
        """A client's own counters; its closing message (BYE) also settles its tail."""
        stats = _clean_stats(env.payload)
        self.metrics.clients.update(env.client_id, stats)
        state = self.clients.setdefault(env.client_id, ClientSeq(0, 0))
        state.stats = orjson.dumps(stats)
        announced = stats.get("sent")
        if env.kind == wire.BYE and isinstance(announced, int) and announced > state.last_seq:
            missing = announced - state.last_seq
            state.gaps += missing
            state.last_seq = announced
            self.metrics.gaps.labels(client=env.client_id).inc(missing)
            log.warning("client %s closed: its last %d event(s) never arrived", env.client_id, missing)
        if env.kind == wire.BYE:
            state.closed = True
        touched[env.client_id] = state
        if state.closed:
            del self.clients[env.client_id]  # persisted; no need to keep it in memory


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
        stats["dropped"] = {str(k)[:64]: v for k, v in list(dropped.items())[:32] if count(v)}
    return stats
