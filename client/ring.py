"""The same-host hand-off: one single-producer ring of events per `Client`, in a
file of shared memory that outlives both the producer and the sidecar.

    ring = RingWriter.create(ring_dir("ipc:///run/trading-sidecar/ingest.sock"), client_id, make_dir=False)
    ring.send(frame)               # copy into mapped memory: no syscall; QueueFull when full
    ring.close()                   # returns at once; the sidecar drains the tail when it can

Where: `ring_dir(endpoint)` is the ingest socket's path with ``.sock``
replaced by ``.rings`` (``/run/trading-sidecar/ingest.rings`` under the
systemd unit, whose /run is tmpfs: memory, never written to a disk). Client
and sidecar derive it from the one endpoint, so neither is configured (and
``ipc://X`` and ``ipc://X.sock`` name the same directory: the sidecar locks
it, `sidecar.ops.lock`, so two sidecars never share one).

Who makes what (format version 2). The SIDECAR owns and makes the ring
directory, 3770 (setgid, so rings belong to the trading group; sticky, so no
member of the group can rename or delete another's ring). A Client does not
create a missing directory (`create(..., make_dir=False)` raises
`NoRingDirectory`): a missing one means a mistyped endpoint or a sidecar
that never started, and a ring made there would hold events nobody reads.
Each producer makes its own ring file, 0640: only its owner writes it (no
other process of the group can truncate it, which would kill the producer
with SIGBUS, or scribble into it); the sidecar and the group read it.
Everything the sidecar writes lives in its own file, ``acks/<ring name>``,
in a subdirectory only the sidecar writes (2750, so its files are the group's; each 0640), which the
producer maps read-only. Nothing else in the directory belongs to a
producer: ``doorbell`` (the sidecar's socket), ``acks/`` and
``quarantine/`` (0700) are the sidecar's.

Ring file, version 2 (little-endian; the producer writes all of it)::

    0     magic b"TSRING2\\n", u32 version (2), u32 flags (bit 0: records carry a CRC-32)
    16    u64 capacity (a power of two), u32 producer pid, u32 0, u64 created_ns
    64    client id, 64 bytes, NUL-padded: 1 to 64 of [A-Za-z0-9._-]; the file's name
          is ``<client id>.ring`` or ``<client id>.<n>.ring`` (n: its n-th ring, after
          a quarantine), else the ring is corrupt. Identity comes from the ring:
          the sidecar checks every frame's claimed id against it. A Client's id
          is ``<uid>u<pid>-<12 hex>`` (`new_client_id`): a ring whose id claims a
          uid other than the file's owner is refused (``wrong_owner``).
    256   u64 write_hint  producer: its position, written on the slow paths only (doorbell, full, close)
    264   u8  closed      producer: no more records will follow
    4096  data: `capacity` bytes of records

Acknowledgement file ``acks/<ring name>``, version 2 (the sidecar writes it,
the producer maps it read-only once it exists; 64 bytes)::

    0     magic b"TSACK2\\n\\0", u32 version (2), u32 0
    16    u64 read_pos     the journal has committed everything before it
    24    u8  wake         a generation: bumped by the sidecar when it goes to sleep
    25    u8  quarantined  1: "this ring is set aside, make a new one" (never cleared)
    32    u64 adopted_ns   when the sidecar adopted the ring (its wall clock)

Until the sidecar has adopted a ring (no ack file yet) its producer reads
position 0 and rings the doorbell on its first record, as in version 1, and
looks for the ack file again at most once a millisecond while it emits.

Positions are byte counts since the ring was made (never reset); a record
at position p lives at offset ``p % capacity`` and never straddles the
end: where one does not fit, a wrap record (or, in a tail too short for
one, nothing) fills the rest. A record is a 16-byte header, the body,
padding to 8 bytes, and a u64 trailer::

    u32 size, u16 nparts, u16 flags, u32 crc32, u32 0 | size bytes of body | pad | u64 end

Record flags: bit 0 wrap (padding to the lap's end), bit 1 CRC-32 present,
bits 2-3 reserved (0), bits 4-7 the body's format (`REC_FORMAT`):
0 JSON frames (below); 1 binary v1 (below); others refused. Bit 8 (`REC_PART_REFS`) says the part table is followed by one u8
per part, 0 for bytes held inline and 1 for a reference to a spool file
(issue 19's blobs that live outside the ring; the part then holds the
reference). A reader refuses a flag it does not know as corrupt, so those
formats need no new version, only their readers. This version reads
formats 0 and 1, and `REC_PART_REFS`; the compiled emit (`client._fastemit`) writes format 1 and
the pure-Python path format 0, both into the same ring if need be (the
compiled path hands its rare cases to the Python one).

Binary v1 (format 1, flag 0x10; one part, no blobs). A fixed header, so the
reader routes and checks sequences without parsing JSON, then the payload as
`orjson.dumps` wrote it (little-endian)::

    0   u64 seq          the client's sequence number (from 1)
    8   u64 emitted_ns   wall clock, ns since the epoch
    16  u16 key_len      0xFFFF: no key (else its UTF-8 bytes follow)
    18  u16 ref_len      0xFFFF: no ref
    20  u8  kind         index into `BINARY_KINDS` (fixed order: append only)
    21  3 bytes 0
    24  key, ref, then the payload's JSON to the body's end

The client id is not in the record: the ring is the identity (its header's).
The sidecar turns such a body into the JSON envelope a format-0 record
carries (`sidecar.ingest.decode`), so the journal, delivery and the rejects
see one envelope whatever the producer ran; a body that breaks this layout
becomes an empty frame, rejected as ``bad_json``. The compiled writer stores
the commit mark with release ordering, so on any CPU a reader that sees it
sees the body; it leaves records with a CRC (`checksum=True`, aarch64's
default) to the Python path.

Parts that refer to files (`REC_PART_REFS`, `RingWriter.send_refs`): blobs
of `client.blobs.THRESHOLD` bytes or more do not go into the ring but into
files in the sidecar's blob inbox (see `client.blobs` for who writes them,
how order and crash safety are kept). Such a record always has the frame
inline as part 0 (so nparts >= 2); its body is the u32 length table, then
one u8 per part (0 inline, 1 reference), then the parts; a reference part
is the file's name in the inbox, ASCII, ``<client id>.<seq>.<i>.<16 random hex>.blob`` (unguessable, so no other
producer can take a name first).

Ring size. Now that large blobs live in files, a ring holds events only:
DEFAULT_RING_BYTES is 8 MiB (fallocated at create, so a full tmpfs is an
error then, not a SIGBUS later), about 27,000 records of 300 bytes: 2.7 s
at 10,000 events/s, 9 minutes at 50/s, with the sidecar away. For more set
``Client(ring_bytes=...)`` or ``$SIDECAR_RING_BYTES`` (a power of two;
128 MiB holds 30 s of 10,000 events/s of 300 bytes). `default_ring_bytes()`
reads the variable.

The body is the event's frame alone (nparts = 1) or a table of nparts u32
lengths followed by the frame and its blobs. One `struct.pack_into` writes
a whole single-part record, in that order, so the hot path makes one C call.

Why a reader never sees half a record. The trailer `end` (the position after
the record) is written last and is the commit mark: a reader takes a record
only if the trailer where its header's size puts it equals its own position
plus the record's length, which no stale record of an earlier lap and no
zeroed page can match. On x86-64 stores become visible in program order
(TSO), so a reader that sees `end` sees the body. A copy (memcpy, pread) may
load the bytes of one region in any order, so the sidecar reads twice: a
first pass finds the committed marks, a second copy, made after them, is the
one it parses. aarch64 orders neither stores nor loads without barriers,
which Python cannot issue: there the producer also writes a CRC-32 of the
body, started from the record's end position so that no earlier lap's record
can pass for it (flag bit 0 in the file and in each record), and a mismatch
means "not visible yet, read again", becoming corruption only if it lasts. The CRC costs
about 0.2 µs an emit, so x86-64 skips it; `RingWriter(checksum=True)` forces it.

Wake-up. While events flow the sidecar reads the rings once per commit
window (`[ingest] commit_window`, 10 ms; sidecar/ingest/core.py); after a
window with nothing pending it bumps `wake` in every ring's ack file and
sleeps on a Unix datagram socket in the ring directory (`doorbell`). The
producer compares `wake` with the last generation it answered after each
record (a byte load from memory it already maps, ~20 ns, and no write to
the sidecar's file) and only when they differ answers and sends one
datagram. So a busy sidecar costs the producer nothing, and an idle one
hears of a lone event in about 0.4 ms (bench/wakeup.py). (Set-flag-then-check
and write-then-check-flag can still cross on any CPU; the sidecar's sleep is
bounded by 250 ms for that case.) The sidecar bumps a ring's generation only
once until that ring yields a record again, so it is never more than a few
ahead of the producer's answer and one byte compares exactly.

Version 1 (still read). A version-1 ring (magic b"TSRING1\\n", written by
producers still running the previous client) has the same header and
records, but the sidecar writes into the producer's own file: u64 read_pos
at 128, u8 wake at 192 (1: ring the doorbell; the producer clears it) and
u8 quarantined at 200; the file and directory are 0660/2770. The sidecar
reads such rings as before, writing those fields where version-1
producers look for them, so an upgrade never quarantines a live ring;
new rings are version 2.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import platform
import re
import secrets
import socket
import stat
import struct
import time
import zlib
from collections.abc import Callable, Sequence

from .transport import QueueFull, Transport, TransportError

MAGIC = b"TSRING2\n"
VERSION = 2
MAGIC_V1 = b"TSRING1\n"
VERSION_V1 = 1
FILE_HEADER = 4096
OFF_CLIENT_ID = 64
CLIENT_ID_BYTES = 64
OFF_HINT = 256
OFF_CLOSED = 264
FILE_CHECKSUM = 1
# Version 1 only: the fields the sidecar writes into the producer's own file.
OFF_READ = 128
OFF_WAKE = 192
OFF_QUARANTINED = 200

RECORD = struct.Struct("<IHHII")   # size, nparts, flags, crc32, 0; the u64 trailer `end` follows the body
TRAILER = 8
HEADER = RECORD.size + TRAILER     # 24: a record's bytes beyond its body, before padding
REC_WRAP = 1
REC_CRC = 2
REC_FORMAT = 0xF0                  # the body's format, in bits 4-7 (module docstring)
FORMAT_JSON = 0x00
FORMAT_BINARY_V1 = 0x10            # the binary v1 body (module docstring)
REC_PART_REFS = 0x100              # parts that refer to files in the blob inbox (client.blobs)
# What this version reads; any other bit is corruption.
REC_KNOWN = REC_WRAP | REC_CRC | FORMAT_BINARY_V1 | REC_PART_REFS
PART_INLINE = 0
PART_REF = 1
BINARY_V1 = struct.Struct("<QQHHB3x")  # seq, emitted_ns, key_len, ref_len, kind; key, ref, payload follow
NO_STRING = 0xFFFF                 # key_len/ref_len of an absent key or ref
# Binary v1's kind codes: a kind's index. Append only: producers of an older
# client still write the old indices.
BINARY_KINDS = ("notion.page.create", "notion.page.update", "notion.blocks.append", "s3.put",
                "naver.product.update", "naver.images.upload", "webhook.post")
MAX_PARTS = 17                     # the frame and at most wire.MAX_BLOBS blobs

WAKE_NONE = 0
WAKE_RING = 1

# The sidecar's acknowledgement file, acks/<ring name> (version 2).
ACKS = "acks"
ACK_MAGIC = b"TSACK2\n\0"
ACK_BYTES = 64
ACK_READ = 16
ACK_WAKE = 24
ACK_QUARANTINED = 25
ACK_ADOPTED = 32
_ACK = struct.Struct("<8sII")      # magic, version, 0
LOOK_NS = 1_000_000                # an unadopted ring looks for its ack file this often, at most

RING_DIR_MODE = 0o3770             # setgid (the group's), sticky (nobody removes another's ring)
RING_FILE_MODE = 0o640             # only its producer writes a ring
ACKS_DIR_MODE = 0o2750             # only the sidecar writes acks; the group reads them (setgid: the files are its)
ACK_FILE_MODE = 0o640

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; Python 3.11 lacks the name
_FILE = struct.Struct("<8sIIQIIQ")  # magic, version, flags, capacity, pid, 0, created_ns
U64 = struct.Struct("<Q")

RING_SUFFIX = ".ring"
DOORBELL = "doorbell"
# Events only (large blobs go to the inbox): 8 MiB holds ~27,000 records of 300 bytes.
# 30 s at 10,000 events/s of 300-byte events (304 bytes a record) is 91 MB: 128 MiB.
DEFAULT_RING_BYTES = 8 * 1024 * 1024
RING_BYTES_ENV = "SIDECAR_RING_BYTES"
LAST_WORD_BYTES = 4096             # kept free for a closing message (its stats are under 2 KiB)
MIN_RING_BYTES = 64 * 1024
MAX_RING_BYTES = 1 << 34
# x86-64's total store order makes the commit mark enough; elsewhere, check.
CHECKSUM_BY_DEFAULT = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_UID_MARK = re.compile(r"(\d{1,10})u")  # an id that starts "<digits>u" claims that uid (`id_uid`)
NAME_TAKEN = (errno.EEXIST, errno.EPERM, errno.EACCES, errno.EISDIR, errno.ENOTEMPTY)  # rename into place refused


class NoRingDirectory(TransportError):
    """The ring directory does not exist: no sidecar made it (a mistyped
    endpoint, or none ever started). A Client does not make one."""


class NameTaken(TransportError):
    """The ring's name is taken by a file the producer cannot replace (another
    uid's, in the sticky directory): a Client tries again with a fresh id."""


def ring_dir(endpoint: str) -> str | None:
    """The ring directory that belongs to an ``ipc://`` endpoint; None for others.

    >>> ring_dir("ipc:///run/trading-sidecar/ingest.sock")
    '/run/trading-sidecar/ingest.rings'
    >>> ring_dir("tcp://10.0.0.5:5555") is None
    True
    """
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    if path.endswith(".sock"):
        path = path[: -len(".sock")]
    return path + ".rings"


def default_ring_bytes() -> int:
    """``$SIDECAR_RING_BYTES`` if set (a power of two; suffixes K, M, G), else DEFAULT_RING_BYTES.

    >>> os.environ[RING_BYTES_ENV] = "128M"; default_ring_bytes(); del os.environ[RING_BYTES_ENV]
    134217728
    """
    raw = os.environ.get(RING_BYTES_ENV, "").strip().upper()
    if not raw:
        return DEFAULT_RING_BYTES
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1], 1)
    try:
        value = int(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        raise ValueError(f"${RING_BYTES_ENV}={raw!r} is not a number of bytes (like 134217728 or 128M)") from None
    if value < MIN_RING_BYTES or value > MAX_RING_BYTES or value & (value - 1):
        raise ValueError(f"${RING_BYTES_ENV}={raw!r}: a power of two from {MIN_RING_BYTES} to {MAX_RING_BYTES}")
    return value


def valid_client_id(client_id: str) -> bool:
    """1 to 64 of [A-Za-z0-9._-]: safe in a file name, a log line and a label.

    >>> valid_client_id("4242-0a1b2c3d4e5f"), valid_client_id("a/b"), valid_client_id("x" * 65)
    (True, False, False)
    """
    return _CLIENT_ID.match(client_id) is not None


def new_client_id() -> str:
    """A fresh id that carries its maker's uid: ``<uid>u<pid>-<12 hex>``.

    The sidecar quarantines (``wrong_owner``) a ring whose id claims a uid
    other than the file's owner, so nobody else can take a new id's rings;
    such ids need no binding kept in the journal.

    >>> id_uid(new_client_id()) == os.getuid()
    True
    """
    return f"{os.getuid()}u{os.getpid()}-{secrets.token_hex(6)}"


def id_uid(client_id: str) -> int | None:
    """The uid an id claims (``<uid>u...``), or None for an id without the
    mark (a client before this rule: ``<pid>-<12 hex>``).

    >>> id_uid("1001u4242-0a1b2c3d4e5f"), id_uid("4242-0a1b2c3d4e5f"), id_uid("c1")
    (1001, None, None)
    """
    m = _UID_MARK.match(client_id)
    return None if m is None else int(m.group(1))


def temp_ring_name() -> str:
    """A hidden name to build a ring under, random so that it does not reveal
    the client id (``.tmp-<32 hex>.ring.tmp``: the ``.ring.tmp`` ending that
    the sidecar's cleanup of half-made rings knows, old and new)."""
    return f".tmp-{secrets.token_hex(16)}{RING_SUFFIX}.tmp"


def name_matches(name: str, client_id: str) -> bool:
    """Whether a ring file's name belongs to `client_id`: ``<id>.ring`` or ``<id>.<n>.ring``.

    >>> name_matches("c1.ring", "c1"), name_matches("c1.2.ring", "c1"), name_matches("c2.ring", "c1")
    (True, True, False)
    """
    if not name.endswith(RING_SUFFIX):
        return False
    stem = name[: -len(RING_SUFFIX)]
    if stem == client_id:
        return True
    rest = stem[len(client_id) + 1:]
    return stem.startswith(client_id + ".") and rest.isascii() and rest.isdigit()


def record_bytes(size: int) -> int:
    """Bytes a record with a body of `size` takes in the ring (header, padding)."""
    return (size + HEADER + 7) & ~7


def max_record_body(capacity: int) -> int:
    """The largest body a ring of `capacity` takes: half of it, so that any
    record fits once the ring is empty, wherever the write position is."""
    return capacity // 2 - HEADER


def make_ring_dir(path: str) -> None:
    """Create the ring directory, 3770, if missing (the sidecar's job; tests)."""
    try:
        os.mkdir(path, RING_DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, RING_DIR_MODE)  # mkdir's mode is filtered by the umask


_packers: dict[int, Callable[..., None]] = {}


def packer(size: int) -> Callable[..., None]:
    """`pack_into(buf, offset, size, nparts, flags, crc, 0, body, end)` for a
    body of `size` bytes: the whole record in one C call, trailer last."""
    pack = _packers.get(size)
    if pack is None:
        if len(_packers) >= 4096:  # payload sizes vary; keep the cache bounded
            _packers.clear()
        pad = record_bytes(size) - HEADER - size
        pack = _packers[size] = struct.Struct(f"<IHHII{size}s{pad}xQ").pack_into
    return pack


def _build_ring_file(fd: int, tmp: str, path: str, client_id: str, capacity: int, checksum: bool, *,
                     allocate: bool, prefault: bool) -> mmap.mmap:
    """Size, allocate, stamp, lock and map a ring made as `tmp` (fd), then rename it to
    `path`: the sidecar never sees it half made. Raises TransportError (the fd closed)."""
    try:
        os.fchmod(fd, RING_FILE_MODE)
        os.ftruncate(fd, FILE_HEADER + capacity)
        # On a full tmpfs a write into a sparse mapping kills the process
        # with SIGBUS: allocate every page now, or at least see that they fit.
        if allocate:
            os.posix_fallocate(fd, 0, FILE_HEADER + capacity)
        else:
            fs = os.fstatvfs(fd)
            if fs.f_bavail * fs.f_frsize < FILE_HEADER + capacity:
                raise OSError(28, "no room for the ring")
        header = _FILE.pack(MAGIC, VERSION, FILE_CHECKSUM if checksum else 0, capacity, os.getpid(), 0,
                            time.time_ns())
        os.pwrite(fd, header, 0)
        os.pwrite(fd, client_id.encode(), OFF_CLIENT_ID)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        mm = mmap.mmap(fd, FILE_HEADER + capacity)
        if prefault:
            try:
                mm.madvise(MADV_POPULATE_WRITE)
            except OSError:
                pass  # before Linux 5.14: pages are mapped as they are first written
        os.rename(tmp, path)
    except OSError as exc:
        os.close(fd)
        _unlink(tmp)
        if exc.errno in NAME_TAKEN and os.path.lexists(path):
            raise NameTaken(f"cannot create ring {path}: the name is taken") from None
        raise TransportError(f"cannot create ring {path}: {exc.strerror}") from None
    return mm


def _unadopted() -> bytearray:
    """The stand-in for an ack file not made yet: position 0, and a wake
    generation the producer has not answered, so its first record rings."""
    ack = bytearray(ACK_BYTES)
    ack[ACK_WAKE] = WAKE_RING
    return ack


class RingWriter(Transport):
    """The producer's end of one ring. One thread at a time (Client's rule)."""

    takes_compiled_emit = True  # the layout client/_fastemit.c writes, version for version

    def __init__(self, path: str, fd: int, mm: mmap.mmap, capacity: int, checksum: bool,
                 directory: str, sidecar_uid: int) -> None:
        self.path = path
        self.capacity = capacity
        self.checksum = checksum
        self._flags = REC_CRC if checksum else 0
        self._crc = zlib.crc32
        # Kept free for the closing message, so that a client closing on a
        # full ring still announces its last sequence number.
        self._usable = capacity - LAST_WORD_BYTES
        # Half of what is usable: any record then fits once the ring is empty.
        self.max_body = (self._usable // 2 - HEADER) & -8
        self._fd = fd
        self._mm = mm
        self._mask = capacity - 1
        self._pos = 0
        self._read = 0           # the sidecar's read_pos, as last looked at (it only grows)
        self._directory = directory
        self._doorbell = os.path.join(directory, DOORBELL)
        self._ack_path = os.path.join(directory, ACKS, os.path.basename(path))
        self._sidecar_uid = sidecar_uid
        self._ack: mmap.mmap | bytearray = _unadopted()
        self._answered = WAKE_NONE   # the last wake generation answered with a doorbell
        self._next_look = 0          # monotonic ns: when to look for the ack file again
        self._rang_unadopted = False
        self._bell: socket.socket | None = None
        self.doorbells = 0

    @classmethod
    def create(cls, directory: str, client_id: str, *, capacity: int = DEFAULT_RING_BYTES,
               checksum: bool = CHECKSUM_BY_DEFAULT, suffix: str = "", prefault: bool = False,
               allocate: bool = True, make_dir: bool = True) -> RingWriter:
        """Make `directory/<client_id><suffix>.ring` and map it.

        The file is built under a hidden random name (`temp_ring_name`: it
        must not reveal the id to a group member polling the directory) and
        renamed into place, so the sidecar never adopts a half-made ring; a
        name taken by a file this process cannot replace raises NameTaken; an exclusive flock held until
        close (or death) tells the sidecar that the producer is alive.
        With `allocate`, the file's pages are allocated at once
        (`posix_fallocate`, ~0.25 ms per MiB here), so a full tmpfs is an
        error now, not a SIGBUS in a later emit; without it (a ring made
        inside an emit, after a fork), only the free space is checked.
        `prefault` also maps them into this process (another ~1 ms per MiB),
        so that no emit of the first lap pays a page fault (about 2 µs, once
        per 4 KiB written); for long-running loops.
        `make_dir=False` (a Client's way) raises NoRingDirectory rather than
        make a directory no sidecar made; `suffix` is ``.<n>`` or empty.
        Raises TransportError if the directory is unusable, ValueError for
        a client id that `valid_client_id` refuses.
        """
        if capacity < MIN_RING_BYTES or capacity > MAX_RING_BYTES or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two from {MIN_RING_BYTES} to {MAX_RING_BYTES}")
        if not valid_client_id(client_id):
            raise ValueError(f"client id {client_id!r} is not 1 to 64 of [A-Za-z0-9._-]")
        name = f"{client_id}{suffix}{RING_SUFFIX}"
        if not name_matches(name, client_id):
            raise ValueError(f"ring suffix {suffix!r} is not '.<n>'")
        path = os.path.join(directory, name)
        tmp = os.path.join(directory, temp_ring_name())  # random: it must not reveal the id
        try:
            if make_dir:
                make_ring_dir(directory)
            sidecar_uid = os.stat(directory).st_uid
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, RING_FILE_MODE)
        except FileNotFoundError:
            raise NoRingDirectory(f"no ring directory {directory}: is the sidecar running, and is the "
                                  "endpoint spelled as in its configuration?") from None
        except OSError as exc:
            raise TransportError(f"cannot create a ring in {directory}: {exc.strerror}") from None
        mm = _build_ring_file(fd, tmp, path, client_id, capacity, checksum, allocate=allocate, prefault=prefault)
        return cls(path, fd, mm, capacity, checksum, directory, sidecar_uid)

    # -- the hot path ---------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Append one single-part record; raise QueueFull if it does not fit now.

        `frame` must be at most `max_body` bytes (Client checks)."""
        n = len(frame)
        rec = (n + 31) & -8  # record_bytes(n), inlined
        pos = self._pos
        end = pos + rec
        off = pos & self._mask
        if off + rec > self.capacity or end - self._read > self._usable:
            return self._send_slow([frame])
        # Everything in one C call (header, body, trailer last), then the
        # wake generation: a byte of memory this process maps anyway.
        (_packers.get(n) or packer(n))(self._mm, FILE_HEADER + off, n, 1, self._flags,
                                        self._crc(frame, end & 0xFFFFFFFF) if self._flags else 0, 0, frame, end)
        self._pos = end
        if self._ack[ACK_WAKE] != self._answered:
            self._wake()

    def send_blobs(self, frame: bytes, blobs: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append one record holding the frame and its blobs."""
        self._send_slow([frame, *blobs])

    @property
    def ring_dir(self) -> str | None:
        return self._directory

    def send_refs(self, frame: bytes, blobs: Sequence[bytes | bytearray | memoryview | str]) -> None:
        """Append one record of the frame and its blobs, where a `str` is the
        name of a file in the blob inbox (`REC_PART_REFS`; client.blobs)."""
        kinds = bytes([PART_INLINE] + [PART_REF if isinstance(b, str) else PART_INLINE for b in blobs])
        parts = [b.encode("ascii") if isinstance(b, str) else b for b in blobs]
        self._send_slow([frame, *parts], kinds=kinds)

    # -- slow paths -----------------------------------------------------------

    def send_last(self, frame: bytes) -> None:
        """The closing message: it may use the space kept for it."""
        self._send_slow([frame], usable=self.capacity)

    def _send_slow(self, parts: list, usable: int = 0, kinds: bytes = b"") -> None:
        """Any record: wrap first if it does not fit before the end; parts
        are copied straight into the ring (no joined copy of a large blob).
        `kinds`: one byte a part (PART_INLINE, PART_REF) for a REC_PART_REFS record."""
        lengths = [memoryview(p).nbytes for p in parts]
        nparts = len(parts)
        n = sum(lengths) + (4 * nparts if nparts > 1 else 0) + len(kinds)
        if n > self.max_body:
            raise QueueFull  # never fits; Client checks sizes first, so only a tiny ring gets here
        rec = record_bytes(n)
        pos = self._pos
        off = pos & self._mask
        skip = self.capacity - off if off + rec > self.capacity else 0
        usable = usable or self._usable
        if pos + skip + rec - self._read > usable:
            if isinstance(self._ack, bytearray):
                self._look()  # not adopted yet: a failed open costs a syscall, so at most once a millisecond
            self._read = U64.unpack_from(self._ack, ACK_READ)[0]
            if pos + skip + rec - self._read > usable:
                if self._ack[ACK_QUARANTINED]:  # full because nobody reads it any more
                    raise TransportError("the sidecar quarantined this ring")
                self._hint()
                raise QueueFull
        mm = self._mm
        if skip:
            if skip >= HEADER:  # a wrap record: a body of padding up to the end
                start = FILE_HEADER + off
                RECORD.pack_into(mm, start, skip - HEADER, 0, REC_WRAP, 0, 0)
                U64.pack_into(mm, start + skip - TRAILER, pos + skip)
            pos += skip
            off = 0
        start = FILE_HEADER + off
        at = start + RECORD.size
        crc = (pos + rec) & 0xFFFFFFFF  # the CRC starts from the record's end: no earlier lap's matches
        if nparts > 1:
            table = struct.pack(f"<{nparts}I", *lengths) + kinds
            mm[at:at + len(table)] = table
            at += len(table)
            if self._flags:
                crc = self._crc(table, crc)
        for part, length in zip(parts, lengths, strict=True):
            mm[at:at + length] = part
            at += length
            if self._flags:
                crc = self._crc(part, crc)
        flags = self._flags | (REC_PART_REFS if kinds else 0)
        RECORD.pack_into(mm, start, n, nparts, flags, crc if self._flags else 0, 0)
        U64.pack_into(mm, start + rec - TRAILER, pos + rec)  # the commit mark, last
        self._pos = pos + rec
        if self._ack[ACK_WAKE] != self._answered:
            self._wake()

    def _hint(self) -> None:
        U64.pack_into(self._mm, OFF_HINT, self._pos)

    def _look(self) -> bool:
        """`_map_ack`, at most once every LOOK_NS."""
        now = time.monotonic_ns()
        if now < self._next_look:
            return False
        self._next_look = now + LOOK_NS
        return self._map_ack()

    def _wake(self) -> None:
        if isinstance(self._ack, bytearray):  # not adopted yet: look for the ack file now and then
            if not self._look():
                if not self._rang_unadopted:  # the first record: tell the sidecar of the new ring
                    self._rang_unadopted = True
                    self._hint()
                    self.ring_doorbell()
                return
            if self._ack[ACK_WAKE] == self._answered and not self._ack[ACK_QUARANTINED]:
                return
        # The generation first, then the quarantine byte: the sidecar sets
        # that byte before it bumps the generation, so either order is seen.
        self._answered = self._ack[ACK_WAKE]
        if self._ack[ACK_QUARANTINED]:
            raise TransportError("the sidecar quarantined this ring")
        self._hint()
        self.ring_doorbell()

    def _map_ack(self) -> bool:
        """Map the sidecar's ack file read-only, once it exists; False until then.

        Only a file of the directory's owner (the sidecar) is mapped: one
        that another member of the group could truncate would be a SIGBUS."""
        try:
            fd = os.open(self._ack_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != self._sidecar_uid or st.st_size < ACK_BYTES:
                return False
            mm = mmap.mmap(fd, ACK_BYTES, prot=mmap.PROT_READ)
        except OSError:
            return False
        finally:
            os.close(fd)
        if mm[:len(ACK_MAGIC)] != ACK_MAGIC:
            mm.close()
            return False
        self._ack = mm
        return True

    def ring_doorbell(self) -> None:
        """One datagram to the sidecar's doorbell; nobody listening is fine."""
        self.doorbells += 1
        try:
            if self._bell is None:
                self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._bell.setblocking(False)
            self._bell.sendto(b"\1", self._doorbell)
        except OSError:
            pass  # no sidecar (it reads the ring when it starts), or its queue is full (it is awake)

    # -- what the sidecar said -------------------------------------------------

    @property
    def adopted(self) -> bool:
        """Whether a sidecar has adopted this ring (its ack file exists)."""
        return not isinstance(self._ack, bytearray) or self._map_ack()

    @property
    def acknowledged(self) -> int:
        """The position up to which the sidecar's journal holds this ring (0 until adopted)."""
        if isinstance(self._ack, bytearray):
            self._map_ack()
        return int(U64.unpack_from(self._ack, ACK_READ)[0])

    @property
    def unacknowledged(self) -> int:
        """Bytes written that the sidecar has not yet journaled (records, padding)."""
        return self._pos - self.acknowledged

    @property
    def quarantined(self) -> bool:
        if isinstance(self._ack, bytearray):
            self._map_ack()
        return self._ack[ACK_QUARANTINED] != 0

    # -- lifecycle ------------------------------------------------------------

    def close(self, linger: float = 0.0, sent: int = 0) -> int:
        """Mark the ring closed, ring the doorbell and let go at once: what it
        holds is the sidecar's to drain, now or when it next starts
        (`linger` and `sent` are the Transport interface's; a ring never waits)."""
        self._hint()
        self._mm[OFF_CLOSED] = 1
        self.ring_doorbell()
        self.forget()
        return 0  # nothing dropped: the ring keeps it

    def after_fork(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Unmap and release the ring without writing (a forked child's copy:
        the flock the child inherited must not keep the parent's ring alive)."""
        self._mm.close()
        if isinstance(self._ack, mmap.mmap):
            self._ack.close()
        self._ack = _unadopted()
        os.close(self._fd)
        if self._bell is not None:
            self._bell.close()
            self._bell = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# The reader's side of the contract: the sidecar imports these.

class RingCorrupt(Exception):
    """A ring that breaks the layout; the sidecar quarantines it."""


class FileHeader:
    """A ring file's fixed header, checked: every field of an untrusted file is bounded.

    `name` (the file's name) must belong to the client id the header holds."""

    def __init__(self, raw: bytes, file_size: int, name: str | None = None) -> None:
        if len(raw) < 128:
            raise RingCorrupt(f"file of {file_size} bytes is shorter than a ring header")
        magic, version, flags, capacity, pid, _, created_ns = _FILE.unpack_from(raw, 0)
        if (magic, version) not in ((MAGIC, VERSION), (MAGIC_V1, VERSION_V1)):
            raise RingCorrupt("not a ring file of a version this sidecar reads (bad magic)")
        if capacity < MIN_RING_BYTES or capacity > MAX_RING_BYTES or capacity & (capacity - 1):
            raise RingCorrupt(f"capacity {capacity} is not a power of two in range")
        if file_size != FILE_HEADER + capacity:
            raise RingCorrupt(f"file is {file_size} bytes, the header says {FILE_HEADER + capacity}")
        client_id = raw[OFF_CLIENT_ID:OFF_CLIENT_ID + CLIENT_ID_BYTES].rstrip(b"\0").decode("ascii", "replace")
        if not valid_client_id(client_id):
            raise RingCorrupt("the client id in its header is not 1 to 64 of [A-Za-z0-9._-]")
        if name is not None and not name_matches(name, client_id):
            raise RingCorrupt(f"its name does not belong to the client id {client_id!r} in its header")
        self.version: int = version
        self.capacity: int = capacity
        self.checksum = bool(flags & FILE_CHECKSUM)
        self.pid: int = pid
        self.created_ns: int = created_ns
        self.client_id = client_id
