"""Kept uwsgi connections between gantry front and gantry serve (gantry's own packet, or
GANTRY_KEEPALIVE=1 in a standard one)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.uwsgi import GANTRY_MODIFIER2, parse_gantry_packet, parse_packet
from tests.process import GantryServer
from tests.test_front import Front


class CountingUwsgiServer:
    """A uwsgi peer on a unix socket that counts connections and answers framed responses
    while the front asks to keep the connection (a real socket, to see what the front does).
    ``flags``: per packet, b"gantry" for gantry's own packet, else its GANTRY_KEEPALIVE."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.accepted = 0
        self.flags: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(5)
        with conn:
            for _ in range(1000):
                gantry = buffer[3:4] == bytes((GANTRY_MODIFIER2,))
                parsed = parse_gantry_packet(buffer) if gantry else parse_packet(buffer)
                if parsed is None:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                    continue
                used = parsed[-1]
                if gantry:
                    fields = parsed[0]
                    assert isinstance(fields, list)
                    environ = dict(zip(fields[::2], fields[1::2], strict=True))
                    assert environ["PATH_INFO"] == "/x" and environ["REQUEST_METHOD"] == "GET"
                    flag = b"gantry"
                else:
                    flag = dict(parsed[1]).get(b"GANTRY_KEEPALIVE", b"")  # type: ignore[arg-type]
                buffer = buffer[used:]
                self.flags.append(flag)
                kept = flag in (b"1", b"gantry")
                body = b"kept" if kept else b"closing"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
                if not kept:
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "app"

[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
gantry_keepalive = {keep}
"""


@pytest.fixture()
def peer(tmp_path: Path) -> Iterator[CountingUwsgiServer]:
    server = CountingUwsgiServer(str(tmp_path / "peer.sock"))
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("keep", [True, False])
def test_front_reuses_kept_connections_only_when_asked(
    tmp_path: Path, peer: CountingUwsgiServer, keep: bool
) -> None:
    front = Front(CONFIG.format(sock=peer.path, keep=str(keep).lower()), tmp_path)
    front.start()
    try:
        for _ in range(10):
            response, body = front.request("GET", "/x")
            assert response.status == 200
            assert body == (b"kept" if keep else b"closing")
    finally:
        front.stop()
    if keep:
        assert peer.accepted == 1 and peer.flags == [b"gantry"] * 10
    else:
        assert peer.accepted == 10 and peer.flags == [b""] * 10


def test_kept_connections_to_gantry_serve_under_reload(tmp_path: Path) -> None:
    """Many requests over kept connections while the pool reloads (SIGHUP to its master):
    the front retries a kept connection the pool closed on a new one; none fails."""
    sock = tmp_path / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), "--workers", "2",
        log_path=tmp_path / "app.log", http=False,
    )  # fmt: skip
    app.start(wait_for=str(sock))
    front = Front(CONFIG.format(sock=sock, keep="true"), tmp_path)
    front.start()
    failures: list[str] = []
    served = 0
    try:
        reload_at = time.monotonic() + 0.5
        end = reload_at + 3.0
        for _ in range(20_000):  # bounded; about 3.5 s
            now = time.monotonic()
            if now > end:
                break
            if reload_at and now >= reload_at:
                reload_at = 0.0
                assert app.process is not None
                app.process.send_signal(signal.SIGHUP)  # new workers; the old ones finish
            response, body = front.request("GET", "/hello")
            served += 1
            if (response.status, body) != (200, b"Hello World!"):
                failures.append(f"{response.status} {body[:60]!r}")
        assert "reload" in app.log_text().lower(), app.log_text()[-2000:]
    finally:
        front.stop()
        app.stop()
    assert served > 100 and failures == []
