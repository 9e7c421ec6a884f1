"""One sidecar per directory: an exclusive lock held for the life of the process.

    held = acquire("/var/lib/trading-sidecar/lock", "journal directory")
    ...                                  # keep `held` referenced; the lock goes with the process
    held.release()

A second `acquire` of the same file, by any process, raises `Locked`, whose
message names the pid holding it. The lock is an `flock` on a file of its
own (0600, never followed if it is a symlink), so it cannot go stale: the
kernel drops it when its holder dies, however it dies. The holder's pid is
written into the file for the message only; nothing trusts it.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass


class Locked(OSError):
    """Another process holds the lock (the message says which one)."""


@dataclass
class Held:
    """A lock this process holds; `release()` or process exit lets it go."""

    path: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def acquire(path: str, what: str) -> Held:
    """Take the exclusive lock on `path` (created if missing), or raise `Locked`.

    `what` names the thing locked in the message, e.g. "journal directory".
    Other failures (a directory that does not exist, no permission) raise
    the OSError as it is."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise Locked(f"the {what} is in use by another sidecar (pid {holder}, holding {path}); "
                     "stop it first, or give this one its own") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Held(path, fd)


def _holder(fd: int) -> str:
    """The pid the holder wrote, as text for a message ("unknown" while it writes)."""
    try:
        raw = os.pread(fd, 32, 0).split(b"\n")[0]
    except OSError:
        return "unknown"
    return raw.decode() if raw.isdigit() else "unknown"
