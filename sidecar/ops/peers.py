"""Who is at the other end of a loopback TCP connection, and whether they may read the sidecar's status.

    uid = peer_uid(sock)                    # 1001; None: another host, gone, or not Linux
    readers = Readers(os.geteuid(), os.getegid())
    readers.allow(uid)                      # root, the sidecar's uid, or a member of its group

The HTTP API answers any local user (a TCP port has no file mode). /metrics
and /health are for monitoring, which runs as its own user; /status and
/refs name the producers (client ids, pids, uids) and what delivery made
(page ids, image URLs), so they go only to the sidecar's own people: root,
the sidecar's uid, and the members of its group (the unit's `Group=`, the
trading group). Linux lists every TCP socket with its owner's uid in
/proc/net/tcp and tcp6; the client's end of a loopback connection is the row
whose local address is our peer's and whose remote address is ours.
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
MEMBERS_SECONDS = 60.0   # a uid's groups are looked up again after this long (groups change)
MEMBERS_KEPT = 1024      # uids remembered at most


def _hex_address(host: str, port: int) -> tuple[str, ...]:
    """How /proc/net/tcp{,6} spell `host:port`: each 32-bit word of the address in
    native byte order as %08X, then the port as %04X. An IPv4 address is also given
    in its IPv6-mapped form (a dual-stack socket's view of it), and the reverse."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    forms: list[bytes] = []
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        forms = [addr.packed, addr.ipv4_mapped.packed]
    elif isinstance(addr, ipaddress.IPv4Address):
        forms = [addr.packed, ipaddress.IPv6Address(f"::ffff:{addr}").packed]
    else:
        forms = [addr.packed]
    return tuple("".join(f"{w:08X}" for w in struct.unpack(f"={len(b) // 4}I", b)) + f":{port:04X}"
                 for b in forms)


def peer_uid(sock: socket.socket, tables: tuple[str, ...] = PROC_TABLES) -> int | None:
    """The uid owning the other end of `sock`, a TCP connection from this host; None if unknown."""
    try:
        peer, ours = sock.getpeername(), sock.getsockname()
    except OSError:
        return None
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
