"""The blob spool: binary frames kept as files beside the journal, one a blob.

    spool = Spool("/var/lib/trading-sidecar")     # files in <journal dir>/blobs
    path = spool.put(jpeg_bytes)                   # written and fsynced before the row commits
    spool.read(path) == jpeg_bytes
    spool.sha256(path)                             # from the name, without reading the file
    spool.remove([path])                           # once delivered or purged
    path = spool.adopt(ref.fd, ref.size)           # a producer's inbox file, by the fd it was checked by
    with spool.open(path) as f: ...                # stream it (an S3 upload), never held whole in memory
    spool.remove_leftovers()                       # half-made copies a crash left (create() does it too)

A file is named `<hex sha256>.<time_ns>`: the hash is known without reading
the body again (S3 signs with it), and the suffix keeps two events with the
same body apart, so deleting one never takes the other's file. Rows store the
path itself, so any Spool (or process, like `sidecar dlq purge`) can read and
remove what another wrote.

`adopt` takes a file a producer left in the blob inbox (sidecar.ingest.inbox)
through the fd the inbox opened and checked (O_NOFOLLOW, a regular file of
the ring's owner, at most the size limit): never by its path again, never
hard-linked (a path can be swapped for a symlink to a secret or a FIFO after
the check; a link by path is the same race). It is copied and hashed in
CHUNK pieces in one pass (memory bounded whatever its size), exactly the
size seen at the check: a file that grew or shrank since is refused as
``blob_changed`` (nor is a file ftruncated to a TiB read for minutes). The
copy is 0600 and fsynced before the row commits.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from sidecar.errors import Reject

CHUNK = 1 << 20                    # a blob is hashed and copied this much at a time
LEFTOVER_SECONDS = 3600.0          # an `.adopt.*.tmp` this old is a crash's leftover (a copy takes seconds)


class Spool:
    def __init__(self, journal_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(journal_dir) / "blobs"

    def create(self) -> None:
        """Make the directory if needed (0700 whatever the umask: blobs are nobody
        else's to read); raises OSError if it cannot."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.dir.stat().st_mode & 0o077:
            os.chmod(self.dir, 0o700)
        self.remove_leftovers()

    def remove_leftovers(self, older_than: float = LEFTOVER_SECONDS) -> int:
        """Delete the half-made copies a crash left mid-`adopt` (none of them is
        named by a row: the row commits after the rename); how many went."""
        cutoff = time.time() - older_than
        gone = 0
        with os.scandir(self.dir) as entries:
            for e in entries:
                if e.name.startswith(".adopt.") and e.name.endswith(".tmp") \
                        and e.stat(follow_symlinks=False).st_mtime < cutoff:
                    self.remove([e.path])
                    gone += 1
        return gone

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

    def adopt(self, fd: int, size: int) -> str:
        """Journal an inbox file from `fd` (the checked one; not closed here): `size`
        bytes copied and hashed, fsynced; returns the spool path. Raises
        Reject("blob_changed") if the file is not `size` bytes long now, OSError."""
        digest = hashlib.sha256()
        tmp = os.path.join(self.dir, f".adopt.{time.time_ns()}.tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                offset = 0
                while offset < size:
                    chunk = os.pread(fd, min(CHUNK, size - offset), offset)
                    if not chunk:
                        raise Reject("blob_changed", f"the blob file shrank from {size} to {offset} bytes "
                                                     "after it was checked")
                    digest.update(chunk)
                    _write_all(out, chunk)
                    offset += len(chunk)
                if os.pread(fd, 1, size) or os.fstat(fd).st_size != size:
                    raise Reject("blob_changed", f"the blob file grew past the {size} bytes it had when checked")
                os.fsync(out)
            finally:
                os.close(out)
            path = os.path.join(self.dir, f"{digest.hexdigest()}.{time.time_ns()}")
            os.rename(tmp, path)
        except BaseException:
            self.remove([tmp])
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
