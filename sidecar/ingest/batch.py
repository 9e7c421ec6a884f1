"""One batch of messages validated, routed and journaled in one transaction.

    writer = BatchWriter(cfg.ingest, journal, connectors, metrics, sequences, rejects, admission, on_written)
    writer.process(messages)     # raises JournalUnavailable (disk full, read-only...): retry later

`Ingest` (core.py) is the loop that reads and decides when to commit; this
is what a commit does with each message: parse it, check its identity (a
ring's frames are its client's, whatever they claim), its sequence, its
route, spool its blobs, then one `Journal.write_batch`. One bad frame never
costs the others: whatever goes wrong with it, even a bug, makes it a
counted reject and the batch goes on.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from client import wire
from client.ring import valid_client_id
from sidecar.config import IngestConfig
from sidecar.connectors.base import Connector
from sidecar.errors import JournalUnavailable, Reject
from sidecar.ingest.admission import Admission
from sidecar.ingest.decode import RingMessage, ring_event
from sidecar.ingest.inbox import BlobRef
from sidecar.ingest.rejects import Rejects, RejectTally
from sidecar.ingest.sequences import ClientSeq, Sequences
from sidecar.journal.health import classify
from sidecar.journal.store import BLOB_PATH_SEPARATOR, EventValues, Journal
from sidecar.ops.metrics import Metrics

__all__ = ["BatchWriter", "RingMessage"]  # RingMessage is decode.py's (the reader makes them), named here too

CONTROL_KINDS = wire.CONTROL_KINDS


@dataclass
class _Batch:
    """What one group commit writes."""

    now_ns: int
    rows: list[EventValues] = field(default_factory=list)  # EventRow's fields, as plain tuples (cheaper to make)
    rejects: list[tuple[str, str, bytes | None]] = field(default_factory=list)  # the sample kept as rows
    tallies: dict[str, RejectTally] = field(default_factory=dict)  # every reject, by reason
    touched: dict[str, ClientSeq] = field(default_factory=dict)
    lanes: set[str] = field(default_factory=set)
    kinds: dict[str, int] = field(default_factory=dict)
    spooled: list[str] = field(default_factory=list)


class BatchWriter:
    """Turns a batch of messages into journal rows and rejects, in one transaction."""

    def __init__(self, cfg: IngestConfig, journal: Journal, connectors: Mapping[str, Connector], metrics: Metrics,
                 sequences: Sequences, rejects: Rejects, admission: Admission,
                 on_written: Callable[[set[str]], None]) -> None:
        self.cfg = cfg
        self.journal = journal
        self.metrics = metrics
        self.sequences = sequences
        self.rejects = rejects
        self.admission = admission
        self.on_written = on_written
        self.by_kind: dict[str, list[Connector]] = {}
        for connector in connectors.values():
            for kind in connector.kinds:
                self.by_kind.setdefault(kind, []).append(connector)
        # The common case, looked up once per event: a kind with one lane.
        self.only_connector = {kind: cs[0] for kind, cs in self.by_kind.items() if len(cs) == 1}
        self._spool_error: OSError | None = None

    def process(self, messages: list[list[bytes]]) -> None:
        """Validate, route and journal one batch in a single transaction.

        One bad frame never costs the others: whatever goes wrong with it,
        even a bug, makes it a counted reject and the batch goes on. Every
        reject counts (metrics, the journal's `reject_counts`); `rejects`
        keeps a sample, and the log a line per reason a minute (rejects.py).
        """
        batch = _Batch(now_ns=time.time_ns())
        self.sequences.trim()
        for frames in messages:
            error: BaseException | None = None
            try:
                self._one(frames, batch)
                continue
            except Reject as exc:
                reason, detail = exc.reason, exc.detail
            except Exception as exc:  # noqa: BLE001 -- a bug on one frame; its traceback is logged with the rejects
                reason, detail, error = "internal_error", f"{type(exc).__name__}: {exc}"[:500], exc
            self.rejects.add(batch.tallies, batch.rejects, reason, detail, frames[0] if frames else None, error)
        self.admission.learn(batch.rows)
        self._write(batch)
        for kind, n in batch.kinds.items():
            self.metrics.received.labels(kind=kind).inc(n)
            self.metrics.journaled.labels(kind=kind).inc(n)
        self.rejects.report(batch.tallies)
        if batch.lanes:
            self.on_written(batch.lanes)
        self.sequences.prune(time.monotonic())

    def _one(self, frames: list[bytes], batch: _Batch) -> None:
        # Identity: a ring's frames are its client's, whatever they say; the
        # socket's are what they claim, within the ring's limits (64 of [A-Za-z0-9._-]).
        if type(frames) is RingMessage:
            from_ring = True
            env = None
            if frames.ctx is not None:  # a binary body: its frame and envelope at once (RingMessage.settle, inline)
                frames[0], env = ring_event(frames[0], frames.ctx)
                frames.ctx = None  # the frame from now on (a reject's sample, a retry of the batch)
            if env is not None and len(frames[0]) <= self.cfg.max_message_bytes:
                blobs: list[bytes] = []  # binary records carry none; what `_parse` checks holds by construction
            else:
                env, blobs = self._parse(frames)
                if env.client_id != frames.client_id:
                    raise Reject("wrong_client", f"a frame claiming client {_clip(env.client_id)} in the ring of "
                                                 f"{frames.client_id}")
        else:
            from_ring = False
            env, blobs = self._parse(frames)
            if not valid_client_id(env.client_id):
                raise Reject("bad_client_id", f"client id {_clip(env.client_id)} is not 1 to 64 of [A-Za-z0-9._-]")
        client_id, seq, kind, key, ref, emitted_ns, _ = env  # one unpacking, not six attribute loads
        if kind in CONTROL_KINDS:
            self.sequences.control(env, batch.touched, ring=from_ring)
            return
        # The sequence counts every event that arrived, accepted or not: a
        # rejected event is not a lost one.
        if not self.sequences.accept(client_id, seq, batch.touched, ring=from_ring):
            return
        connector = self.only_connector.get(kind) or self._choose(env)
        try:
            target = connector.route(env, blobs)
        except Reject as exc:
            raise Reject(exc.reason, f"{kind}: {exc.detail}") from None
        blob_path = None
        if blobs:
            paths = [self._spool(blob) for blob in blobs]
            batch.spooled += paths
            blob_path = BLOB_PATH_SEPARATOR.join(paths)
        lane = connector.lane
        batch.rows.append((lane, kind, target, key, ref, client_id, seq, emitted_ns, batch.now_ns, frames[0],
                           blob_path))
        batch.lanes.add(lane)
        kinds = batch.kinds
        kinds[kind] = kinds.get(kind, 0) + 1

    def _choose(self, env: wire.Envelope) -> Connector:
        """The lane for a kind that several lanes share (one per webhook)."""
        candidates = self.by_kind.get(env.kind)
        if not candidates:
            raise Reject("unknown_kind", f"no connector delivers {env.kind!r}")
        for connector in candidates:
            if connector.accepts(env):
                return connector
        raise Reject("unknown_target", f"no {env.kind} lane is configured for ref {env.ref!r}")

    def _write(self, batch: _Batch) -> None:
        """Commit the batch, or raise JournalUnavailable (disk full, read-only...)
        having removed the blobs spooled for it. Other errors are bugs: raised."""
        spool_error, self._spool_error = self._spool_error, None
        try:
            if spool_error is not None:
                raise spool_error
            clients = {cid: (c.last_seq, c.gaps, c.closed, c.stats, c.ring) for cid, c in batch.touched.items()}
            unsampled = {reason: t.unsampled for reason, t in batch.tallies.items() if t.unsampled}
            self.journal.write_batch(batch.rows, batch.rejects, clients, unsampled)
        except (sqlite3.Error, OSError) as exc:
            self.journal.spool.remove(batch.spooled)
            state = classify(exc, self.journal.path.parent)
            if state is None:
                raise
            if isinstance(exc, OSError):
                self.journal.health.failed(self.journal.role, exc)  # SQLite's own failures report themselves
            raise JournalUnavailable(state, str(exc)) from None

    def _parse(self, frames: list[bytes]) -> tuple[wire.Envelope, list[bytes]]:
        if not frames or len(frames) > 1 + wire.MAX_BLOBS:
            raise Reject("bad_frames", f"expected 1 to {1 + wire.MAX_BLOBS} frames, got {len(frames)}")
        if len(frames[0]) > self.cfg.max_message_bytes:
            raise Reject("too_large", f"event of {len(frames[0])} bytes, limit {self.cfg.max_message_bytes}")
        blobs = frames[1:]
        if blobs:
            size = sum(len(b) for b in blobs)
            if size > self.cfg.max_blob_bytes:
                raise Reject("too_large", f"blobs of {size} bytes, limit {self.cfg.max_blob_bytes}")
        try:
            return wire.decode(frames[0]), blobs
        except wire.WireError as exc:
            raise Reject(exc.reason, str(exc)) from None

    def _spool(self, blob: bytes | BlobRef) -> str:
        """Write a blob beside the journal; the event row refers to the file.
        A blob a producer left in the inbox (a BlobRef, from a ring record) is
        linked or copied in chunks, never read whole; an unusable one is
        rejected by the reason the ring reader found (``blob_missing``...).

        A full or read-only disk is the journal's fault, not the event's: it
        is remembered and `_write` refuses the whole batch, to be retried."""
        try:
            if isinstance(blob, BlobRef):
                if blob.error:
                    raise Reject(blob.error, f"blob file {blob.name} in the inbox: {blob.error}")
                # Copied from the fd the inbox checked, never reopened by path (spool.adopt).
                return self.journal.spool.adopt(blob.fd, blob.size)
            return self.journal.spool.put(blob)
        except FileNotFoundError:
            raise Reject("blob_missing", "the blob file left the inbox before it was journaled") from None
        except OSError as exc:
            if classify(exc) is None:
                raise
            self._spool_error = self._spool_error or exc
            return ""


def _clip(text: str, most: int = 80) -> str:
    """An untrusted string for a reject's detail: quoted, and short (an id may be a megabyte)."""
    return repr(text[:most]) + (f"... ({len(text)} characters)" if len(text) > most else "")
