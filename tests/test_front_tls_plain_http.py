"""Plain HTTP sent to a TLS listener gets nginx's answer, 400 "The plain HTTP request was
sent to HTTPS port", instead of a close without a word: the front peeks at the first
byte before the handshake. Raw sockets against `gantry front` and a real nginx with the
same certificate; TLS clients on the same listener are served as before."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.process import Front, Launcher, wait_for
from tests.support_rewrite import start_nginx
from tests.support_tls import TestCA, https_connection, site_tls_config

REQUEST = b"GET / HTTP/1.1\r\nHost: site.test\r\nUser-Agent: raw\r\n\r\n"
WORDS = b"The plain HTTP request was sent to HTTPS port"


def _front(launch: Launcher, ca: TestCA, root: Path, workers: int = 1) -> Front:
    return launch.front(
        site_tls_config(ca, root, f'workers = {workers}\nclient_header_timeout = "2s"')
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("over TLS\n")
    return root


def _answer(port: int, *pieces: bytes, pause: float = 0.0) -> tuple[bytes, float]:
    """What the server at ``port`` answers to ``pieces`` sent in turn (``pause`` apart),
    read until it closes; and the seconds from the first send to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, time.monotonic() - started
            data += chunk


def _head_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_plain_http_is_answered_400_and_closed(
    launch: Launcher, tmp_path: Path, site: Path
) -> None:
    ca = TestCA(tmp_path)
    front = _front(launch, ca, site)
    data, _ = _answer(front.port, REQUEST)
    head, body = _head_and_body(data)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert b"\r\nConnection: close" in head
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) == length and WORDS in body
    assert wait_for(lambda: "plain HTTP request to an HTTPS port" in front.log.read_text(), 5)
    # the same listener still speaks TLS
    conn = https_connection(front.port, "site.test", ca.client_context())
    try:
        conn.request("GET", "/index.html")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"over TLS\n")
    finally:
        conn.close()


def test_a_head_sent_in_pieces_and_one_never_ended(
    launch: Launcher, tmp_path: Path, site: Path
) -> None:
    front = _front(launch, TestCA(tmp_path), site, workers=2)
    # the first byte alone, then the rest: the answer waits for the whole head
    data, _ = _answer(front.port, REQUEST[:1], REQUEST[1:20], REQUEST[20:], pause=0.2)
    assert data.startswith(b"HTTP/1.1 400 ") and WORDS in data
    # a head that never ends is answered when client_header_timeout (2 s) is up
    data, took = _answer(front.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert data.startswith(b"HTTP/1.1 400 ") and 1.5 < took < 6, (data, took)
    # a client that sends nothing is closed after it, unanswered
    data, took = _answer(front.port)
    assert data == b"" and 1.5 < took < 6, (data, took)
    # a huge head is not kept: the answer comes once 16 KiB are in
    data, _ = _answer(front.port, b"GET /" + b"a" * 40_000)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_the_same_status_as_nginx(launch: Launcher, tmp_path: Path, site: Path) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("site.test")
    front = _front(launch, ca, site)
    nginx = start_nginx(
        launch,
        f"""server {{
        listen 127.0.0.1:NGINX_PORT ssl;
        server_name site.test;
        ssl_certificate {pair.certificate};
        ssl_certificate_key {pair.key};
        location / {{ return 200 "over TLS\\n"; }}
    }}""",
    )
    ours, _ = _answer(front.port, REQUEST)
    theirs, _ = _answer(nginx, REQUEST)
    assert theirs.split(b"\r\n")[0] == ours.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert WORDS in theirs and WORDS in ours
