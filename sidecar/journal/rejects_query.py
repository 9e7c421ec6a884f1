"""The rejected frames the journal keeps, read-only, for `sidecar rejects`.

    counts, samples = read_rejects(journal_dir, reason=None, limit=20)
    counts["bad_payload"]   # (every frame rejected for it, of which not sampled)
    samples[0]              # {"id", "reason", "detail", "received_at", "frame"} newest first

Opened read-only (`mode=ro`): it never writes, so it is safe beside a
running sidecar, which keeps the sample bounded (rejects.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

FRAME_SHOWN = 300  # bytes of a kept frame worth printing


def read_rejects(journal_dir: str, *, reason: str | None = None,
                 limit: int = 20) -> tuple[dict[str, tuple[int, int]], list[dict[str, Any]]]:
    path = Path(journal_dir) / "journal.db"
    if not path.exists():
        raise FileNotFoundError(f"no journal at {path}: is [journal] dir right?")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        counts = {r: (t, u) for r, t, u in conn.execute(
            "SELECT reason, total, unsampled FROM reject_counts ORDER BY total DESC")}
        where, args = ("WHERE reason = ?", [reason]) if reason else ("", [])
        rows = conn.execute(f"SELECT id, reason, detail, received_at, substr(frame, 1, {FRAME_SHOWN}) FROM rejects "
                            f"{where} ORDER BY id DESC LIMIT ?", [*args, limit]).fetchall()
    samples = [{"id": i, "reason": r, "detail": d, "received_at": t,
                "frame": bytes(f).decode("utf-8", "replace") if f is not None else None}
               for i, r, d, t, f in rows]
    return counts, samples
