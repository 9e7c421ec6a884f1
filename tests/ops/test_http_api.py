"""The metrics/health server is bounded whatever local users do (issue 17, item 4):
one thread, a cap on open connections (the oldest gives way), timeouts."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from sidecar.ops.http_api import ApiServer
from sidecar.ops.peers import Readers, peer_uid
from sidecar.ops.status import Health

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def api() -> Iterator[ApiServer]:
    server = ApiServer("127.0.0.1:0", CollectorRegistry(), lambda: None, lambda: Health(ok=True, problems=()),
                       lambda lane, key: "page-1" if (lane, key) == ("notion", "k 1") else None,
                       max_connections=32, timeout=1.0)
    server.start()
    yield server
    server.stop()


def get(api: ApiServer, path: str) -> tuple[int, bytes]:
    host, port = api.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_answers_health_status_refs_and_metrics(api: ApiServer) -> None:
    assert get(api, "/health") == (200, b'{"ok":true,"problems":[]}')
    assert get(api, "/status")[0] == 503  # no snapshot yet
    assert get(api, "/refs/notion/k%201")[0] == 200 and get(api, "/refs/notion/k2")[0] == 404
    assert get(api, "/metrics")[0] == 200
    assert get(api, "/nothing")[0] == 404


def test_1010_idle_connections_cost_no_thread_and_health_still_answers(api: ApiServer) -> None:
    threads = threading.active_count()
    host, port = api.address.rsplit(":", 1)
    idle = []
    try:
        for _ in range(1010):
            s = socket.create_connection((host, int(port)), timeout=5)
            idle.append(s)
        assert get(api, "/health")[0] == 200  # a newcomer closes the oldest idle one
        assert threading.active_count() == threads
        assert len(api._conns) <= api.max_connections
    finally:
        for s in idle:
            s.close()


def test_a_silent_connection_is_closed_after_the_timeout(api: ApiServer) -> None:
    host, port = api.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")  # never finishes its request
        assert s.recv(100) == b""  # closed by the server, within its 1 s (the recv's 5 s would raise)


def test_a_request_too_large_is_refused(api: ApiServer) -> None:
    host, port = api.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nX-Junk: " + b"a" * 9000)
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")


PEER_GET = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(("GET %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % sys.argv[2]).encode())
print(s.recv(100).split(b" ")[1].decode())
"""


def get_as(api: ApiServer, path: str, uid: int, gid: int) -> int:
    """The status code another user's process gets for `path` (a stdlib-only script, run as `uid`)."""
    exe = "/usr/bin/python3"
    if not os.path.exists(exe):
        pytest.skip("no system Python for another user")
    out = subprocess.run([exe, "-c", PEER_GET, api.address.rsplit(":", 1)[1], path], user=uid, group=gid,
                         extra_groups=[], cwd="/", capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout)


def test_status_and_refs_answer_only_the_sidecars_uid_and_group(two_users: tuple[int, int, int]) -> None:
    member, _, gid = two_users
    import pwd
    known = {p.pw_uid for p in pwd.getpwall()}
    stranger = next(u for u in range(54321, 60000) if u not in known)  # no passwd entry: in no group
    server = ApiServer("127.0.0.1:0", CollectorRegistry(), lambda: None, lambda: Health(ok=True, problems=()),
                       lambda lane, key: "page-1", readers=Readers(os.geteuid(), gid))
    server.start()
    try:
        assert get(server, "/refs/notion/k")[0] == 200           # root (this test), and the sidecar's uid
        assert get_as(server, "/refs/notion/k", member, gid) == 200
        assert get_as(server, "/status", member, gid) == 503      # let in (no snapshot yet)
        assert get_as(server, "/status", stranger, stranger) == 403
        assert get_as(server, "/refs/notion/k", stranger, stranger) == 403
        assert get_as(server, "/metrics", stranger, stranger) == 200  # monitoring runs as its own user
        assert get_as(server, "/health", stranger, stranger) == 200
    finally:
        server.stop()


def test_peer_uid_finds_the_connecting_process_over_ipv4_and_ipv6() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            listener = socket.create_server((host, 0), family=family)
        except OSError:
            continue  # no IPv6 loopback here
        with listener, socket.create_connection(listener.getsockname()[:2]):
            conn, _ = listener.accept()
            with conn:
                assert peer_uid(conn) == os.geteuid()                              # sock_diag
                assert peer_uid(conn, diag=False) == os.geteuid()                  # the /proc tables
                assert peer_uid(conn, diag=False, tables=()) is None  # nothing to look in: unknown, so refused
    assert not Readers(os.geteuid(), os.getegid()).allow(None)
