"""Rate limiting: the rule (rate, burst, how to react to a 429, what the API
says its quota is) apart from where the quota's state lives, so that several
sidecars can share one quota (`sidecar.delivery.redis_store.RedisStore`).

    limiter = Limiter("notion", Rule(rate=3, burst=1), MemoryStore(), quota_id=token)
    wait = await limiter.reserve(now)                  # seconds to sleep before the call
    await limiter.on_rate_limited(2.0, None, now)      # a 429 with Retry-After: 2
    await limiter.on_success(ApiQuota(rate=1.0, burst=1.0, remaining=0.0), now)  # the API told its quota
    limiter.view()   # {"rate_per_second": 1.0, "rate_source": "learned", "store": "memory", "tokens": 0.0}

The state of a quota (`QuotaState`) is a GCRA: `tat`, the time at which the
bucket would be full again. A reservation moves it 1/rate later and waits
until `tat - burst/rate`, so reservations made back to back are spaced
1/rate apart after the burst, whoever makes them. A reservation whose call
is then not made (the lane found nothing left to send) is not given back:
the slot is lost, which can only keep the lane under its quota, and it is
counted (`Limiter.unused`, metric `sidecar_limiter_reservations_unused_total`).

On a 429 the quota pauses for at least Retry-After and its rate halves
(never below `min_fraction` of the configured rate), once per pause however
many calls in flight come back 429; each success wins back `recovery_step`
of the configured rate. An API that states its quota (Naver's
`GNCP-GW-RateLimit-*` headers) sets the ceiling: the configured rate and
burst are the starting point and the upper bound. `rate_source` says which
is in force: `configured`, `learned` or `backed off`.

`QuotaState.apply` is the rule; `quota.lua`, which `redis_store.RedisStore`
runs, is the same rule in Lua, run atomically inside Redis on Redis's clock.
Keep them in step (the tests run one table of cases against both).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, TypedDict

from sidecar.quota import NONE, ApiQuota

CONFIGURED, LEARNED, BACKED_OFF = "configured", "learned", "backed off"
RESERVE, SUCCESS, LIMITED, BEAT = "reserve", "success", "limited", "beat"


class LimiterView(TypedDict):
    """`Limiter.view`: the fields of a lane's status that the limiter knows."""

    rate_per_second: float
    rate_source: str
    store: str
    tokens: float


@dataclass(frozen=True, kw_only=True)
class Rule:
    rate: float            # requests per second allowed on average
    burst: float = 1.0     # requests allowed back to back after a quiet spell
    min_fraction: float = 0.1
    recovery_step: float = 0.02  # fraction of `rate` regained per success


@dataclass(frozen=True)
class Op:
    """One operation on a quota: reserve a slot, report a success or a 429, or just say "alive"."""

    name: str
    retry_after: float = NONE
    told: ApiQuota = ApiQuota()


@dataclass(frozen=True)
class Grant:
    """A store's answer: the wait for a reservation (0 otherwise) and the quota as it now stands."""

    wait: float
    rate: float
    source: str
    tokens: float          # after this op (negative: reservations queued)
    burst: float = 1.0     # the burst in force


def quota_key(api: str, credential: str) -> str:
    """The name of a quota: the API and a hash of the credential it belongs to, never the credential.

        quota_key("notion", "secret_abc")   # "notion:5d4b3c..." (16 hex digits)
    """
    return f"{api}:{hashlib.sha256(credential.encode()).hexdigest()[:16]}"


@dataclass
class QuotaState:
    """One quota's state; `apply` is the whole rule (mirrored in quota.lua)."""

    tat: float | None = None
    rate: float | None = None           # set only while backed off below the ceiling
    learned_rate: float | None = None
    learned_burst: float | None = None
    calm_at: float = 0.0                # a 429 before this time does not halve the rate again

    def apply(self, rule: Rule, now: float, op: Op) -> Grant:
        told = op.told
        if op.name in (SUCCESS, LIMITED):
            if told.rate > 0:
                self.learned_rate = told.rate
            if told.burst >= 1:
                self.learned_burst = told.burst
        ceiling = rule.rate if self.learned_rate is None else min(rule.rate, self.learned_rate)
        burst = rule.burst if self.learned_burst is None else max(1.0, min(rule.burst, self.learned_burst))
        rate = ceiling if self.rate is None else min(self.rate, ceiling)
        tat = now if self.tat is None else self.tat
        wait = 0.0
        if op.name == RESERVE:
            # A debt beyond the burst is waited out. (Written as a difference of
            # nearby times, so it is exactly 0 when the bucket has a token.)
            wait = max(0.0, max(tat, now) - now + (1 - burst) / rate)
            tat = max(tat, now) + 1 / rate
        elif op.name == SUCCESS:
            if rate < ceiling:
                rate = min(ceiling, rate + rule.rate * rule.recovery_step)
        elif op.name == LIMITED:
            pause = op.retry_after
            if now >= self.calm_at:
                # Calls in flight when the first 429 came (from any sidecar) come
                # back 429 too: one halving per pause, not one per answer.
                rate = min(ceiling, max(rule.rate * rule.min_fraction, rate / 2))
                self.calm_at = now + max(1.0, pause if pause >= 0 else 1 / rate)
            if pause < 0:
                pause = 1 / rate
            # The first slot after the pause is at now + pause, then 1/rate apart.
            tat = max(tat, now + pause + (burst - 1) / rate)
        if op.name in (SUCCESS, LIMITED) and told.remaining >= 0:
            # Never fuller than the API says its own bucket is.
            tat = max(tat, now + (burst - told.remaining) / rate)
        self.tat = tat
        self.rate = rate if rate < ceiling else None
        return Grant(wait, rate, _source(rule, self.learned_rate, rate, ceiling),
                     min(burst, burst - (tat - now) * rate), burst)


def _source(rule: Rule, learned: float | None, rate: float, ceiling: float) -> str:
    if rate < ceiling:
        return BACKED_OFF
    return LEARNED if learned is not None and learned <= rule.rate else CONFIGURED


class Store(Protocol):
    """Where quotas live. `run` applies one Op atomically and says where the quota stands.

        store.start()                  # on the running loop: background work (Redis's heartbeats)
        grant = await store.run(key, rule, now, Op(RESERVE))
        store.problem()                # None, or one line for /health while the store is degraded
        await store.aclose()
    """

    episodes: int  # times a shared store went away (its lanes fell back to a local bucket)

    async def run(self, key: str, rule: Rule, now: float, op: Op) -> Grant: ...

    def mode(self, key: str) -> str:
        """memory, redis, or "redis-away ÷N" while the shared store cannot be reached."""
        ...

    def sidecars_sharing(self, key: str) -> int:
        """Sidecars seen sharing the quota `key` (1: this one alone)."""
        ...

    def problem(self) -> str | None:
        """Why the store is not working as configured, in one line; None when it is."""
        ...

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Quotas in this process (one sidecar per quota)."""

    def __init__(self) -> None:
        self._state: dict[str, QuotaState] = {}
        self.episodes = 0  # never away

    async def run(self, key: str, rule: Rule, now: float, op: Op) -> Grant:
        return self.apply(key, rule, now, op)

    def apply(self, key: str, rule: Rule, now: float, op: Op) -> Grant:
        """`run` without the await, for callers off the event loop and for tests."""
        return self._state.setdefault(key, QuotaState()).apply(rule, now, op)

    def mode(self, key: str) -> str:
        return "memory"

    def sidecars_sharing(self, key: str) -> int:
        return 1

    def problem(self) -> str | None:
        return None

    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class Limiter:
    """One lane's limiter: a Rule, a Store, the quota's key, and the last answer for status."""

    def __init__(self, name: str, rule: Rule, store: Store, *, quota_id: str = "") -> None:
        self.name = name
        self.rule = rule
        self.store = store
        # Lanes of one API (webhook.a, webhook.b) share a quota only if they share the credential.
        self.key = quota_key(name.partition(".")[0], quota_id or name)
        self.last = Grant(0.0, rule.rate, CONFIGURED, rule.burst, rule.burst)
        self._at = 0.0  # when `last` was answered, on the lane's clock
        self.unused = 0      # reservations whose call was not made (not given back)

    @property
    def rate(self) -> float:
        return self.last.rate

    def set_rule(self, rule: Rule) -> None:
        """A reload's rate and burst: the next reservation follows them (the store's state is kept).

        Status shows the new rate at once while the configured one is in force."""
        self.rule = rule
        if self.last.source == CONFIGURED:
            self.last = Grant(self.last.wait, rule.rate, CONFIGURED, min(self.last.tokens, rule.burst), rule.burst)

    async def _run(self, now: float, op: Op) -> Grant:
        self.last = await self.store.run(self.key, self.rule, now, op)
        self._at = now
        return self.last

    def tokens(self, now: float) -> float:
        """Tokens in the bucket at `now`, as of the last answer (other sidecars may have taken some)."""
        return min(self.last.burst, self.last.tokens + max(0.0, now - self._at) * self.last.rate)

    async def reserve(self, now: float) -> float:
        """Take a slot; return the seconds to wait before using it."""
        return (await self._run(now, Op(RESERVE))).wait

    def not_used(self) -> None:
        """The slot of the last reservation goes unused (nothing left to send)."""
        self.unused += 1

    async def on_success(self, told: ApiQuota | None, now: float) -> None:
        # Only a lane backed off, or an API that states its quota, has anything to record.
        if told is not None or self.last.source == BACKED_OFF:
            await self._run(now, Op(SUCCESS, told=told or ApiQuota()))

    async def on_rate_limited(self, retry_after: float | None, told: ApiQuota | None, now: float) -> None:
        await self._run(now, Op(LIMITED, NONE if retry_after is None else retry_after, told or ApiQuota()))

    def view(self, now: float) -> LimiterView:
        """The rate in force, where it came from, where the quota lives, and the tokens at `now`."""
        return {"rate_per_second": round(self.last.rate, 3), "rate_source": self.last.source,
                "store": self.store.mode(self.key), "tokens": round(self.tokens(now), 2)}
