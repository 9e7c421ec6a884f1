"""Who is at the other end of a loopback TCP connection, and whether they may read the sidecar's status.

    uid = peer_uid(sock)                    # 1001; None: another host, gone, or not Linux
    readers = Readers(os.geteuid(), os.getegid())
    readers.allow(uid)                      # root, the sidecar's uid, or a member of its group

The HTTP API answers any local user (a TCP port has no file mode). /metrics
and /health are for monitoring, which runs as its own user; /status and
/refs name the producers (client ids, pids, uids) and what delivery made
(page ids, image URLs), so they go only to the sidecar's own people: root,
the sidecar's uid, and the members of its group (the unit's `Group=`, the
trading group). The client's end of a loopback connection is the socket
whose local address is our peer's and whose remote address is ours; Linux
tells its owner's uid through sock_diag (one netlink request for that
exact socket, as `ss` does), else in /proc/net/tcp and tcp6. The files list
every TCP socket on the host: a user who fills them with TIME_WAIT entries
made a scan cost 30 ms (an attack review), so they are scanned only where
sock_diag is missing, and at most SCANS_PER_SECOND times a second.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
import struct
import time

PROC_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
NETLINK_SOCK_DIAG = 4       # linux/netlink.h
SOCK_DIAG_BY_FAMILY = 20    # linux/sock_diag.h
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF      # INET_DIAG_NOCOOKIE: look the socket up by its addresses
ALL_STATES = 0xFFFFFFFF
SCANS_PER_SECOND = 5        # /proc scans, where sock_diag is missing (each reads every TCP socket of the host)
MEMBERS_SECONDS = 60.0   # a uid's groups are looked up again after this long (groups change)
MEMBERS_KEPT = 1024      # uids remembered at most


def _hex_address(host: str, port: int) -> tuple[str, ...]:
    """How /proc/net/tcp{,6} spell `host:port` in each of its `_forms`: each 32-bit
    word of the address in native byte order as %08X, then the port as %04X."""
    return tuple("".join(f"{w:08X}" for w in struct.unpack(f"={len(a.packed) // 4}I", a.packed)) + f":{port:04X}"
                 for a in _forms(host))


def peer_uid(sock: socket.socket, *, diag: bool = True, tables: tuple[str, ...] = PROC_TABLES) -> int | None:
    """The uid owning the other end of `sock`, a TCP connection from this host; None if unknown.

    By sock_diag (`diag`), else by scanning `tables`, rate-limited."""
    try:
        peer, ours = sock.getpeername(), sock.getsockname()
    except OSError:
        return None
    if diag:
        try:
            return _diag_uid(peer[0], peer[1], ours[0], ours[1])
        except OSError:
            pass  # no sock_diag here (an old kernel, a sandbox): the tables
    if not _scan_allowed():
        return None
    return _scan_uid(peer, ours, tables)


def _diag_uid(peer_host: str, peer_port: int, our_host: str, our_port: int) -> int | None:
    """The owner of the socket (peer -> ours) by one SOCK_DIAG_BY_FAMILY request; OSError if unsupported."""
    # Both as the listener sees them, then both in the other family's form (a
    # dual-stack listener sees ::ffff:a.b.c.d; the peer's own socket may be IPv4).
    tries = list(zip(_forms(peer_host), _forms(our_host), strict=False))  # (a pure IPv6 pair has one form)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        for src, dst in tries:
            family = socket.AF_INET if src.version == 4 else socket.AF_INET6
            sockid = (struct.pack(">HH", peer_port, our_port) + src.packed.ljust(16, b"\0")
                      + dst.packed.ljust(16, b"\0") + struct.pack("=III", 0, NO_COOKIE, NO_COOKIE))
            req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid
            nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, 1, 1, 0) + req)  # NLM_F_REQUEST
            answer = nl.recv(8192)
            if len(answer) < 16:
                continue
            kind = struct.unpack_from("=H", answer, 4)[0]
            if kind == NLMSG_ERROR:
                errno_ = -struct.unpack_from("=i", answer, 16)[0]
                if errno_ in (2, 22):  # ENOENT: not this family's; EINVAL: this form makes no sense here
                    continue
                raise OSError(errno_, "sock_diag refused the request")
            if kind == SOCK_DIAG_BY_FAMILY and len(answer) >= 16 + 72:
                uid, inode = struct.unpack_from("=II", answer, 16 + 64)  # inet_diag_msg's idiag_uid, idiag_inode
                # A socket its process closed may be a time-wait entry, uid 0 and
                # inode 0: not root, and nobody to answer.
                return None if inode == 0 else uid
    return None


def _forms(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """`host`, and its IPv6-mapped form (IPv4) or its IPv4 form (IPv6-mapped)."""
    a = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(a, ipaddress.IPv4Address):
        return [a, ipaddress.IPv6Address(f"::ffff:{a}")]
    return [a, a.ipv4_mapped] if a.ipv4_mapped is not None else [a]


_scans: list[float] = []  # when the last scans ran (monotonic), SCANS_PER_SECOND at most a second


def _scan_allowed() -> bool:
    now = time.monotonic()
    while _scans and now - _scans[0] >= 1.0:
        _scans.pop(0)
    if len(_scans) >= SCANS_PER_SECOND:
        return False  # refused, not scanned: the cost of a flood of refused requests stays bounded
    _scans.append(now)
    return True


def _scan_uid(peer: tuple, ours: tuple, tables: tuple[str, ...]) -> int | None:
    """The owner of the socket (peer -> ours) from the /proc tables, or None."""
    theirs, mine = _hex_address(peer[0], peer[1]), _hex_address(ours[0], ours[1])
    for table in tables:
        try:
            with open(table, encoding="ascii", errors="replace") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[1] in theirs and fields[2] in mine:
                        # A socket its process closed may be listed as a time-wait
                        # entry, with uid 0 and inode 0: not root, and nobody to answer.
                        return None if fields[9] == "0" else int(fields[7])
        except (OSError, ValueError):
            continue
    return None


class Readers:
    """Who may read /status and /refs: root, `uid` (the sidecar's), and the members of group `gid`."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid
        self._members: dict[int, tuple[bool, float]] = {}  # uid -> (in the group, looked up at)

    def allow(self, uid: int | None) -> bool:
        if uid is None:
            return False  # another host, or a connection already gone
        if uid in (0, self.uid):
            return True
        now = time.monotonic()
        known = self._members.get(uid)
        if known is not None and now - known[1] < MEMBERS_SECONDS:
            return known[0]
        member = self._is_member(uid)
        if len(self._members) >= MEMBERS_KEPT:
            self._members.clear()
        self._members[uid] = (member, now)
        return member

    def _is_member(self, uid: int) -> bool:
        try:
            user = pwd.getpwuid(uid)
            return self.gid in os.getgrouplist(user.pw_name, user.pw_gid)
        except (KeyError, OSError):  # a uid with no name (another unit's DynamicUser=): not a member
            return False

    def describe(self) -> str:
        """Who may, in words, for the 403's body."""
        try:
            who = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            who = f"uid {self.uid}"
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = f"gid {self.gid}"
        return f"root, {who} and the members of group {group}"
