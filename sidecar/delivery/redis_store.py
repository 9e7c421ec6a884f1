"""The limiter's Store in Redis: one quota shared by every sidecar that uses the same credential.

    store = RedisStore(RedisConfig(url="redis://10.0.0.5:6379/0"), password=read_secret("REDIS_PASSWORD"))
    limiter = Limiter("notion", rule, store, quota_id=token)
    store.start()          # heartbeats (`beat_forever`): liveness, and noticing Redis is back
    ...
    await store.aclose()   # stops the heartbeats, closes the connection

Why redis.asyncio rather than the blocking client in a thread: the lanes are
coroutines on one event loop, so a blocking call would stall every lane and
the watchdog, and a thread hop per reservation costs more than the call.
The async client with `socket_timeout` and `socket_connect_timeout` of
`[redis] timeout` (50 ms) bounds each call; it never retries on its own.

What Redis holds, per quota (keys never contain a credential, only a hash):

- `{prefix}:quota:{api}:{sha256(credential)[:16]}`, a hash: `tat` (GCRA),
  `rate` (only while backed off after a 429), `learned_rate`,
  `learned_burst` (what the API said), `calm_at` (until then a 429 does
  not halve the rate again);
- `...:alive`, a sorted set: each sidecar's id scored by the Redis time of
  its last call on that quota, trimmed to the last minute.

Both expire after `KEY_TTL_SECONDS` without use. Every operation is one
EVALSHA of `quota.lua` (the rule of `limiter.QuotaState.apply`, in Lua), atomic
and timed by Redis's `TIME`, so spacing is global whatever the hosts' clocks.

Redis away (refused, timeout, failover, a script error): the call falls back
at once to a bucket in this process at the last rate seen ÷ N, N being the
sidecars seen on that quota in the last minute (remembered from the last
answer). It logs once, counts the episode, shows `redis-away ÷N` in status,
and tries Redis again at most once a second (and from `beat_forever`),
going back to the shared quota on the first answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from importlib import resources

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.config import RedisConfig
from sidecar.delivery.limiter import BEAT, Grant, MemoryStore, Op, Rule

log = logging.getLogger("sidecar.limiter")

KEY_TTL_SECONDS = 600
ALIVE_SECONDS = 60       # a sidecar counts in N for this long after its last call
RETRY_SECONDS = 1.0      # while away, how often a lane's call tries Redis again
BEAT_SECONDS = 5.0


@functools.cache
def script_source() -> str:
    """The Lua script (quota.lua beside this module, package data in the wheel), read once."""
    return resources.files("sidecar.delivery").joinpath("quota.lua").read_text(encoding="utf-8")


AWAY_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class RedisStore:
    """Quotas in Redis, with a local bucket at rate ÷ N while Redis is away."""

    def __init__(self, cfg: RedisConfig, *, password: str | None = None, clock: Callable[[], float] = time.monotonic,
                 member: str | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.client = redis.Redis.from_url(
            cfg.url, password=password or None, socket_timeout=cfg.timeout, socket_connect_timeout=cfg.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.script = self.client.register_script(script_source())
        # Unique per process and start: a restarted sidecar is a new member, the old one ages out.
        self.member = member or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fallback = MemoryStore()
        self.away_since: float | None = None
        self.away_reason = ""
        self.episodes = 0                        # times Redis went away
        self.sharing: dict[str, int] = {}        # quota key -> sidecars seen in the last minute
        self.rates: dict[str, float] = {}        # quota key -> rate in force at the last answer
        self._rules: dict[str, Rule] = {}        # quotas to keep alive with beats
        self._next_try = 0.0
        self._beats: asyncio.Task[None] | None = None

    def _redis_keys(self, key: str) -> list[str]:
        base = f"{self.cfg.key_prefix}:quota:{key}"
        return [base, base + ":alive"]

    async def run(self, key: str, rule: Rule, now: float, op: Op) -> Grant:
        self._rules.setdefault(key, rule)
        if self.away_since is None or self.clock() >= self._next_try:
            try:
                return await self._shared(key, rule, op)
            except AWAY_ERRORS as exc:
                self._went_away(exc)
        # Alone: this sidecar's share of the last rate seen, in its own bucket.
        n = max(1, self.sharing.get(key, 1))
        alone = replace(rule, rate=self.rates.get(key, rule.rate) / n, burst=max(1.0, rule.burst / n))
        return self.fallback.apply(key, alone, now, op)

    async def _shared(self, key: str, rule: Rule, op: Op) -> Grant:
        told = op.told
        wait, rate, source, tokens, burst, n = await self.script(keys=self._redis_keys(key), args=[
            op.name, rule.rate, rule.burst, rule.min_fraction, rule.recovery_step, op.retry_after,
            told.rate, told.burst, told.remaining, self.member, KEY_TTL_SECONDS, ALIVE_SECONDS])
        if self.away_since is not None:
            log.warning("limiter: Redis is back after %.1f s; quotas are shared again", self.clock() - self.away_since)
            self.away_since = None
        grant = Grant(float(wait), float(rate), source.decode() if isinstance(source, bytes) else source,
                      float(tokens), float(burst))
        self.sharing[key] = int(n)
        self.rates[key] = grant.rate
        return grant

    def _went_away(self, exc: BaseException) -> None:
        self._next_try = self.clock() + RETRY_SECONDS
        if self.away_since is not None:
            return
        self.away_since = self.clock()
        self.away_reason = type(exc).__name__
        self.episodes += 1
        shares = ", ".join(f"{key.partition(':')[0]} ÷{n}" for key, n in self.sharing.items()) or "no quota seen yet"
        log.warning("limiter: Redis unreachable (%s); each lane goes on alone at its rate ÷ the sidecars "
                    "seen sharing it in the last minute (%s) until Redis answers again", self.away_reason, shares)

    def mode(self, key: str) -> str:
        if self.away_since is None:
            return "redis"
        return f"redis-away ÷{max(1, self.sharing.get(key, 1))}"

    def sidecars_sharing(self, key: str) -> int:
        return self.sharing.get(key, 1)

    def problem(self) -> str | None:
        if self.away_since is None:
            return None
        return (f"limiter: Redis unreachable for {self.clock() - self.away_since:.0f} s ({self.away_reason}); "
                "lanes go on alone at rate ÷ sidecars sharing")

    def start(self) -> None:
        """Start the heartbeats on the running event loop; `aclose` stops them."""
        self._beats = asyncio.create_task(self.beat_forever(), name="limiter-beats")

    async def beat_forever(self, interval: float = BEAT_SECONDS) -> None:
        """Say "alive" on every quota in use, so idle sidecars count in N; notice Redis coming back."""
        while True:
            await asyncio.sleep(interval if self.away_since is None else RETRY_SECONDS)
            for key, rule in list(self._rules.items()):
                try:
                    await self._shared(key, rule, Op(BEAT))
                except AWAY_ERRORS as exc:
                    self._went_away(exc)
                    break

    async def aclose(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            await asyncio.gather(self._beats, return_exceptions=True)
        await self.client.aclose()
