"""Untrusted strings cannot forge a line of the text log (issue 17, item 7)."""

from __future__ import annotations

import logging

import orjson

from sidecar.ops.logs import RedactingFormatter


def formatted(json_lines: bool, msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("sidecar.ingest", logging.WARNING, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys
            record.exc_info = sys.exc_info()
    return RedactingFormatter(json_lines).format(record)


def test_a_client_id_with_a_newline_stays_on_its_line() -> None:
    forged = "c1\n2024-01-01T00:00:00.000 ERROR sidecar: journal corrupt\r\x1b[2J"
    text = formatted(False, "client %s: %d event(s) lost", forged, 3)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "c1\\n2024-01-01T00:00:00.000 ERROR sidecar: journal corrupt\\r\\x1b[2J" in text


def test_a_traceback_keeps_its_lines_and_json_lines_stay_json() -> None:
    text = formatted(False, "failed for %s", "a\nb", exc=True)
    first, *rest = text.split("\n")
    assert first.endswith("failed for a\\nb") and rest[0].startswith("Traceback")
    doc = orjson.loads(formatted(True, "client %s", "a\nb"))
    assert doc["msg"] == "client a\nb"  # JSON escapes it itself


def test_plain_messages_are_untouched() -> None:
    assert formatted(False, "rejected %d frame(s) as %s", 3, "bad_json").endswith(
        "WARNING sidecar.ingest: rejected 3 frame(s) as bad_json")
