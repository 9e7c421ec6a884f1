"""Why a lane makes no calls, and when it may try again.

    pause = Pause(probe_seconds=60.0, held="no Notion token")   # held from the start
    pause.reason                        # "no Notion token"
    pause.resume()                      # the gate opens: the lane's workers call again
    pause.refuse("credentials refused by Notion", now)   # True the first time
    pause.next_probe(now)               # 0.0: probe now (the next is due in 60 s); else seconds to wait
    pause.accepted()                    # a call succeeded: True if that ended a refusal

Two kinds. Held (`hold(reason)`, say no credential at start): no calls at
all until `resume()`, or until a reload finds the credential changed.
Refused (the API refused the credential): one worker probes every
`probe_seconds`, or at once after a reload (SIGHUP, `sidecar reload`), and
the first call that succeeds ends it.
"""

from __future__ import annotations

import asyncio


class Pause:
    """A lane's pause state; the lane waits on `gate`, set while it is not held."""

    def __init__(self, probe_seconds: float, *, held: str | None = None) -> None:
        self.probe_seconds = probe_seconds
        self.held = held
        self.refused: str | None = None  # why the credential was refused; the lane probes meanwhile
        self.probe_at = 0.0  # when a refused lane may make its next call
        self.reloads = 0  # credential reloads so far: a refusal of a call made before the last one is stale
        self.gate = asyncio.Event()
        if held is None:
            self.gate.set()

    @property
    def reason(self) -> str | None:
        """Why the lane makes no calls; None when it calls."""
        return self.refused or self.held

    def hold(self, reason: str) -> None:
        self.held = reason
        self.gate.clear()

    def resume(self) -> None:
        self.held = None
        self.gate.set()

    def reloaded(self, changed: bool) -> bool:
        """The credential was read again; True if the lane should wake (probe now, or resume)."""
        self.reloads += 1
        if self.refused is not None:
            self.probe_at = 0.0
            return True
        if changed and self.held is not None:
            self.resume()  # held for want of a credential, which is there now
            return True
        return False

    def refuse(self, reason: str, now: float, *, retry_now: bool = False) -> bool:
        """The API refused the credential; True if this starts the pause (log it once, not once per probe)."""
        self.probe_at = now + (0.0 if retry_now else self.probe_seconds)
        first = self.refused is None
        self.refused = reason
        return first

    def next_probe(self, now: float) -> float:
        """Seconds until a refused lane may call; 0.0 means call now (and the next probe is scheduled)."""
        if now < self.probe_at:
            return self.probe_at - now
        self.probe_at = now + self.probe_seconds  # this worker probes; the others wait for its outcome
        return 0.0

    def accepted(self) -> bool:
        """A call succeeded; True if that ends a refusal."""
        ended = self.refused is not None
        self.refused = None
        return ended
