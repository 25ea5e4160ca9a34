"""gantry front under load and hostile clients: slow readers, a backend stopped mid-load,
malformed input, allow/deny over IPv4 and IPv6."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.process import Front, GantryServer
from tests.support_refusals import MAX_BODY, REFUSALS, read_until_closed


def _front(tmp_path: Path, body: str) -> Front:
    front = Front(body, tmp_path)
    front.start()
    return front


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _trickle(port: int, path: str, pid: int, seconds: float = 2.0) -> tuple[int, int]:
    """GET ``path`` and read 4 KiB every 20 ms for ``seconds``; (bytes read, peak RSS KiB)."""
    peak = 0
    got = 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got += len(sock.recv(4096))
            peak = max(peak, _rss_kib(pid))
            time.sleep(0.02)
    return got, peak


def test_slow_reader_does_not_grow_the_worker(tmp_path: Path) -> None:
    """A 200 MiB proxied stream and a 50 MiB file read at a trickle: the worker's RSS
    stays within 16 MiB of where it started (the upstream and the file wait)."""
    big = tmp_path / "site" / "big.bin"
    big.parent.mkdir()
    with big.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
    app = GantryServer("tests.apps_contract:app", log_path=tmp_path / "app.log")
    app.start()
    front = _front(
        tmp_path,
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/site/"
root = "{tmp_path}"
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{app.port}" }}]
""",
    )
    try:
        assert front.process is not None
        pid = front.process.pid  # one worker runs in the front process itself
        assert front.request("GET", "/hello")[0].status == 200
        assert front.request("GET", "/site/big.bin", headers={"Range": "bytes=0-9"})[1] == bytes(10)
        before = _rss_kib(pid)
        for path in ("/big-stream", "/site/big.bin"):
            got, peak = _trickle(front.port, path, pid)
            assert got > 100_000, path  # it did flow
            assert peak - before < 16 * 1024, (path, before, peak)
        assert front.request("GET", "/hello")[0].status == 200  # the worker is fine after
    finally:
        front.stop()
        app.stop()


def test_stopping_a_backend_under_load_loses_no_idempotent_request(tmp_path: Path) -> None:
    """Four clients send GETs (at most 600, at most 15 s) while one of two backends stops
    gracefully: every response is 200, and both backends had served before the stop."""
    one = GantryServer("tests.apps_process:app", log_path=tmp_path / "one.log")
    two = GantryServer("tests.apps_process:app", log_path=tmp_path / "two.log")
    one.start()
    two.start()
    front = _front(
        tmp_path,
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "pool"
[front.upstream.pool]
servers = [{{ address = "127.0.0.1:{one.port}" }}, {{ address = "127.0.0.1:{two.port}" }}]
""",
    )
    results: list[tuple[int, bytes]] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 15

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
        for _ in range(150):
            if time.monotonic() > deadline:
                break
            try:
                conn.request("GET", "/pid")
                response = conn.getresponse()
                item = (response.status, response.read())
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
                continue
            with lock:
                results.append(item)
        conn.close()

    try:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        while len(results) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        before_stop = {body for _, body in results}
        one.stop()
        for thread in threads:
            thread.join(timeout=20)
        assert errors == []
        assert len(results) >= 300
        assert {status for status, _ in results} == {200}
        assert len(before_stop) == 2
    finally:
        front.stop()
        one.stop()
        two.stop()


@pytest.fixture(scope="module")
def refusal_front(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("frontrefusals")
    app = GantryServer("tests.apps_refusal:app", log_path=workdir / "app.log")
    app.start()
    front = _front(
        workdir,
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
client_max_body_size = {MAX_BODY}
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{app.port}" }}]
""",
    )
    try:
        yield front
    finally:
        front.stop()
        app.stop()


@pytest.mark.parametrize("name", REFUSALS)
def test_malformed_input_gets_the_application_server_refusal(
    refusal_front: Front, name: str
) -> None:
    """The corpus gantry serve is held to (tests/test_http1_refusals_socket.py): the same
    status from the front, then a close."""
    payload, status = REFUSALS[name]
    with socket.create_connection(("127.0.0.1", refusal_front.port), timeout=5) as sock:
        sock.sendall(payload)
        result = read_until_closed(sock, 2.0)
    assert result.statuses == [status], result.data[:300]
    assert result.closed


def test_allow_deny_per_server_and_location_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("file")
    front = Front(
        """
[front]
listen = ["127.0.0.1:FRONT_PORT", "[::1]:FRONT_PORT"]
[[front.server]]
server_name = ["closed.test"]
access = ["deny 127.0.0.0/8", "allow all"]
[[front.server.location]]
path = "/"
alias = "TMP/"
[[front.server]]
default = true
[[front.server.location]]
path = "/v4only/"
alias = "TMP/"
access = ["allow 127.0.0.1/32", "deny all"]
[[front.server.location]]
path = "/v6only/"
alias = "TMP/"
access = ["deny 127.0.0.1", "allow ::1/128", "deny all"]
""".replace("TMP", str(tmp_path)),
        tmp_path,
    )
    front.start()
    port = front.port

    def status(host: str, path: str, vhost: str = "t") -> int:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": vhost})
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        assert status("127.0.0.1", "/f.txt", "closed.test") == 403
        assert status("::1", "/f.txt", "closed.test") == 200
        assert status("127.0.0.1", "/v4only/f.txt") == 200
        assert status("::1", "/v4only/f.txt") == 403
        assert status("127.0.0.1", "/v6only/f.txt") == 403
        assert status("::1", "/v6only/f.txt") == 200
    finally:
        front.stop()


def test_big_upload_through_the_front_keeps_memory_flat(tmp_path: Path) -> None:
    """A 20 MiB upload streamed (request_buffering = false) to gantry serve: intact, and the
    front worker's RSS does not take the body in."""
    app = GantryServer("tests.apps_contract:app", log_path=tmp_path / "app.log")
    app.start()
    front = _front(
        tmp_path,
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
request_buffering = false
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{app.port}" }}]
""",
    )
    try:
        assert front.process is not None
        assert front.request("GET", "/hello")[0].status == 200
        before = _rss_kib(front.process.pid)
        size = 20 * 1024 * 1024
        piece = os.urandom(256 * 1024)
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(piece)):
                sock.sendall(piece)
            expected = b"%d:%d" % (size, size)
            data = b""
            deadline = time.monotonic() + 10
            while not data.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        assert data.startswith(b"HTTP/1.1 200") and expected in data, data
        assert _rss_kib(front.process.pid) - before < 16 * 1024
    finally:
        front.stop()
        app.stop()
