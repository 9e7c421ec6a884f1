"""Every exception the sidecar raises, in one place. Three families: delivery
(what each branch means for a lane), start-up (which exit code the `sidecar`
command returns) and the two a running sidecar handles itself.

    Exception
    ├── DeliveryError                something went wrong calling an API
    │   ├── Retryable                try again later (backoff, or `retry_after` if longer)
    │   │   └── RateLimited          429 / 529: slow the lane down as well
    │   ├── Permanent                400/403/404 and other refusals: dead-letter now
    │   └── CredentialsRefused       the API refused the credential itself (Notion 401,
    │       │                        Naver's token call 4xx, S3 InvalidAccessKeyId):
    │       │                        pause the lane, keep its events, probe again later
    │       └── EndpointNotFound     a 404 where an endpoint must be: a URL setting is wrong
    │                                (paused the same way; the fix is the setting and a restart)
    ├── StartupError                 a command cannot start; `exit_code` says why
    │   ├── ConfigError              (also a ValueError) the config file is missing, not TOML,
    │   │                            or a setting is wrong: exit 78
    │   ├── MissingExtra             a package of the extra the command needs is not installed: exit 2
    │   └── CannotStart              exit 73:
    │       ├── JournalError         the journal cannot be opened (directory, permissions, disk)
    │       │   ├── JournalCorrupt   it failed SQLite's own check (`journal.repair` sets it aside)
    │       │   └── JournalCorruptRefused   ...and `run --no-recover` said leave it: exit 4
    │       ├── IngestError          the ingest socket or ring directory cannot be used
    │       └── SidecarError         the metrics port cannot be served
    ├── JournalUnavailable           a journal write failed for a reason outside the sidecar
    │                                (disk full, read-only, I/O error): ingest waits and retries
    └── Reject (also a ValueError)   an event that can never be delivered as sent: counted
                                     and kept aside at ingest (`Connector.route` raises it)

Every DeliveryError has `reason` (a short word for metrics), `detail`, the
answer's `status` and `body` (cut short) when there was one, and `ambiguous`:
the failure came after the request may have been applied (timeout, reset, 5xx
after the body was sent), so a non-idempotent call is checked before it is
sent again. Each connector maps HTTP status and body codes here once
(`sidecar.connectors.http_calls.raise_for_status`).

Only what can ask for a wait carries `retry_after`: a `Retryable`, since a 503
may say how long the service will be down as well as a 429 (RFC 9110
§10.2.3), and the lane's backoff takes the longer of its own and the API's.
Only a `RateLimited` carries the rate-limit fields: `limit_reason` (which limit
the API says was hit, e.g. Notion's `additional_data.rate_limit_reason`, else
its error code) and `told`, what the API said about its quota on that answer.

`sidecar.cli.main` turns any StartupError into one line on stderr and its exit code.

Reasons for a hostile or broken API (`connectors/http_calls.py` raises them):

    deadline            Retryable, ambiguous: no whole answer within the call's
                        timeout (a slow drip of bytes, a stall)
    response_too_large  Retryable, ambiguous: an answer over the size limit
    bad_response        Retryable, ambiguous: a 2xx that is not JSON or lacks
                        the fields we read; it was applied, we cannot tell how
    transport_error     Retryable, ambiguous: a connection reset, also mid-body
    redirect            Permanent: a 3xx is never followed (it would carry the
                        body elsewhere); the same request gets the same answer

This module imports nothing of the sidecar at run time (`config.py` and
`cli.py` import it, and must work without the sidecar's extras); `ApiQuota`
is plain data from `sidecar.quota`, named here for the type checker only.
The client's own exceptions (`client.transport.QueueFull`/`TransportError`,
`client.EmitError`, `client.wire.WireError`, `client.ring.RingCorrupt`) live
in `client/`, which imports nothing from the sidecar.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.quota import ApiQuota


class ExitCode(IntEnum):
    """What the `sidecar` command returns, and when (`meaning`: `sidecar --help`
    lists them from here). 0-3 are documented per command (`sidecar check`'s are
    for monitors); the start-up failures follow sysexits.h.

        ExitCode.CONFIG.meaning   # "the config file is missing, not TOML, or has a wrong setting"
    """

    meaning: str

    def __new__(cls, value: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "done; check: healthy"
    FAILED = 1, ("check: degraded (says why); run: ingest failed while running; emit: event refused; "
                 "status, reload: not allowed to read its status (403) or signal it; dlq, refs: nothing found")
    UNAVAILABLE = 2, ("check, status, reload: no sidecar reachable; "
                      "run, demo: the extra they need is not installed")
    NOT_SENT = 3, "emit: no sidecar listening, the event was not sent"
    JOURNAL_CORRUPT = 4, "run --no-recover: the journal is corrupt and was left as it is"
    USAGE = 64, "the command line is wrong"  # EX_USAGE
    CANNOT_START = 73, "run: the journal, the ingest socket or the metrics port cannot be used"  # EX_CANTCREAT
    CONFIG = 78, "the config file is missing, not TOML, or has a wrong setting"  # EX_CONFIG


# -- start-up ----------------------------------------------------------------


class StartupError(Exception):
    exit_code = ExitCode.CANNOT_START


class ConfigError(StartupError, ValueError):
    exit_code = ExitCode.CONFIG


class MissingExtra(StartupError):
    """`extra`'s packages are not installed; the message says what to install."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, command: str, extra: str, missing: str | None, *, clone: str = "") -> None:
        hint = f"pip install 'trading-sidecar[{extra}]'" + (f" (from a clone: {clone})" if clone else "")
        super().__init__(f"{command} needs the [{extra}] extra ({(missing or 'a package').partition('.')[0]} is not installed): "
                         + hint)
        self.extra = extra


class CannotStart(StartupError):
    pass


class JournalError(CannotStart):
    pass


class JournalCorrupt(JournalError):
    """The journal file failed SQLite's own check (or is not a database at all).

    `journal.repair` sets it aside and starts afresh; `detail` is SQLite's word."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"journal {path} is corrupt: {detail}")
        self.path = path
        self.detail = detail


class JournalCorruptRefused(JournalError):
    """The journal is corrupt and `--no-recover` asked not to touch it."""

    exit_code = ExitCode.JOURNAL_CORRUPT


class IngestError(CannotStart):
    pass


class SidecarError(CannotStart):
    pass


# -- inside a running sidecar --------------------------------------------------


class JournalUnavailable(Exception):
    """A journal write failed for a reason outside the sidecar (`state`): retry later."""

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(f"journal {state}: {detail}")
        self.state = state


class Reject(ValueError):
    """An event that can never be delivered as sent: counted and kept aside at ingest."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- delivery ----------------------------------------------------------------

DEADLINE = "deadline"
RESPONSE_TOO_LARGE = "response_too_large"
BAD_RESPONSE = "bad_response"
REDIRECT = "redirect"


class DeliveryError(Exception):
    """A failed call: `reason` for metrics, and the answer if there was one.

        raise Permanent("http_404", "object_not_found", status=404, body=response.text)
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        status: int | None = None,
        body: str | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.body = body
        self.ambiguous = ambiguous


class Retryable(DeliveryError):
    """Try again later; not before `retry_after` seconds if the API said so.

        raise Retryable("http_503", "unavailable", status=503, retry_after=2.0, ambiguous=True)
    """

    def __init__(self, reason: str, detail: str = "", *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(reason, detail, **kwargs)
        self.retry_after = retry_after


class RateLimited(Retryable):
    """The API said slow down: the lane's limiter backs off as well as the events waiting.

        raise RateLimited("http_429", "rate_limited", status=429, retry_after=1.0,
                          limit_reason="integration_rate_limit", told=ApiQuota(rate=1.0))
    """

    def __init__(self, reason: str, detail: str = "", *, limit_reason: str = "", told: ApiQuota | None = None,
                 **kwargs: Any) -> None:
        super().__init__(reason, detail, **kwargs)
        self.limit_reason = limit_reason
        self.told = told


class Permanent(DeliveryError):
    pass


class CredentialsRefused(DeliveryError):
    """The credential is wrong, expired or revoked: no call can succeed until it changes.

        raise CredentialsRefused("Notion", "unauthorized", status=401, body=response.text)

    Not the events' fault: the lane keeps them, pauses with `paused_reason`
    and tries again when the credential is re-read (`sidecar reload`) or
    after `[retry] credentials_probe_seconds`. `api` names the service for
    people; the message never holds the credential.
    """

    def __init__(self, api: str, detail: str = "", **kwargs: Any) -> None:
        super().__init__("credentials_refused", detail, **kwargs)
        self.api = api

    @property
    def pause_reason(self) -> str:
        return f"credentials refused by {self.api}"


class EndpointNotFound(CredentialsRefused):
    """The API answered 404 where an endpoint must be: a URL setting is wrong, not the credential.

        raise EndpointNotFound("Naver", "https://api.commerce.naver.com/v1/oauth2/token", "[naver] base_url")

    Handled as a refused credential (the lane pauses, its events wait in the
    journal, one call is tried every probe), but it names the URL and the
    setting to fix; the fix takes a restart.
    """

    def __init__(self, api: str, url: str, setting: str, **kwargs: Any) -> None:
        DeliveryError.__init__(self, "endpoint_not_found", f"HTTP 404 at {url}: is {setting} right?", **kwargs)
        self.api = api
        self.url = url
        self.setting = setting

    @property
    def pause_reason(self) -> str:
        return f"{self.api} has no endpoint at {self.url}: check {self.setting}"
