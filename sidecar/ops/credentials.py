"""Secrets from systemd credentials or the environment, never from a file we own.

    token = read_secret("NOTION_TOKEN")   # $CREDENTIALS_DIRECTORY/NOTION_TOKEN, else $NOTION_TOKEN

Every secret read here is also registered with `redact`, which the log
formatter and the journal's error columns use, so that no token reaches a
log line or a dead letter.
"""

from __future__ import annotations

import os
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
