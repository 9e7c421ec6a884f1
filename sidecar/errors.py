"""The sidecar's two error trees: delivery (what each branch means for the
lane) and start-up (which exit code the `sidecar` command returns).

    DeliveryError            something went wrong calling an API
    ├── Retryable            try again later (backoff, or `retry_after` if longer)
    │   └── RateLimited      429 / 529: slow the lane down as well
    ├── Permanent            400/403/404 and other refusals: dead-letter now
    └── CredentialsRefused   the API refused the credential itself (Notion 401,
                             Naver's token call 4xx, S3 InvalidAccessKeyId):
                             pause the lane, keep its events, probe again later

A RateLimited also carries `limit_reason` (which limit the API says was hit,
e.g. Notion's `additional_data.rate_limit_reason`, else its error code) and
`told`, what the API said about its quota on that answer, if anything.

`ambiguous` marks a failure after the request may have been applied (timeout,
reset, 5xx after the body was sent): a non-idempotent call is checked before
it is sent again. Each connector maps HTTP status and body codes here once.

    StartupError             a command cannot start; `exit_code` says why
    ├── ConfigError          (config.py) the file is missing, not TOML, or a setting is wrong
    ├── MissingExtra         a package of the extra the command needs is not installed
    └── CannotStart          the journal, the ingest socket or the metrics port cannot be used
        ├── JournalError     (journal.py)
        └── IngestError      (ingest.py)

`sidecar.cli.main` turns any of them into one line on stderr and its exit code.

Reasons for a hostile or broken API (`connectors/http.py` raises them):

    deadline            Retryable, ambiguous: no whole answer within the call's
                        timeout (a slow drip of bytes, a stall)
    response_too_large  Retryable, ambiguous: an answer over the size limit
    bad_response        Retryable, ambiguous: a 2xx that is not JSON or lacks
                        the fields we read; it was applied, we cannot tell how
    transport_error     Retryable, ambiguous: a connection reset, also mid-body
    redirect            Permanent: a 3xx is never followed (it would carry the
                        body elsewhere); the same request gets the same answer
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from sidecar.delivery.limiter import ApiQuota


class ExitCode(IntEnum):
    """What the `sidecar` command returns. 0-3 are documented per command
    (`sidecar check`'s are for monitors); the start-up failures follow sysexits.h."""

    OK = 0
    FAILED = 1  # check: running but degraded; run: ingest died; emit: event refused; dlq, refs: nothing found
    UNAVAILABLE = 2  # check, status: no sidecar answers; run, demo: the extra they need is not installed
    NOT_SENT = 3  # emit: no sidecar is listening, the event was not sent
    JOURNAL_CORRUPT = 4  # run --no-recover: the journal is corrupt; it was left untouched for a look
    USAGE = 64  # EX_USAGE: the command line is wrong
    CANNOT_START = 73  # EX_CANTCREAT: the journal, socket or metrics port cannot be used
    CONFIG = 78  # EX_CONFIG: the config file is missing, not TOML, or a setting is wrong


class StartupError(Exception):
    exit_code = ExitCode.CANNOT_START


class CannotStart(StartupError):
    pass


class MissingExtra(StartupError):
    """`extra`'s packages are not installed; the message says what to install."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, command: str, extra: str, missing: str | None, *, clone: str = "") -> None:
        hint = f"pip install 'trading-sidecar[{extra}]'" + (f" (from a clone: {clone})" if clone else "")
        super().__init__(f"{command} needs the [{extra}] extra ({(missing or 'a package').partition('.')[0]} is not installed): "
                         + hint)
        self.extra = extra


DEADLINE = "deadline"
RESPONSE_TOO_LARGE = "response_too_large"
BAD_RESPONSE = "bad_response"
REDIRECT = "redirect"


class DeliveryError(Exception):
    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        status: int | None = None,
        body: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
        limit_reason: str = "",
        told: ApiQuota | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.limit_reason = limit_reason
        self.told = told


class Retryable(DeliveryError):
    pass


class RateLimited(Retryable):
    pass


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
