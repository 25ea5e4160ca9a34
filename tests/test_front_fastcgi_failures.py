"""A FastCGI upstream that misbehaves: every way ends in 502/504 or a closed client,
never a hung one. The peer is a small unix-socket server of the test's own (no real
php-fpm sends malformed records)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.fastcgi import STDERR, STDOUT, end_request, stream_records
from tests.process import Front, Launcher, read_all
from tests.support_php import ScriptedPeer, fastcgi_front

#: script name -> what the peer answers (None: nothing, it keeps the connection silent)
ANSWERS: dict[str, bytes | None] = {
    "bad_version": bytes([2, STDOUT, 0, 1, 0, 0, 0, 0]),
    "no_end": stream_records(STDOUT, 1, b"Status: 200\r\n\r\npartial"),
    "no_head": end_request(1),
    "other_id": stream_records(STDOUT, 2, b"Status: 200\r\n\r\nx") + end_request(2),
    "bad_status": stream_records(STDOUT, 1, b"Status: abc\r\n\r\nx") + end_request(1),
    "silent": None,
    "ok": stream_records(STDOUT, 1, b"Status: 418 Teapot\r\nX-A: 1\r\n\r\nbody")
    + stream_records(STDERR, 1, b"a warning")
    + stream_records(STDOUT, 1, b"")
    + end_request(1),
    "huge_head": stream_records(STDOUT, 1, b"X: " + b"a" * 60000)
    + stream_records(STDOUT, 1, b"a" * 60000),
}


class Peer(ScriptedPeer):
    """Reads a FastCGI request to its params' end and answers with the bytes the
    script's name picks, then closes (but for "silent")."""

    def __init__(self, path: Path) -> None:
        self.held: list[socket.socket] = []
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        # the empty STDIN record ends a GET's request
        while b"\x01\x05\x00\x01\x00\x00\x00\x00" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        name = next((n for n in ANSWERS if f"/{n}.php".encode() in data), "ok")
        answer = ANSWERS[name]
        if answer is None:
            self.held.append(conn)
            return
        conn.sendall(answer)
        conn.close()

    def close(self) -> None:
        super().close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def front(module_launch: Launcher) -> Iterator[Front]:
    base = module_launch.workdir
    os.chmod(base, 0o755)
    root = base / "site"
    root.mkdir()
    os.chmod(root, 0o755)
    for name in ANSWERS:
        (root / f"{name}.php").write_text("<?php\n")
    peer = Peer(base / "fcgi.sock")
    try:
        yield module_launch.front(
            fastcgi_front(
                base / "fcgi.sock",
                f"""
[[front.server.location]]
modifier = "~"
path = "\\\\.php$"
root = "{root}"
try_files = ["$uri", "=404"]
proxy = "php"
""",
                read_timeout=1,
                max_tries=1,
            )
        )
    finally:
        peer.close()


@pytest.mark.parametrize("name", ["bad_version", "no_head", "other_id", "bad_status", "huge_head"])
def test_malformed_answers_are_502(front: Front, name: str) -> None:
    started = time.monotonic()
    response, _ = front.request("GET", f"/{name}.php")
    assert response.status == 502
    assert time.monotonic() - started < 5
    assert "FastCGI" in front.log_text() or "closed" in front.log_text()


def test_a_close_before_end_request_closes_the_client(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(b"GET /no_end.php HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_all(sock, limit=5)
    # the head was out: the client sees the body cut (no last chunk) and the close
    assert data.startswith(b"HTTP/1.1 200") and b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")


def test_a_silent_peer_is_a_504(front: Front) -> None:
    response, _ = front.request("GET", "/silent.php")
    assert response.status == 504


def test_a_good_answer_after_the_bad_ones(front: Front) -> None:
    response, body = front.request("GET", "/ok.php")
    assert response.status == 418 and body == b"body"
    assert response.reason == "Teapot" and response.getheader("X-A") == "1"
    assert "a warning" in front.log_text()
