"""A refused request pipelined behind good ones (issue 19 #5) against a real ``gantry serve``.

Every good request before the refused one is answered, in order, then the error,
then the close (as nginx does: 200 x5 then 400), instead of the good ones lost and
the connection left open until the keep-alive timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import pytest

from tests.process import GantryServer, Launcher, free_port, read_until_closed, responses
from tests.support_appsrv import get

KEEPALIVE = 10  # long enough that a connection left open shows as one


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GantryServer]:
    """One ``gantry serve --http`` for the module, on the refusal tests' app."""
    workdir = tmp_path_factory.mktemp("pipelined-refusal")
    process = GantryServer(
        "tests.apps_refusal:app",
        "--keepalive-timeout", str(KEEPALIVE),
        "--max-body-size", "1000",
        log_path=workdir / "server.log",
    )  # fmt: skip
    with process:
        yield process


def _request(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


REFUSED = {
    "no-host": (_request(b"GET /bad HTTP/1.1", b"Accept: */*"), 400),
    "cl-and-te": (
        _request(
            b"POST /bad HTTP/1.1",
            b"Host: a",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "duplicate-cl": (
        _request(
            b"POST /bad HTTP/1.1",
            b"Host: a",
            b"Content-Length: 3",
            b"Content-Length: 3",
            body=b"abc",
        ),
        400,
    ),
    "obs-fold": (_request(b"GET /bad HTTP/1.1", b"Host: a", b"X-Long: one", b" two"), 400),
    "bad-chunk-size": (
        _request(
            b"POST /bad HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked", body=b"zz\r\nx\r\n"
        ),
        400,
    ),
    "long-target": (_request(b"GET /" + b"u" * 9000 + b" HTTP/1.1", b"Host: a"), 414),
    "http-2.0": (_request(b"GET /bad HTTP/2.0", b"Host: a"), 505),
    "body-too-large": (
        _request(b"POST /bad HTTP/1.1", b"Host: a", b"Content-Length: 2000", body=b"b" * 2000),
        413,
    ),
}


@pytest.mark.parametrize("good", [1, 5])
@pytest.mark.parametrize("kind", REFUSED)
def test_good_requests_before_a_refused_one_are_all_answered(
    server: GantryServer, kind: str, good: int
) -> None:
    """``good`` GETs then a refused request in one packet: every GET's 200 in order,
    then the refusal's status, then the close (well before the keep-alive timeout)."""
    refused, status = REFUSED[kind]
    payload = b"".join(get(f"/good{i}") for i in range(good)) + refused
    with server.connect() as sock:
        sock.sendall(payload)
        result = read_until_closed(sock, wait=KEEPALIVE / 2)
    got = responses(result.data)
    expected = [(200, f"called /good{i}\n".encode()) for i in range(good)]
    assert got[:good] == expected, result.data[:600]
    assert [s for s, _ in got[good:]] == [status], result.data[-600:]
    assert result.closed, f"still open after {result.elapsed:.1f} s"


def test_refused_request_alone_still_answers_and_closes(server: GantryServer) -> None:
    """The baseline: a refused request on its own gets its status and the close."""
    with server.connect() as sock:
        sock.sendall(REFUSED["no-host"][0])
        result = read_until_closed(sock, wait=KEEPALIVE / 2)
    assert result.statuses == [400] and result.closed


# the reference: nginx answers the same way ----------------------------------------------


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, module_launch: Launcher) -> int:
    """A real nginx answering 200 to everything, stopped after the module; its port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed")
    workdir = tmp_path_factory.mktemp("nginx-reference")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {workdir};
    proxy_temp_path {workdir};
    fastcgi_temp_path {workdir};
    uwsgi_temp_path {workdir};
    scgi_temp_path {workdir};
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    module_launch.program(
        [binary, "-p", str(workdir), "-c", str(conf)], ("127.0.0.1", port), "nginx", limit=10
    )
    return port


@pytest.mark.parametrize("kind", ["no-host", "duplicate-cl"])
def test_nginx_answers_the_good_requests_then_refuses(nginx: int, kind: str) -> None:
    """Five GETs then a refused request: nginx's 200 x5, then 400, then the close."""
    payload = b"".join(get(f"/good{i}") for i in range(5)) + REFUSED[kind][0]
    with socket.create_connection(("127.0.0.1", nginx), timeout=5) as sock:
        sock.sendall(payload)
        result = read_until_closed(sock, wait=5)
    assert result.statuses == [200] * 5 + [400] and result.closed
