"""Secrets from systemd credentials or the environment, never from a file we own.

    token = read_secret("NOTION_TOKEN")   # $CREDENTIALS_DIRECTORY/NOTION_TOKEN, else $NOTION_TOKEN

Every secret read here is also registered with `redact`, which the log
formatter and the journal's error columns use, so that no token reaches a
log line or a dead letter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_known: set[str] = set()


MIN_REDACTED_LENGTH = 8  # shorter values would match ordinary words in every line


def read_secret(name: str, *, redacted: bool = True) -> str | None:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    value: str | None = None
    if creds:
        path = Path(creds) / name
        if path.is_file():
            value = path.read_text().strip()
    if not value:
        value = os.environ.get(name) or None
    if value and redacted and len(value) >= MIN_REDACTED_LENGTH:
        _known.add(value)
    return value


def redact(text: str) -> str:
    """Replace every known secret in `text` with a marker."""
    for secret in _known:
        if secret and secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text


def installed_file(name: str) -> str:
    """Where `systemd/install.sh` keeps the credential `name` (NOTION_TOKEN -> .../notion-token)."""
    return f"/etc/trading-sidecar/credentials/{name.lower().replace('_', '-')}"


def _copied_by_systemd(directory: str, environ: Mapping[str, str]) -> bool:
    # systemd's copy (LoadCredential=) lives in /run/credentials/UNIT or, for
    # a user service, $XDG_RUNTIME_DIR/credentials/UNIT, made when the service starts.
    return Path(directory).parent.name == "credentials" and "INVOCATION_ID" in environ


def how_to_provide(*names: str, environ: Mapping[str, str] = os.environ) -> str:
    """What will make the running sidecar read a secret it lacks or had refused, true for how it runs.

        >>> how_to_provide("NOTION_TOKEN", environ={})[:55]
        'set $NOTION_TOKEN and restart the sidecar (a running pr'
        >>> how_to_provide("NOTION_TOKEN", environ={"CREDENTIALS_DIRECTORY": "/srv/creds"})
        'write /srv/creds/NOTION_TOKEN, then `sidecar reload` (it reads that directory again)'

    A running process's environment cannot change, and systemd copies
    `LoadCredential=` files only when the service starts (not on reload):
    only a file in a $CREDENTIALS_DIRECTORY of our own (or an AWS shared
    credentials file) is read again by `sidecar reload`. With no names: a
    refused credential, whichever it is.
    """
    creds = environ.get("CREDENTIALS_DIRECTORY")
    if creds and _copied_by_systemd(creds, environ):
        where = " and ".join(f"{installed_file(n)} (LoadCredential={n}:)" for n in names)
        return (f"put it in {where or 'the file the unit names in LoadCredential='}, then `systemctl restart trading-sidecar`: "
                "systemd copies credentials only when the service starts, so `sidecar reload` would read the old "
                "copy; events wait in the journal meanwhile")
    if creds:
        where = " and ".join(f"{creds}/{n}" for n in names) or f"its file in {creds}"
        return f"write {where}, then `sidecar reload` (it reads that directory again)"
    if not names:
        return ("correct it where it was read from: a file (an AWS shared credentials file) is read again on "
                "`sidecar reload`; an environment variable needs a restart of the sidecar once set "
                "(a running process's environment cannot change)")
    variables = " and ".join("$" + n for n in names)
    return (f"set {variables} and restart the sidecar (a running process's environment cannot change), or run it "
            "with $CREDENTIALS_DIRECTORY naming a directory of files named after the variables, which "
            "`sidecar reload` reads again")
