"""Wiring: the sidecar's parts built from its configuration and connected through their constructors.

    parts = build(cfg, metrics, loop=loop, recover=True, started=time.time(),
                  status=sidecar.status, health=sidecar.health)
    parts.ingest.start(); parts.store.start(); ...      # Sidecar.run starts, ticks and stops them

Nothing here starts a thread or a task: `build` takes the journal
directory's lock (one sidecar per journal: a second exits 73 naming the
holder's pid; the ring directory has its own lock, which ingest takes), opens
the journal (checked, and recovered unless `recover=False`), binds the ingest socket and the
metrics/status port, and makes one lane per configured API. What `run` then
starts, `build` has already connected: ingest wakes the lanes it wrote for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.config import Config
from sidecar.connectors import build_lanes
from sidecar.connectors.base import Connector
from sidecar.delivery.lane import Lane
from sidecar.delivery.limiter import Limiter, MemoryStore, Store
from sidecar.delivery.redis_store import RedisStore
from sidecar.errors import JournalError, SidecarError
from sidecar.housekeeping import Housekeeping
from sidecar.ingest.core import Ingest
from sidecar.journal.health import JournalHealth
from sidecar.journal.repair import open_checked
from sidecar.journal.space import Space
from sidecar.journal.store import Journal, read_ref
from sidecar.ops import lock
from sidecar.ops.credentials import read_secret
from sidecar.ops.http_api import ApiServer
from sidecar.ops.metrics import Metrics
from sidecar.ops.peers import Readers
from sidecar.ops.status import Health, Status

log = logging.getLogger("sidecar")


@dataclass(frozen=True)
class Parts:
    """The sidecar's collaborators, connected: what `Sidecar.run` starts, ticks and stops."""

    journal: Journal            # the lanes' connection, and housekeeping's (it checkpoints)
    ingest_journal: Journal     # ingest's own connection, which never checkpoints
    ingest: Ingest
    lanes: dict[str, Lane]
    connectors: list[Connector[Any]]
    store: Store
    house: Housekeeping
    api: ApiServer | None       # None with [metrics] address = ""
    lock: lock.Held             # the journal directory's, held until the process ends (`Sidecar._shutdown`)


def limiter_store(cfg: Config) -> Store:
    """[redis] url set: quotas shared in Redis (heartbeats from `start()`); else in this process.

    The one place that names a concrete store: everything else asks the `Store` protocol.
    """
    if not cfg.redis.url:
        return MemoryStore()
    store = RedisStore(cfg.redis, password=read_secret(cfg.redis.password_env))
    log.info("limiter: quotas shared in Redis at %s", cfg.redis.url)
    return store


JOURNAL_LOCK = "lock"


def hold_journal(directory: str) -> lock.Held:
    """The journal directory's lock, or JournalError (exit 73) naming the sidecar that holds it.

    Taken before the journal is opened: two sidecars on one journal would
    each deliver the other's events (issue 17: 60 sent, 61 received)."""
    try:
        os.makedirs(directory, exist_ok=True)
        return lock.acquire(os.path.join(directory, JOURNAL_LOCK), "journal directory")
    except lock.Locked as exc:
        raise JournalError(str(exc)) from None
    except OSError as exc:
        raise JournalError(f"journal directory {directory} is not writable ({exc.strerror}); "
                           "set [journal] dir to a writable directory or fix its owner") from None


def build(cfg: Config, metrics: Metrics, *, loop: asyncio.AbstractEventLoop, recover: bool, started: float,
          status: Callable[[], Status | None], health: Callable[[], Health]) -> Parts:
    """Every part, connected; `status`/`health` are what the API server answers with."""
    held = hold_journal(cfg.journal.dir)
    try:
        return _build(cfg, metrics, loop, recover, started, status, health, held)
    except BaseException:
        held.release()  # a start that failed lets a corrected one (or a test's next sidecar) in
        raise


def _build(cfg: Config, metrics: Metrics, loop: asyncio.AbstractEventLoop, recover: bool, started: float,
           status: Callable[[], Status | None], health: Callable[[], Health], held: lock.Held) -> Parts:
    specs = build_lanes(cfg)
    connectors = {name: spec.connector for name, spec in specs.items()}
    journal_health = JournalHealth(cfg.journal.dir, metrics, space=Space(cfg.journal.dir, reserve=True))
    journal = open_checked(cfg.journal.dir, synchronous=cfg.journal.synchronous, recover=recover,
                           metrics=metrics, health=journal_health, role="delivery")
    journal.refs_keep = cfg.journal.refs_keep_hours * 3600
    journal.give_back_free_pages()  # a journal from before auto_vacuum, if small enough to rewrite now
    # Ingest never checkpoints; the housekeeping tick does, off its path.
    ingest_journal = Journal.open(cfg.journal.dir, synchronous=cfg.journal.synchronous, checkpoints=False,
                                  health=journal_health, role="ingest")
    store = limiter_store(cfg)
    lanes = {name: Lane(spec.connector, journal, Limiter(name, spec.rule, store, quota_id=spec.quota_id), cfg.retry,
                        metrics, concurrency=spec.concurrency, breaker=cfg.breaker, paused=spec.paused)
             for name, spec in specs.items()}

    def wake(names: set[str]) -> None:
        for name in names:
            lanes[name].notify()

    def wake_from_ingest(names: set[str]) -> None:
        loop.call_soon_threadsafe(wake, names)

    ingest = Ingest(cfg.ingest, ingest_journal, connectors, metrics, on_written=wake_from_ingest)
    ingest.bind()
    house = Housekeeping(cfg, metrics, journal, ingest, lanes, store, journal_health, started=started)
    api = None
    if cfg.metrics.address:
        try:
            api = ApiServer(cfg.metrics.address, metrics.registry, status, health,
                            lambda lane, key: read_ref(cfg.journal.dir, lane, key),
                            readers=Readers(os.geteuid(), os.getegid()))
        except OSError as exc:
            ingest.stop()
            raise SidecarError(f"cannot serve metrics on {cfg.metrics.address} ({exc.strerror}); "
                               "is another sidecar running? set [metrics] address to another port, "
                               "or to \"\" to turn it off") from None
    return Parts(journal, ingest_journal, ingest, lanes, list(connectors.values()), store, house, api, held)
