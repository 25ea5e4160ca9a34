"""Real Flask and Django apps served by ``gantry serve``, directly over HTTP and behind real nginx.

One gantry process per app listens on both an HTTP socket and a unix uwsgi
socket; nginx (``uwsgi_pass`` with its own ``uwsgi_params``) sits in front of
the latter. Every test runs over both paths, so the app must see the same
request either way.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.nginx import Nginx, require_program
from tests.e2e.payloads import FILE_BYTES, STREAM_CHUNKS
from tests.process import GantryServer, Launcher, short_tempdir

APPS = {
    "flask": ("tests.e2e.flask_app:app", []),
    "flask-threads": ("tests.e2e.flask_app:app", ["--threads", "4"]),
    "django": ("tests.e2e.django_site.wsgi:app", []),
}
MIB = 1024 * 1024


@dataclass
class Stack:
    """A gantry server and, when asked for, nginx in front of its uwsgi socket."""

    server: GantryServer
    nginx: Nginx | None

    def address(self, via: str) -> tuple[str, int]:
        """Where a client connects for ``via`` ("http" direct, or "nginx")."""
        if via == "nginx":
            assert self.nginx is not None
            return "127.0.0.1", self.nginx.port
        return "127.0.0.1", self.server.port


@pytest.fixture(scope="module", params=list(APPS))
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """One gantry process per app (HTTP + uwsgi sockets) and one nginx in front."""
    module, extra = APPS[request.param]
    # Unix socket paths must stay under 108 bytes: a short directory in /tmp.
    with short_tempdir() as workdir, Launcher(workdir) as launch:
        sock_path = str(workdir / "app.sock")
        server = launch.serve(
            module, *extra, "--uwsgi-socket", sock_path, "--uwsgi-socket-mode", "666",
            name="gantry",
        )  # fmt: skip
        nginx = None
        try:
            nginx = launch.nginx(sock_path)
        except pytest.skip.Exception:
            nginx = None
        yield Stack(server, nginx)


@pytest.fixture(params=["http", "nginx"])
def via(request: pytest.FixtureRequest, stack: Stack) -> str:
    """The path a request takes: straight to gantry, or through nginx over uwsgi."""
    if request.param == "nginx" and stack.nginx is None:
        require_program("nginx")  # fails under CI=true, skips loudly otherwise
    return str(request.param)


def _request(
    stack: Stack,
    via: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    host, port = stack.address(via)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def _echo(stack: Stack, via: str, method: str, path: str, body: bytes | None = None) -> Any:
    response, data = _request(stack, via, method, path, body)
    assert response.status == 200, data[:500]
    return json.loads(data)


def test_hello(stack: Stack, via: str) -> None:
    response, data = _request(stack, via, "GET", "/hello")
    assert (response.status, data) == (200, b"Hello World!")


def test_utf8_and_percent_encoded_path_and_query(stack: Stack, via: str) -> None:
    seen = _echo(stack, via, "GET", "/echo/caf%C3%A9/a%20b?x=1&y=%2F&z=%E2%9C%93")
    # PEP 3333: PATH_INFO holds the decoded bytes as latin-1; frameworks decode to UTF-8.
    assert seen["PATH_INFO"] == "/echo/café/a b".encode().decode("latin-1")
    assert seen["route_rest"] == "café/a b"
    assert seen["QUERY_STRING"] == "x=1&y=%2F&z=%E2%9C%93"
    assert seen["REQUEST_URI"] == "/echo/caf%C3%A9/a%20b?x=1&y=%2F&z=%E2%9C%93"
    assert seen["REQUEST_METHOD"] == "GET"
    assert seen["SCRIPT_NAME"] == ""


def test_repeated_headers_are_joined(stack: Stack, via: str) -> None:
    host, port = stack.address(via)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo/h HTTP/1.1\r\nHost: example.test\r\nX-Multi: a\r\nX-Multi: b\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    body = data.partition(b"\r\n\r\n")[2]
    if b"chunked" in data.partition(b"\r\n\r\n")[0].lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    seen = json.loads(body)
    assert seen["HTTP_X_MULTI"] == "a, b"
    assert seen["HTTP_COOKIE"] == "a=1; b=2"


@pytest.mark.parametrize("size", [0, MIB, 20 * MIB], ids=["0B", "1MiB", "20MiB"])
def test_post_body_arrives_whole(stack: Stack, via: str, size: int) -> None:
    body = os.urandom(size)
    seen = _echo(stack, via, "POST", "/echo/upload", body)
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["CONTENT_LENGTH"] in (str(size), None if size == 0 else str(size))


def test_chunked_upload_from_the_client(stack: Stack, via: str) -> None:
    pieces = [os.urandom(1000 + i * 7919) for i in range(20)]
    host, port = stack.address(via)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", "/echo/chunked", body=iter(pieces), encode_chunked=True)
    response = conn.getresponse()
    seen = json.loads(response.read())
    conn.close()
    whole = b"".join(pieces)
    assert seen["body_length"] == len(whole)
    assert seen["body_sha256"] == hashlib.sha256(whole).hexdigest()


def test_streaming_response(stack: Stack, via: str) -> None:
    response, data = _request(stack, via, "GET", "/stream")
    assert response.status == 200
    assert data == b"".join(STREAM_CHUNKS)
    if via == "http":
        assert response.getheader("Transfer-Encoding") == "chunked"


def test_file_wrapper_response(stack: Stack, via: str) -> None:
    response, data = _request(stack, via, "GET", "/file")
    assert response.status == 200
    assert data == FILE_BYTES


def test_head_has_no_body(stack: Stack, via: str) -> None:
    head, head_body = _request(stack, via, "HEAD", "/hello")
    get, _ = _request(stack, via, "GET", "/hello")
    assert head.status == 200 and head_body == b""
    assert head.getheader("Content-Length") == get.getheader("Content-Length") == "12"
    assert head.getheader("Content-Type") == get.getheader("Content-Type")


def test_not_found(stack: Stack, via: str) -> None:
    response, _ = _request(stack, via, "GET", "/no/such/page")
    assert response.status == 404


def test_app_error_is_500_with_traceback_only_in_the_log(stack: Stack, via: str) -> None:
    response, data = _request(stack, via, "GET", "/error")
    assert response.status == 500
    assert b"E2E-TRACEBACK-MARKER" not in data and b"Traceback" not in data
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "E2E-TRACEBACK-MARKER" in stack.server.log_text():
            return
        time.sleep(0.05)
    pytest.fail("the traceback did not reach the error log")


def test_slow_20mib_upload(stack: Stack) -> None:
    """A client that trickles 20 MiB over ~3 s: the body is read whole, hash intact."""
    body = os.urandom(20 * MIB)
    host, port = stack.address("http")
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            b"POST /echo/slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        step = len(body) // 30
        for offset in range(0, len(body), step):
            sock.sendall(body[offset : offset + step])
            time.sleep(0.1)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"chunked" in head.lower():
        payload = payload.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    seen = json.loads(payload)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
