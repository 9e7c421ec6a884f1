"""Small file operations the ring reader and its directory share, none following a symlink.

    if not locked(ring_fd): ...          # no producer holds the ring: it is gone
    unlink(path)                         # already gone is fine
    fd = reopen_rw(fd)                   # the same file for writing, whatever its name is now
    delete(path, is_dir)                 # a file or a whole tree, symlinks inside not followed
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat


def locked(fd: int) -> bool:
    """Whether another open file holds an flock on `fd`'s file (its producer lives)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def held_by_other(path: str) -> bool:
    """Whether some process holds an flock on the file at `path` (True when it cannot tell)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True  # cannot tell: leave it
    try:
        return locked(fd)
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def reopen_rw(fd: int) -> int:
    """The same file, opened again for writing (not by its name, which may have changed)."""
    rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    os.close(fd)
    return rw


def delete(path: str, is_dir: bool) -> None:
    """Remove a file or a whole tree, never following a symlink out of it."""
    if is_dir:
        shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: symlinks inside are not followed
    else:
        unlink(path)


def kind(mode: int) -> str:
    """What a stat mode is, in a word for a log line."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISREG, "file")):
        if test(mode):
            return name
    return "special file"
