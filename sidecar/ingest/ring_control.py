"""Where the sidecar tells a producer things: its read position, "ring me", "set aside".

    control = open_ack_file(directory, "alpha.ring", header.created_ns, st.st_ino)  # version 2
    control = V1Control(fd)              # version 1: into the producer's own file
    control.ack(pos); control.arm(); control.quarantine(); control.close()
    tell_producer(directory, path, name) # a ring set aside before it was adopted

A version-2 ring's ack file, ``acks/<ring name>``, is the sidecar's own (see
`client/ring.py` for its layout): mapped here, so an ack costs no syscall,
and nobody else can write or truncate it. A version-1 ring has no such file:
the sidecar writes into the producer's ring itself.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from client import ring as layout
from client.ring import U64
from sidecar.ingest.ring_files import reopen_rw, unlink

_ACK_ID = struct.Struct("<QQ")  # the ring an ack file belongs to: created_ns, inode
ACK_RING_ID = 40


class V1Control:
    """Where the sidecar writes for a version-1 ring: into the producer's own file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read_pos(self) -> int:
        raw = os.pread(self.fd, 8, layout.OFF_READ)
        return U64.unpack(raw)[0] if len(raw) == 8 else 0

    def ack(self, pos: int) -> None:
        os.pwrite(self.fd, U64.pack(pos), layout.OFF_READ)

    def arm(self) -> None:
        os.pwrite(self.fd, bytes([layout.WAKE_RING]), layout.OFF_WAKE)

    def quarantine(self) -> None:
        # The sticky byte first, then `wake`, which sends the producer to look.
        os.pwrite(self.fd, b"\1", layout.OFF_QUARANTINED)
        self.arm()

    def close(self, *, discard: bool = False) -> None:
        pass


class AckFile:
    """`acks/<ring name>` (version 2), mapped: the sidecar's writes cost no syscall."""

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        self.path = path
        self.mm = mm

    def read_pos(self) -> int:
        return int(U64.unpack_from(self.mm, layout.ACK_READ)[0])

    def ack(self, pos: int) -> None:
        U64.pack_into(self.mm, layout.ACK_READ, pos)

    def arm(self) -> None:
        self.mm[layout.ACK_WAKE] = (self.mm[layout.ACK_WAKE] + 1) & 0xFF  # a new generation to answer

    def quarantine(self) -> None:
        self.mm[layout.ACK_QUARANTINED] = 1  # before the generation: the producer reads them the other way round
        self.arm()

    def close(self, *, discard: bool = False) -> None:
        """Unmap; with `discard` (the ring is gone with its producer) remove the file too."""
        if not self.mm.closed:
            self.mm.close()
        if discard:
            unlink(self.path)


Control = V1Control | AckFile


def open_ack_file(directory: str, name: str, created_ns: int, inode: int, *, quarantined: bool = False) -> AckFile:
    """Map `acks/<name>`: the one a ring had before this start, or a new one.

    An ack file of another ring of that name (or a tombstone) is
    replaced by a new file, never rewritten: a producer mapping the
    old one keeps reading what was meant for it."""
    path = os.path.join(directory, layout.ACKS, name)
    ident = _ACK_ID.pack(created_ns, inode)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, layout.ACK_FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and (quarantined or size != layout.ACK_BYTES
                     or os.pread(fd, len(layout.ACK_MAGIC), 0) != layout.ACK_MAGIC
                     or os.pread(fd, _ACK_ID.size, ACK_RING_ID) != ident
                     or os.pread(fd, 1, layout.ACK_QUARANTINED) != b"\0"):
            os.unlink(path)
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         layout.ACK_FILE_MODE)
            size = 0
        if not size:
            os.ftruncate(fd, layout.ACK_BYTES)
            os.pwrite(fd, U64.pack(time.time_ns()) + ident, layout.ACK_ADOPTED)
            if quarantined:
                os.pwrite(fd, bytes([layout.WAKE_RING, 1]), layout.ACK_WAKE)
            os.pwrite(fd, layout._ACK.pack(layout.ACK_MAGIC, layout.VERSION, 0), 0)  # last: then it is whole
        os.fchmod(fd, layout.ACK_FILE_MODE)
        mm = mmap.mmap(fd, layout.ACK_BYTES)
    finally:
        os.close(fd)
    return AckFile(path, mm)


def tell_producer(directory: str, path: str, name: str) -> None:
    """A ring set aside at adoption: tell its producer to make a new one, if it can hear."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            magic = os.pread(fd, len(layout.MAGIC), 0)
            if magic == layout.MAGIC_V1:
                fd = reopen_rw(fd)
                V1Control(fd).quarantine()
        finally:
            os.close(fd)
        if magic != layout.MAGIC or not layout.valid_client_id(name[: -len(layout.RING_SUFFIX)]):
            return
        ack = os.path.join(directory, layout.ACKS, name)
        try:  # the ack file its producer may already map: marked in place
            afd = os.open(ack, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            open_ack_file(directory, name, 0, 0, quarantined=True).close()
            return
        try:
            if os.fstat(afd).st_size == layout.ACK_BYTES:
                marked = AckFile(ack, mmap.mmap(afd, layout.ACK_BYTES))
                marked.quarantine()
                marked.close()
        finally:
            os.close(afd)
    except OSError:
        pass
