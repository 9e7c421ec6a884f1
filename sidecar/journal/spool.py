"""The blob spool: binary frames kept as files beside the journal, one a blob.

    spool = Spool("/var/lib/trading-sidecar")     # files in <journal dir>/blobs
    path = spool.put(jpeg_bytes)                   # written and fsynced before the row commits
    spool.read(path) == jpeg_bytes
    spool.sha256(path)                             # from the name, without reading the file
    spool.remove([path])                           # once delivered or purged
    path = spool.adopt("/var/lib/trading-sidecar.inbox/c1.7.0.blob")   # a producer's file: linked, not read whole
    with spool.open(path) as f: ...                # stream it (an S3 upload), never held whole in memory

A file is named `<hex sha256>.<time_ns>`: the hash is known without reading
the body again (S3 signs with it), and the suffix keeps two events with the
same body apart, so deleting one never takes the other's file. Rows store the
path itself, so any Spool (or process, like `sidecar dlq purge`) can read and
remove what another wrote.

`adopt` takes a file a producer left in the blob inbox (sidecar.ingest.inbox):
it is hashed in CHUNK pieces (memory stays bounded whatever its size), then
hard-linked into the spool (no copy) when it has no other name, else copied
(a Path the producer linked: its original name could still change it; a
copy fixes what was journaled), and fsynced before the row commits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20                    # a blob is hashed and copied this much at a time


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

    def adopt(self, src: str, *, copy: bool = False) -> str:
        """Journal an inbox file: hashed in chunks, linked (or with `copy`, or across
        filesystems, copied), fsynced; returns the spool path. Raises OSError."""
        with open(src, "rb", buffering=0) as f:
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
            path = os.path.join(self.dir, f"{digest.hexdigest()}.{time.time_ns()}")
            try:
                if not copy:
                    try:
                        os.link(src, path, follow_symlinks=False)
                    except OSError:
                        copy = True  # another filesystem, or protected_hardlinks for a non-root sidecar
                if copy:
                    f.seek(0)
                    with open(path, "xb") as out:
                        shutil.copyfileobj(f, out, CHUNK)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                self.remove([path])
                raise
        return path

    @staticmethod
    def open(path: str) -> BinaryIO:
        """The spooled blob, to read in pieces (`CHUNK`)."""
        return open(path, "rb", buffering=0)

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
