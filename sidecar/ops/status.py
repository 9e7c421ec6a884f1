"""The status snapshot: one typed shape, built by the app, served as JSON, rendered by the CLI.

    status = Status(time=..., uptime_seconds=..., ingest=IngestStatus(...), ...)   # Housekeeping.refresh
    body = orjson.dumps(status.to_dict())                                           # GET /status
    status = Status.from_dict(orjson.loads(body))                                   # `sidecar status`

The JSON keys are the field names; `from_dict` ignores keys it does not know,
so a CLI older than the sidecar it asks still reads what it knows.

A lane is `running`, `paused` (it cannot call and events wait for it: a
problem) or `off` (not configured, say no credentials, and nothing waits for
it: one short line, never a problem).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

LaneState = Literal["running", "paused", "off"]
MAX_RINGS_LISTED = 50   # a status of 2,000 rings would be megabytes; the count says how many there are

_T = TypeVar("_T")


def _known(cls: type[_T], d: dict[str, Any], **nested: Any) -> _T:
    """`cls` from the keys of `d` it has a field for; `nested` replaces values already converted."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names and k not in nested}, **nested)


@dataclass(frozen=True, kw_only=True)
class LaneStatus:
    state: LaneState
    depth: int                     # events waiting in the journal
    rate_per_second: float         # the rate in force
    rate_source: str               # configured, learned or backed off
    store: str                     # where the quota lives: memory, redis, redis-away ÷N
    tokens: float
    sidecars_sharing: int          # sidecars sharing the quota in Redis (1 alone)
    configured_rate: float
    breaker: str                   # closed, open or half-open
    paused: str | None             # why the lane makes no calls (off or paused); None when running
    delivered: int
    # Its recent calls ([health] recent_calls, recent_seconds) and how many of them the API refused or
    # were dead-lettered: mostly failing makes check degraded (delivery/outcomes.py).
    recent_calls: int = 0
    recent_failed: int = 0


@dataclass(frozen=True, kw_only=True)
class IngestStatus:
    endpoint: str
    alive: bool
    received: int
    rejected: int
    sequence_gaps: int
    ring_shm_bytes: int = 0        # shared memory the producers' rings hold (tmpfs pages)


@dataclass(frozen=True, kw_only=True)
class RingStatus:
    """One producer's ring as ingest reads it (`sidecar status` lists them)."""

    name: str                      # the file in the ring directory
    client_id: str                 # from the ring's header (its name agrees)
    pid: int                       # the producer's, as its header says
    uid: int                       # the file's owner: the producer's user
    version: int                   # ring format
    backlog_bytes: int             # written but not yet journaled, as far as the producer last said (at least)
    age_seconds: float             # since the producer made it
    idle_seconds: float | None     # since a record was last read from it; None: none since adoption


@dataclass(frozen=True, kw_only=True)
class JournalStatus:
    path: str
    bytes: int
    pending: int
    dead_letters: int
    state: str                     # journal_health: ok, disk full, read-only...


@dataclass(frozen=True, kw_only=True)
class ProcessStatus:
    pid: int
    cpu_seconds: float
    rss_bytes: int
    open_fds: int
    threads: int
    cpu_affinity: tuple[int, ...] | None  # None where the platform cannot tell
    nice: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessStatus:
        cpus = d.get("cpu_affinity")
        return _known(cls, d, cpu_affinity=None if cpus is None else tuple(cpus))


@dataclass(frozen=True, kw_only=True)
class Health:
    """What /health answers and `sidecar check` exits by: ok, or the problems in one line each."""

    ok: bool
    problems: tuple[str, ...] = ()

    @classmethod
    def of(cls, problems: list[str] | tuple[str, ...]) -> Health:
        return cls(ok=not problems, problems=tuple(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Health:
        return cls(ok=bool(d.get("ok")), problems=tuple(d.get("problems") or ()))


STARTING = Health.of(["starting"])


@dataclass(frozen=True, kw_only=True)
class Status:
    time: float
    uptime_seconds: float
    ingest: IngestStatus
    journal: JournalStatus
    lanes: dict[str, LaneStatus]
    process: ProcessStatus
    health: Health
    restart_needed: tuple[str, ...] = ()   # settings changed in the file that a reload could not apply
    reload_refused: str | None = None      # why the last reload kept the running configuration
    rings: tuple[RingStatus, ...] = ()     # at most MAX_RINGS_LISTED, largest backlog first
    rings_total: int = 0                   # how many ingest reads (the list may be cut)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Status:
        return _known(cls, d, ingest=_known(IngestStatus, d["ingest"]), journal=_known(JournalStatus, d["journal"]),
                      lanes={name: _known(LaneStatus, lane) for name, lane in d["lanes"].items()},
                      process=ProcessStatus.from_dict(d["process"]), health=Health.from_dict(d["health"]),
                      restart_needed=tuple(d.get("restart_needed") or ()),
                      rings=tuple(_known(RingStatus, r) for r in d.get("rings") or ()))
