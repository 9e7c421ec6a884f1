"""The blob spool: binary frames kept as files beside the journal, one a blob.

    spool = Spool("/var/lib/trading-sidecar")     # files in <journal dir>/blobs
    path = spool.put(jpeg_bytes)                   # written and fsynced before the row commits
    spool.read(path) == jpeg_bytes
    spool.sha256(path)                             # from the name, without reading the file
    spool.remove([path])                           # once delivered or purged

A file is named `<hex sha256>.<time_ns>`: the hash is known without reading
the body again (S3 signs with it), and the suffix keeps two events with the
same body apart, so deleting one never takes the other's file. Rows store the
path itself, so any Spool (or process, like `sidecar dlq purge`) can read and
remove what another wrote.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path


class Spool:
    def __init__(self, journal_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(journal_dir) / "blobs"

    def create(self) -> None:
        """Make the directory if needed (0700 whatever the umask: blobs are nobody
        else's to read); raises OSError if it cannot."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.dir.stat().st_mode & 0o077:
            os.chmod(self.dir, 0o700)

    def put(self, blob: bytes) -> str:
        """Write a blob durably; returns the path the event row refers to."""
        path = os.path.join(self.dir, f"{hashlib.sha256(blob).hexdigest()}.{time.time_ns()}")
        try:
            # 0600 from the start: open()'s 0666 less a umask of 022 would let every user read it.
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.remove([path])  # a full disk must not leave half a file behind
            raise
        return path

    @staticmethod
    def read(path: str) -> bytes:
        return Path(path).read_bytes()

    @staticmethod
    def sha256(path: str) -> str:
        """Hex SHA-256 of the blob as it was received, from the file's name."""
        return Path(path).name.split(".")[0]

    @staticmethod
    def remove(paths: Iterable[str]) -> None:
        """Delete spooled files; one already gone is not an error (a retried purge)."""
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
