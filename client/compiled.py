"""Which emit path runs: the C extension `client._fastemit` when it was built,
else the pure-Python one. Chosen once, at import, and logged once.

    from client.compiled import fastemit      # the module, or None
    SIDECAR_PURE_PYTHON=1 python app.py       # force the pure-Python path (tests run both)

The extension is optional at install (setup.py): a machine without a C
compiler gets the pure path, which stays complete and tested; the compiled
one only takes emit's common case and hands every other to it.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger("client")

PURE_ENV = "SIDECAR_PURE_PYTHON"


def _choose() -> tuple[ModuleType | None, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"pure-Python emit ({PURE_ENV} is set)"
    try:
        from client import _fastemit  # type: ignore[attr-defined]
    except ImportError:
        return None, "pure-Python emit (client._fastemit is not built: no C compiler at install?)"
    return _fastemit, "compiled emit (client._fastemit)"


fastemit, PATH = _choose()
log.info("client: %s", PATH)
