"""Adoption: the rings in the directory found, checked and opened, within a descriptor budget.

    adopter = Adopter(place, metrics, budget=fd_budget(), max_record=largest, inbox=inbox)
    adopter.scan(rings, now)             # new rings added to `rings` (path -> Ring), live producers' first

Descriptors are budgeted: at most `budget` rings are held open (by default
half of RLIMIT_NOFILE at two descriptors a ring; the rest is for the
journal, sockets and HTTP), rings whose producer is alive first (one read of
/proc/locks tells which); an fd shortage defers a ring (counted in
`sidecar_rings_deferred_total`), never quarantines it. A file that is not a
ring, or breaks its header, is moved to ``quarantine/`` (`RingDirectory`)
and its producer told, if it can hear.

A client id names its owner: a Client's id is ``<uid>u<pid>-<12 hex>``
(`client.ring.new_client_id`), and a ring whose id claims a uid other than
the file's owner (a ``<victim>.ring`` or ``<victim>.1.ring`` made by someone
who saw the id) is quarantined unread (``wrong_owner``); such ids are not
remembered anywhere, the id itself is the proof. An id without the mark (a
client from before it, ``<pid>-<12 hex>``) still belongs to the owner uid of
its first ring adopted, and a later ring of that id owned by another uid is
quarantined unread (``wrong_owner``). That binding is kept in the journal
(`Owners`, the `client_owners` table), so a restart does not hand the id to
whichever ring is adopted first; a uid adds at most MAX_SAVED_PER_UID of
them to the journal, counting those it had at start (beyond: in memory
only, said once), so a member of the group making rings in bulk cannot grow
the table unbounded.

One uid holds at most a quarter of the budget while the budget's last quarter is all that is left (`UID_SHARE`): a member of the
group filling the budget with live, empty rings still leaves room for
another uid's producer (deferred: ``fd_budget_uid``).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import sqlite3
import stat
from typing import Protocol

from client import ring as layout
from client.ring import FileHeader, RingCorrupt
from sidecar.ingest.inbox import Inbox
from sidecar.ingest.ring_control import Control, V1Control, open_ack_file, tell_producer
from sidecar.ingest.ring_dir import CLEAN_SECONDS, RingDirectory
from sidecar.ingest.ring_files import reopen_rw
from sidecar.ingest.ring_reader import MAX_POSITION, Ring
from sidecar.ops.metrics import Metrics

log = logging.getLogger("sidecar.rings")

FD_RESERVE = 128               # descriptors never given to rings: journal, sockets, HTTP, metrics
FDS_PER_RING = 2               # the ring's own, and the dup that mmap keeps of its ack file's
UID_SHARE = 4                  # the budget's last 1/UID_SHARE only for uids holding less than that share
MAX_BOUND_IDS = 100_000        # client id -> owner uid bindings remembered (beyond: unheld ones forgotten)
MAX_SAVED_PER_UID = 4096       # legacy-id bindings a uid may add to the journal (beyond: kept in memory only)
_SHORT = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)  # out of descriptors or mappings: try later


class Owners(Protocol):
    """Where client id -> owner uid bindings outlive the process (the journal's `Clients`)."""

    def owners(self, limit: int) -> dict[str, int]: ...
    def owner(self, client_id: str) -> int | None: ...
    def bind_owner(self, client_id: str, uid: int) -> None: ...


def fd_budget() -> int:
    """How many rings may be held open: half the soft RLIMIT_NOFILE, with
    FD_RESERVE left for everything else, at two descriptors a ring (its
    file, and its mapped ack file: Python's mmap keeps a dup), but at least 8."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(8, min(soft - FD_RESERVE, soft // 2) // FDS_PER_RING)


def flocked_inodes() -> set[int] | None:
    """Inodes some process holds an flock on (/proc/locks), or None if unknown.

    One read tells which of thousands of rings have a live producer,
    without a descriptor for each."""
    try:
        with open("/proc/locks", "rb") as f:
            text = f.read(8 << 20)
    except OSError:
        return None
    inodes = set()
    for line in text.splitlines():
        fields = line.split()
        if b"FLOCK" in fields and b"->" not in fields:
            for f_ in fields:
                if f_.count(b":") == 2:
                    try:
                        inodes.add(int(f_.rsplit(b":", 1)[1]))
                    except ValueError:
                        pass
                    break
    return inodes


class Adopter:
    """Opens the rings of one directory as they appear, as many as `budget` allows."""

    def __init__(self, place: RingDirectory, metrics: Metrics, *, budget: int, max_record: int = 0,
                 inbox: Inbox | None = None, owners: Owners | None = None) -> None:
        self.place = place
        self.metrics = metrics
        self.budget = budget
        self.max_record = max_record   # the longest record body ingest accepts (0: the ring's own bound)
        self.inbox = inbox
        self._deferred_logged = float("-inf")
        self.store = owners
        self.owners: dict[str, int] = {}  # client id -> the uid of its first adopted ring
        self._unsaved: dict[str, int] = {}  # bindings the journal could not take yet (written at the next scan)
        self._saved: dict[int, int] = {}  # uid -> bindings it has in the journal (as far as loaded)
        self._told_full: set[int] = set()
        if owners is not None:
            try:
                self.owners = owners.owners(MAX_BOUND_IDS)
                for bound_uid in self.owners.values():
                    self._saved[bound_uid] = self._saved.get(bound_uid, 0) + 1
            except sqlite3.Error as exc:  # the journal's health reports it; ids bind afresh meanwhile
                log.warning("could not read the client ids' owners from the journal: %s", exc)

    def scan(self, rings: dict[str, Ring], now: float) -> None:
        """Adopt the rings not in `rings` yet into it, as many as the fd budget allows, live producers' first."""
        directory = self.place.directory
        for cid, uid in list(self._unsaved.items()):
            self._save(cid, uid)
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            log.error("cannot list the ring directory %s: %s", directory, exc.strerror)
            return
        waiting = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(layout.RING_SUFFIX) or entry.path in rings \
                    or entry.path in self.place.ignored:
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if not regular:  # a directory, symlink, FIFO, socket: moved aside, never opened
                self.place.quarantine_path(entry.path, "not a regular file", pid=None, reason="not_a_file")
                continue
            waiting.append(entry)
        # A client's first ring (no ".N" suffix) before its later ones: after a restart, the
        # owner its id is bound to is more likely the one that made the id's first ring.
        waiting.sort(key=lambda e: e.name.count(".") > 1)
        room = self.budget - len(rings)
        if len(waiting) > min(room, 8):  # more than a few: descriptors may run out before the budget does
            live = flocked_inodes()
            if live:
                waiting.sort(key=lambda e: e.inode() not in live)  # stable: live producers' rings first
        held: dict[int, int] = {}
        for r in rings.values():
            held[r.owner_uid] = held.get(r.owner_uid, 0) + 1
        share = max(1, self.budget // UID_SHARE)
        over_uid = done = 0
        for entry in waiting:
            if len(rings) >= self.budget:
                break
            done += 1
            try:
                uid = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                continue  # gone since the listing
            if held.get(uid, 0) >= share and self.budget - len(rings) <= share:
                over_uid += 1  # the last share of the budget is for other uids' producers
                continue
            if not self._adopt(rings, entry.path, entry.name, now):
                done -= 1
                break  # out of descriptors: the rest wait for the next scan
            if entry.path in rings:
                held[uid] = held.get(uid, 0) + 1
        if over_uid:
            self._defer("fd_budget_uid", over_uid, now, len(rings))
        if len(waiting) > done:
            self._defer("fd_budget", len(waiting) - done, now, len(rings))

    def _adopt(self, rings: dict[str, Ring], path: str, name: str, now: float) -> bool:
        """Open, check and start reading one ring; False if descriptors ran short (try later)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # gone since the listing
        except OSError as exc:
            if exc.errno in _SHORT:
                self._defer("fd_shortage", 1, now, len(rings))
                return False
            self.place.quarantine_path(path, f"cannot open it: {exc.strerror}", pid=None, reason="unopenable")
            return True
        control: Control | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingCorrupt("not a regular file")
            header = FileHeader(os.pread(fd, 128, 0), st.st_size, name)
            if not self._owner_ok(header.client_id, st.st_uid, rings):
                os.close(fd)
                claimed = layout.id_uid(header.client_id)
                owner = self.owners[header.client_id] if claimed is None else claimed
                self.place.quarantine_path(path, f"client id {header.client_id} belongs to uid "
                                           f"{owner}, but uid {st.st_uid} made this ring",
                                           pid=header.pid, client=header.client_id, reason="wrong_owner")
                return True
            if header.version == layout.VERSION_V1:
                fd = reopen_rw(fd)  # the sidecar writes a version-1 ring's read position into it
                control = V1Control(fd)
            else:
                control = open_ack_file(self.place.directory, name, header.created_ns, st.st_ino)
            acked = control.read_pos()
            if acked & 7 or acked > MAX_POSITION:
                raise RingCorrupt(f"read position {acked} is not 8-aligned or is past any real ring's")
        except OSError as exc:
            os.close(fd)
            if control is not None:
                control.close()
            if exc.errno in _SHORT:
                self._defer("fd_shortage", 1, now, len(rings))
                return False
            self.place.quarantine_path(path, f"cannot read it: {exc.strerror}", pid=None, reason="unopenable")
            return True
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it goes aside
            os.close(fd)
            if control is not None:
                control.close()
            tell_producer(self.place.directory, path, name)
            self.place.quarantine_path(path, str(exc), pid=None)
            return True
        ring = Ring(path, fd, header, acked, largest=self.max_record, control=control, owner_uid=st.st_uid,
                    adopted_at=now, inbox=self.inbox)
        rings[path] = ring
        log.info("adopted ring %r (client %s, pid %d, uid %d, version %d, %d bytes, read from %d)", ring.name,
                 header.client_id, header.pid, st.st_uid, header.version, header.capacity, acked)
        return True

    def _owner_ok(self, client_id: str, uid: int, rings: dict[str, Ring]) -> bool:
        """Whether `uid` may write as `client_id`: the uid the id claims (``<uid>u...``),
        else (an id of a client before that mark) the first uid to write as it binds it."""
        claimed = layout.id_uid(client_id)
        if claimed is not None:
            return claimed == uid  # the id proves its owner: nothing to remember
        bound = self.owners.get(client_id)
        if bound is None and self.store is not None:
            try:
                bound = self.store.owner(client_id)  # forgotten from memory (bounded), or bound before a restart
            except sqlite3.Error:
                bound = None
        if bound is not None:
            self.owners[client_id] = bound
            return bound == uid
        if len(self.owners) >= MAX_BOUND_IDS:  # bounded: forget the oldest ids no ring is read for now
            live = {r.header.client_id for r in rings.values()}
            for cid in [c for c in self.owners if c not in live][:MAX_BOUND_IDS // 10]:
                del self.owners[cid]
        self.owners[client_id] = uid
        if self._saved.get(uid, 0) < MAX_SAVED_PER_UID:
            self._saved[uid] = self._saved.get(uid, 0) + 1
            self._save(client_id, uid)
        elif uid not in self._told_full:
            self._told_full.add(uid)
            log.warning("uid %d has bound %d client ids without the uid mark; more are bound in memory only "
                        "(an old client version, or a member of the group making rings in bulk)", uid,
                        MAX_SAVED_PER_UID)
        return True

    def _save(self, client_id: str, uid: int) -> None:
        """Keep a new binding in the journal; if it cannot be written now, at the next scan."""
        if self.store is None:
            return
        try:
            self.store.bind_owner(client_id, uid)
            self._unsaved.pop(client_id, None)
        except sqlite3.Error:  # disk full, read-only: the binding holds in memory meanwhile
            if len(self._unsaved) < MAX_BOUND_IDS:
                self._unsaved[client_id] = uid

    def _defer(self, reason: str, n: int, now: float, held: int) -> None:
        self.metrics.rings_deferred.labels(reason=reason).inc(n)
        if now - self._deferred_logged >= CLEAN_SECONDS:  # logged once a minute at most
            self._deferred_logged = now
            log.warning("%d ring(s) in %s wait for a descriptor (%s; %d rings held, budget %d): they are read "
                        "as others finish", n, self.place.directory, reason, held, self.budget)
