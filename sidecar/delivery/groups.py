"""Which group of events a lane calls next.

    groups = Groups("notion", journal, connector, settler)
    claimed = groups.claim(now)        # a free group held for this worker, before it waits for a token
    picked = groups.pick(now, claimed) # (target, Send plan), or None; that group is now in a call
    groups.done(target)                # its call is over (or was not made)
    groups.block(target, not_before)   # backing off
    groups.waits(now)                  # seconds until each blocked group is free again

A group is every event waiting for one target (a page, a product, an
object). It is never in two calls at once, so per-target order holds with any
concurrency. Planning settles what needs no call on the way: duplicates
(Skip), dead ends (Dead), and a group that belongs to another (Moved) is
merged into it.

A Moved group is merged by name, not by moving its rows: `ref:KEY` becomes
an alias of `page:ID`, and the page's group is read with the alias's rows
(in ingest order, their `target` set to the page's in memory). A hot key
updated by `ref=` thousands of times a second then costs no row writes
before each call; moving them (`Journal.retarget`, 100 rows a transaction)
was half the event loop's CPU at 10,000 events/s (bench/footprint.py, py-spy).
After a restart the aliases are found again the same way: the ref group's
oldest row comes up among the heads first, is planned, and says Moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

from sidecar.connectors.base import Connector, Dead, Moved, Send, Skip, Wait
from sidecar.delivery.settle import Settler
from sidecar.journal.store import Event, Journal

FIRST_SCAN = 16  # the oldest ready rows looked at first: their group is almost always free
READY_SCAN = 512  # then a page of them, when those all belong to groups in a call or blocked
MAX_ALIASES = 10_000  # groups merged by name; past it the oldest is forgotten (and found again by its plan)


@dataclass
class _Context:
    """The journal as a connector's plan() may see it."""

    journal: Journal
    lane: str
    now: float

    def ref(self, key: str) -> str | None:
        return self.journal.ref(self.lane, key)

    def has_target(self, target: str) -> bool:
        return self.journal.has_target(self.lane, target)

    def dead_key(self, kind: str, key: str) -> str | None:
        return self.journal.dead_key(self.lane, kind, key)


class Groups:
    """One lane's groups: those in a call, those blocked until a time, and the pick of the next."""

    def __init__(self, lane: str, journal: Journal, connector: Connector[Any], settle: Settler) -> None:
        self.name = lane
        self.journal = journal
        self.connector = connector
        self.settle = settle
        self._inflight: set[str] = set()
        self._blocked: dict[str, float] = {}  # target -> not before (waits and backoffs)
        self._alias: dict[str, str] = {}  # a Moved group's target -> the group it belongs to
        self._sources: dict[str, list[str]] = {}  # ...and back: a group -> the targets merged into it

    def context(self, now: float) -> _Context:
        """What a connector's plan() may see of the journal at `now`."""
        return _Context(self.journal, self.name, now)

    def done(self, target: str) -> None:
        self._inflight.discard(target)

    def block(self, target: str, not_before: float) -> None:
        self._blocked[target] = not_before

    def waits(self, now: float) -> list[float]:
        """Seconds until each blocked group may be picked again (forgetting those already free)."""
        self._blocked = {t: until for t, until in self._blocked.items() if until > now}
        return [until - now for until in self._blocked.values()]

    def follow(self, refs: dict[str, str]) -> None:
        """Objects just created (key -> id): groups waiting for them move to their real targets."""
        for key, created in refs.items():
            for old, new in self.connector.retargets(key, created):
                if self.journal.retarget(self.name, old, new):
                    self._blocked.pop(old, None)

    def group(self, target: str) -> list[Event]:
        """A group's waiting events in ingest order, those of the groups merged into it included,
        their payloads parsed (every plan reads them: `Journal.group` parses the group at once)."""
        sources = self._sources.get(target)
        events = self.journal.group(self.name, target, also=sources or ())
        if sources:
            for event in events:
                event.target = target  # as if moved: plans, backoffs and dead letters name the group
        return events

    def merge(self, source: str, target: str) -> None:
        """`source`'s events belong to `target`'s group from now on (see the module's docstring)."""
        if self._alias.get(source) == target:
            return
        while len(self._alias) >= MAX_ALIASES:  # forget the oldest: its plan says Moved again if it is needed
            old = next(iter(self._alias))
            self._unalias(old)
        self._unalias(source)
        self._alias[source] = target
        self._sources.setdefault(target, []).append(source)

    def _unalias(self, source: str) -> None:
        target = self._alias.pop(source, None)
        if target is not None:
            rest = [s for s in self._sources.get(target, ()) if s != source]
            if rest:
                self._sources[target] = rest
            else:
                self._sources.pop(target, None)

    def claim(self, now: float) -> str | None:
        """A free group's target, held for this worker's next `pick` (so two workers never wait
        for tokens for one group), without reading or planning it: a query or two. None:
        nothing to do; "": a full page of blocked rows, for `pick` to look further."""
        for limit in (FIRST_SCAN, READY_SCAN):
            # A hot group's rows fill any page of heads: FIRST_SCAN rows, not 512 (ids and target
            # strings) a call, unless those few all belong to groups that cannot go now.
            heads = self.journal.ready_heads(self.name, now, limit)
            for _, target in heads:
                target = self._alias.get(target, target)
                if target not in self._inflight and self._blocked.get(target, 0) <= now:
                    self._inflight.add(target)
                    return target
            if len(heads) < limit:
                return None
        return ""

    def pick(self, now: float, claimed: str = "") -> tuple[str, Send[Any]] | None:
        """The next call to make, settling duplicates and dead ends on the way; the
        `claimed` group first."""
        seen: set[str] = set()
        if claimed:
            # The claimed group first, on its own: it almost always makes the call, and
            # the page of heads is read only if it does not.
            self._inflight.discard(claimed)
            if (picked := self._among([(0, claimed)], seen, now)) is not None:
                return picked
        heads = self.journal.ready_heads(self.name, now, READY_SCAN)
        full = len(heads) == READY_SCAN
        picked = self._among(heads, seen, now)
        if picked is None and full:
            # A full page of rows may all belong to a few blocked groups (a
            # hot page backing off): fall back to one row per group. Only
            # then: that query reads the whole backlog, and a lane paying it
            # on every call fell further behind the longer its backlog grew
            # (bench/soak.py after a 30 s SIGSTOP: it never caught up).
            picked = self._among(self.journal.ready_heads(self.name, now, per_target=True), seen, now)
        return picked

    def _among(self, heads: list[tuple[int, str]], seen: set[str], now: float) -> tuple[str, Send[Any]] | None:
        for _, target in heads:
            target = self._alias.get(target, target)
            if target in seen:
                continue
            seen.add(target)
            while True:
                if target in self._inflight or self._blocked.get(target, 0) > now:
                    break
                group = self.group(target)
                if not group:
                    break
                if group[0].not_before > now:  # an older event of this group is backing off
                    self._blocked[target] = group[0].not_before
                    break
                plan = self.connector.plan(group, self.context(now))
                match plan:
                    case Send():
                        self._inflight.add(target)
                        return target, plan
                    case Moved():
                        if plan.target == target:
                            break
                        # Merge into the group it belongs to, so one page's events
                        # are never in two groups (two orders, two backoffs).
                        self.merge(target, plan.target)
                        self._blocked.pop(plan.target, None)
                        target = plan.target
                        continue
                    case Wait():
                        self._blocked[target] = now + plan.seconds
                        break
                    case Skip():
                        self.settle.skipped(plan)
                    case Dead():
                        self.settle.dead(plan.events, plan.reason, None, plan.detail)
                    case _:
                        assert_never(plan)
                if not plan.events or len(plan.events) >= len(group):
                    break
                # Part of the group was settled: plan what is left of it now.
        return None
