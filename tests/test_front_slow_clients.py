"""Slow and greedy clients: minimum rates for heads and bodies (mod_reqtimeout's MinRate),
keepalive_requests, worker_connections and max_connections_per_address. 1,000
connections dripping a head one byte a second are cut at the minimum rate while a normal
client's requests are all answered."""

from __future__ import annotations

import http.client
import selectors
import socket
import threading
import time
from pathlib import Path

from tests.process import Front, Launcher, wait_for

SITE = """
[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""


def _front(launch: Launcher, tmp: Path, settings: str) -> Front:
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    config = '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n' + settings + SITE.format(root=root)
    return launch.front(config)


def _get(sock: socket.socket, path: str = "/") -> http.client.HTTPResponse:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


class NormalClient(threading.Thread):
    """Requests one after another on fresh connections until told to stop (bounded)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.statuses: list[int] = []
        self.slowest = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.statuses) < 10_000:
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    self.statuses.append(_get(sock).status)
            except OSError:
                self.statuses.append(0)
            self.slowest = max(self.slowest, time.monotonic() - started)
            time.sleep(0.02)


def test_a_thousand_slow_heads_are_cut_while_a_normal_client_is_served(
    launch: Launcher, short_tmp: Path
) -> None:
    front = _front(
        launch,
        short_tmp,
        'client_header_timeout = "60s"\nclient_header_min_rate = "100b/s"\n'
        'client_min_rate_grace = "2s"\n',
    )
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"x" * 100 + b"\r\n\r\n"
    selector = selectors.DefaultSelector()
    slow: dict[socket.socket, float] = {}
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
        sock.setblocking(False)
        slow[sock] = 0.0
        selector.register(sock, selectors.EVENT_READ)
    normal = NormalClient(front.port)
    normal.start()
    cut_after: list[float] = []
    answers: list[bytes] = []
    try:
        started = time.monotonic()
        sent = 0
        next_byte = started
        # one byte a second on each connection, until all are cut (bounded: 8 s)
        while slow and time.monotonic() - started < 8.0:
            now = time.monotonic()
            if now >= next_byte and sent < len(head):
                for sock in list(slow):
                    try:
                        sock.send(head[sent : sent + 1])
                    except OSError:
                        pass
                    if not slow[sock]:
                        slow[sock] = now
                sent += 1
                next_byte += 1.0
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                answers.append(data[:12])
                cut_after.append(time.monotonic() - slow.pop(sock))
                selector.unregister(sock)
                sock.close()
    finally:
        normal.stop.set()
        normal.join(10)
        for sock in slow:
            sock.close()
        selector.close()
    assert not slow, f"{len(slow)} slow connections still open after 8 s"
    # 2 s of grace plus a byte's worth at 100 b/s, seen by a sweep that runs each second
    assert min(cut_after) > 1.5, min(cut_after)
    assert max(cut_after) < 5.0, max(cut_after)
    assert set(answers) <= {b"HTTP/1.1 408", b""}, set(answers)
    assert normal.statuses and set(normal.statuses) == {200}, normal.statuses
    assert len(normal.statuses) >= 20
    assert "below its minimum rate" in front.log_text()


def test_a_slow_body_is_cut_at_its_minimum_rate(launch: Launcher, short_tmp: Path) -> None:
    front = _front(
        launch,
        short_tmp,
        'client_body_timeout = "60s"\nclient_body_min_rate = "100b/s"\n'
        'client_min_rate_grace = "1s"\n',
    )
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nx")
        started = time.monotonic()
        data = b""
        while not data:
            time.sleep(0.5)
            try:
                sock.sendall(b"x")
            except OSError:
                pass
            sock.settimeout(0.01)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                data = b""
            assert time.monotonic() - started < 6, "the slow body was not cut"
    assert data.startswith(b"HTTP/1.1 408 ")
    assert 0.9 < time.monotonic() - started < 4.0


def test_keepalive_requests_ends_the_connection(launch: Launcher, short_tmp: Path) -> None:
    front = _front(launch, short_tmp, "keepalive_requests = 3\n")
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        closes = [_get(sock).getheader("Connection") for _ in range(3)]
        assert closes[:2] != ["close", "close"] and closes[2] == "close", closes
        assert sock.recv(10) == b""


def _closed_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """Whether a new connection is closed by the front without a byte (False: it stays
    open, waiting for a request, for half a second)."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.5)
        try:
            return sock.recv(10) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def _fresh_status(port: int) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return _get(sock).status
    except (OSError, http.client.HTTPException):
        return 0


def test_worker_connections_refuses_new_ones_and_serves_the_open(
    launch: Launcher, short_tmp: Path
) -> None:
    front = _front(launch, short_tmp, "worker_connections = 20\n")
    held = [socket.create_connection(("127.0.0.1", front.port), timeout=10) for _ in range(20)]
    try:
        assert _get(held[-1]).status == 200  # the 20th is in
        assert _closed_at_once(front.port)
        for sock in held:  # the open ones are served
            assert _get(sock).status == 200
        assert wait_for(lambda: "worker_connections reached" in front.log_text(), 5)
        held.pop().close()
        assert wait_for(lambda: _fresh_status(front.port) == 200, 5)
    finally:
        for sock in held:
            sock.close()


def test_max_connections_per_address(launch: Launcher, short_tmp: Path) -> None:
    front = _front(launch, short_tmp, "max_connections_per_address = 3\n")
    held = [socket.create_connection(("127.0.0.1", front.port), timeout=10) for _ in range(3)]
    try:
        assert _get(held[-1]).status == 200
        assert _closed_at_once(front.port)
        assert not _closed_at_once(front.port, "127.0.0.2")  # another address is in
        for sock in held:
            assert _get(sock).status == 200
        held.pop().close()
        # the count follows the close: a new one is in again
        assert wait_for(lambda: _fresh_status(front.port) == 200, 5)
        assert wait_for(lambda: "max_connections_per_address reached" in front.log_text(), 5)
    finally:
        for sock in held:
            sock.close()
