"""Logging set-up: plain or JSON lines, with every known secret redacted.

    setup_logging(json_lines=False, level="INFO")

A text line is one line, whatever a message carries: client ids, keys, file
names and API error bodies come from outside, and one holding a newline
must not forge a line of its own. So the formatter escapes control
characters in the message (a newline as ``\\n``), in this one place rather
than at each call site; a traceback keeps its own lines (it is ours). JSON
lines need nothing more: orjson escapes them.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

from sidecar.ops.credentials import redact

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")  # what a terminal or a log reader may take as a break


def escape_controls(text: str) -> str:
    """`text` on one line: each control character as its Python escape.

    >>> escape_controls("c1\\n2024-01-01 INFO forged")
    'c1\\\\n2024-01-01 INFO forged'
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class RedactingFormatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        if self.json_lines:
            doc = {
                "ts": round(record.created, 6),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
            if record.exc_info:
                doc["exc"] = self.formatException(record.exc_info)
            text = orjson.dumps(doc).decode()
        else:
            text = self._one_line(record)
        return redact(text)

    def _one_line(self, record: logging.LogRecord) -> str:
        """The standard format, with the message's control characters escaped (module docstring)."""
        message = record.getMessage()
        if _CONTROL.search(message) is None:
            return super().format(record)
        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = escape_controls(message), None
        return super().format(clean)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"


def setup_logging(*, json_lines: bool = False, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(json_lines))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much
