"""The journal is private whatever the umask (issue 17, item 7): its directory
0700, journal.db with its -wal and -shm and every spooled blob 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.journal.store import Journal


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_a_new_journal_is_private(tmp_path: Path) -> None:
    d = tmp_path / "state" / "journal"
    journal = Journal.open(d, synchronous="NORMAL")
    journal.write_batch([], clients={"c1": (1, 0, False, None)})
    blob = Path(journal.spool.put(b"secret report"))
    assert mode(d) == 0o700 and mode(d / "blobs") == 0o700
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        assert mode(d / name) == 0o600, name
    assert mode(blob) == 0o600
    journal.close()


@pytest.mark.usefixtures("umask_022")
def test_an_existing_journal_left_readable_is_made_private(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j", synchronous="NORMAL")
    journal.close()
    for path in (tmp_path / "j", tmp_path / "j" / "blobs"):
        path.chmod(0o755)
    (tmp_path / "j" / "journal.db").chmod(0o644)
    Journal.open(tmp_path / "j", synchronous="NORMAL").close()
    assert mode(tmp_path / "j") == 0o700 and mode(tmp_path / "j" / "blobs") == 0o700
    assert mode(tmp_path / "j" / "journal.db") == 0o600


@pytest.mark.usefixtures("umask_022")
def test_a_shared_directory_given_as_the_journal_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "someone-elses-file").write_text("x")
    Journal.open(shared, synchronous="NORMAL").close()
    assert mode(shared) == 0o755  # not the journal's to take from its other users
    assert mode(shared / "journal.db") == 0o600
