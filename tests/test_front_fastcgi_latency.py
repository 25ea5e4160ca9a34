"""What the front adds between a FastCGI answer and the next request (issue 20): the
request's write side is closed once it is all sent (php-fpm's child, its answer out,
reads until the peer's close before it takes the next connection), and an answer
that comes whole goes to the client in one piece with its Content-Length.

The peer is a small unix-socket server of the test's own that does what php-fpm's
``fcgi_close`` does, and says whether the close was there before it answered."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.fastcgi import STDIN, STDOUT, end_request, stream_records
from tests.process import Front, Launcher
from tests.support_php import ScriptedPeer, fastcgi_front

EMPTY_STDIN = stream_records(STDIN, 1, b"")
ANSWERS = {
    "/hello.php": stream_records(STDOUT, 1, b"Content-Type: text/plain\r\n\r\nhello\n")
    + end_request(1),
    "/teapot.php": stream_records(STDOUT, 1, b"Status: 418 Teapot\r\n\r\nshort and stout")
    + end_request(1),
    "/error.php": stream_records(STDOUT, 1, b"Status: 500 Oops\r\n\r\nbroken") + end_request(1),
    # an answer in two reads: the record loop relays it as it comes (chunked)
    "/slow.php": stream_records(STDOUT, 1, b"X-A: 1\r\n\r\nfirst "),
}


class Peer(ScriptedPeer):
    """Takes a connection at a time, reads the request to its empty STDIN record,
    notes whether the front's close follows within ``wait`` seconds, answers, then
    shuts its side and reads until the close, as php-fpm does."""

    def __init__(self, path: Path, wait: float = 0.5) -> None:
        self.wait = wait
        #: script -> whether the request's write side was closed before the answer
        self.closed_first: dict[str, bool] = {}
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        while not data.endswith(EMPTY_STDIN):
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        script = next(s for s in [*ANSWERS, "/upload.php"] if s.encode() in data)
        conn.settimeout(self.wait)
        try:
            self.closed_first[script] = conn.recv(1) == b""
        except TimeoutError:
            self.closed_first[script] = False
        conn.settimeout(5)
        conn.sendall(ANSWERS.get(script, ANSWERS["/hello.php"]))
        if script == "/slow.php":
            threading.Event().wait(0.2)  # the rest in another read
            conn.sendall(stream_records(STDOUT, 1, b"second") + end_request(1))
        conn.shutdown(socket.SHUT_WR)
        try:
            while conn.recv(8):
                pass
        except OSError:
            pass


@pytest.fixture(scope="module")
def front(module_launch: Launcher) -> Iterator[tuple[Front, Peer]]:
    base = module_launch.workdir
    os.chmod(base, 0o755)
    root = base / "site"
    root.mkdir()
    for name in ANSWERS:
        (root / name.lstrip("/")).write_text("<?php\n")
    (root / "upload.php").write_text("<?php\n")
    (root / "dirs" / "x.php").mkdir(parents=True)  # a directory named like a script
    peer = Peer(base / "fcgi.sock")
    try:
        front = module_launch.front(
            fastcgi_front(
                base / "fcgi.sock",
                f"""
[[front.server.location]]
modifier = "="
path = "/upload.php"
root = "{root}"
proxy = "php"
request_buffering = false

[[front.server.location]]
modifier = "~"
path = "^/dirs/"
root = "{root}"
try_files = ["$uri/", "=404"]
proxy = "php"

[[front.server.location]]
modifier = "~"
path = "\\\\.php$"
root = "{root}"
try_files = ["$uri", "=404"]
proxy = "php"
""",
                max_tries=1,
            )
        )
        yield front, peer
    finally:
        peer.close()


def test_the_request_side_is_closed_once_sent(front: tuple[Front, Peer]) -> None:
    client, peer = front
    response, body = client.request("GET", "/hello.php")
    assert response.status == 200 and body == b"hello\n"
    assert peer.closed_first["/hello.php"] is True


def test_a_whole_answer_has_its_length(front: tuple[Front, Peer]) -> None:
    client, _ = front
    response, body = client.request("GET", "/teapot.php")
    assert response.status == 418 and body == b"short and stout"
    assert response.getheader("Content-Length") == "15"
    assert response.getheader("Transfer-Encoding") is None
    response, body = client.request("HEAD", "/hello.php")
    assert response.status == 200 and body == b""
    assert response.getheader("Content-Length") == "6"


def test_other_answers_take_the_record_loop(front: tuple[Front, Peer]) -> None:
    client, peer = front
    response, body = client.request("GET", "/error.php")
    assert response.status == 500 and body == b"broken"
    response, body = client.request("GET", "/slow.php")
    assert response.status == 200 and body == b"first second"
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert peer.closed_first["/slow.php"] is True


def test_a_streamed_body_keeps_the_request_side_open(front: tuple[Front, Peer]) -> None:
    # the last STDIN record goes after the body's last byte: the side stays open until
    # the answer (the peer waits its 0.5 s for a close that does not come)
    client, peer = front
    response, _ = client.request("POST", "/upload.php", body=b"x" * 1000)
    assert response.status == 200
    assert peer.closed_first["/upload.php"] is False


def test_a_directory_is_never_a_script(front: tuple[Front, Peer]) -> None:
    # try_files found it, as a directory: the script check still refuses it
    client, _ = front
    response, _ = client.request("GET", "/dirs/x.php/")
    assert response.status == 404
