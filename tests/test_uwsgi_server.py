"""The uwsgi socket of a running ``gantry serve``: packets in, raw HTTP out, refusals logged."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.uwsgi import encode_packet
from tests.process import GantryServer, free_port, read_all

ECHO_APP = "tests.apps_contract:raw_app"


def _vars(path: str, method: str = "GET", **extra: str) -> list[tuple[bytes, bytes]]:
    pairs = {
        "REQUEST_METHOD": method,
        "REQUEST_URI": path,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "example.test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_HOST": "example.test",
        **extra,
    }
    return [(k.encode(), v.encode()) for k, v in pairs.items()]


@pytest.fixture(scope="module")
def unix_server() -> Iterator[tuple[GantryServer, str]]:
    """gantry serve on a unix uwsgi socket only, with a small body limit."""
    workdir = Path(tempfile.mkdtemp(prefix="g"))
    path = str(workdir / "u.sock")
    server = GantryServer(
        ECHO_APP,
        "--uwsgi-socket",
        path,
        "--max-body-size",
        "100000",
        "--header-timeout",
        "1",
        log_path=workdir / "gantry.log",
        http=False,
    )
    server.start(wait_for=path)
    try:
        yield server, path
    finally:
        server.stop()


def _exchange(path: str, payload: bytes, pause: float = 0.0, rest: bytes = b"") -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        if rest:
            time.sleep(pause)
            sock.sendall(rest)
        return read_all(sock)


def test_request_over_unix_socket(unix_server: tuple[GantryServer, str]) -> None:
    _, path = unix_server
    data = _exchange(path, encode_packet(_vars("/hello")))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"Hello World!"
    # uwsgi responses carry no Date/Server: the front server adds its own
    assert b"Date:" not in head


def test_body_sent_slowly_after_the_vars(unix_server: tuple[GantryServer, str]) -> None:
    _, path = unix_server
    packet = encode_packet(_vars("/echo", "POST", CONTENT_LENGTH="10"))
    data = _exchange(path, packet + b"01234", pause=0.3, rest=b"56789")
    assert data.endswith(b"10:10")


def test_app_exception_gives_raw_500(unix_server: tuple[GantryServer, str]) -> None:
    server, path = unix_server
    data = _exchange(path, encode_packet(_vars("/raise")))
    assert data.startswith(b"HTTP/1.1 500")
    assert b"SECRET-TRACEBACK-MARKER" not in data


def test_body_over_limit_gets_413(unix_server: tuple[GantryServer, str]) -> None:
    _, path = unix_server
    data = _exchange(path, encode_packet(_vars("/echo", "POST", CONTENT_LENGTH="200000")))
    assert data.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x20\x00\x00\x05\x00abc",  # key length runs past the block
        b"\x00\x00\x20\x00",  # datasize 8192 > the 4096 buffer
        b"\x07" + encode_packet(_vars("/hello"))[1:],  # modifier1 7 is not WSGI
    ],
    ids=["length-past-block", "over-buffer", "not-wsgi"],
)
def test_malformed_packet_closes_without_response(
    unix_server: tuple[GantryServer, str], payload: bytes
) -> None:
    server, path = unix_server
    before = server.log_text().count("malformed packet")
    data = _exchange(path, payload.ljust(40, b"\x00") if payload[0] == 0 else payload)
    assert data == b""
    deadline = time.monotonic() + 3
    while server.log_text().count("malformed packet") <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log_text().count("malformed packet") > before


def test_stalled_packet_times_out(unix_server: tuple[GantryServer, str]) -> None:
    _, path = unix_server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(encode_packet(_vars("/hello"))[:10])
        started = time.monotonic()
        assert read_all(sock, limit=5) == b""
        assert time.monotonic() - started < 4


def _tcp_server(tmp_path: Path, *extra: str) -> GantryServer:
    port = free_port()
    server = GantryServer(
        ECHO_APP,
        "--uwsgi-socket",
        f"127.0.0.1:{port}",
        *extra,
        log_path=tmp_path / "gantry.log",
        http=False,
        port=port,
    )
    server.start()
    return server


def _tcp_exchange(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(encode_packet(_vars("/hello")))
        return read_all(sock)


def test_tcp_socket_trusts_loopback_by_default(tmp_path: Path) -> None:
    server = _tcp_server(tmp_path)
    try:
        assert _tcp_exchange(server.port).endswith(b"Hello World!")
    finally:
        server.stop()


def test_tcp_socket_refuses_peers_outside_the_allow_list(tmp_path: Path) -> None:
    server = _tcp_server(tmp_path, "--uwsgi-allow-from", "10.0.0.0/8,192.0.2.1")
    try:
        assert _tcp_exchange(server.port) == b""
        deadline = time.monotonic() + 3
        while "refused connection" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "refused connection from ('127.0.0.1'" in server.log_text()
    finally:
        server.stop()


def test_environ_over_uwsgi_is_what_the_front_said(unix_server: tuple[GantryServer, str]) -> None:
    """The app sees REMOTE_ADDR, scheme and names as the front server sent them."""
    _, path = unix_server
    data = _exchange(path, encode_packet(_vars("/environ", UWSGI_SCHEME="https")))
    seen = json.loads(data.partition(b"\r\n\r\n")[2])
    assert seen == {
        "REMOTE_ADDR": "203.0.113.9",
        "wsgi.url_scheme": "https",
        "SERVER_NAME": "example.test",
        "PATH_INFO": "/environ",
        "SCRIPT_NAME": "",
    }
    https_only = _exchange(path, encode_packet(_vars("/environ", HTTPS="on")))
    assert json.loads(https_only.partition(b"\r\n\r\n")[2])["wsgi.url_scheme"] == "https"


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One framed response (Content-Length or chunked) from a kept connection."""
    import http.client

    class _Source:
        def makefile(self, mode: str) -> object:
            return sock.makefile("rb")

    response = http.client.HTTPResponse(_Source())  # type: ignore[arg-type]
    response.begin()
    head = b"".join(f"{k}: {v}\r\n".encode() for k, v in response.getheaders())
    return head, response.read()


def test_kept_connection_serves_packet_after_packet(unix_server: tuple[GantryServer, str]) -> None:
    """GANTRY_KEEPALIVE=1 (what gantry front sends its pools): framed responses, and the
    connection stays for the next packet; streamed bodies come chunked."""
    _, path = unix_server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        for target in ("/hello", "/stream", "/hello"):
            sock.sendall(encode_packet(_vars(target, GANTRY_KEEPALIVE="1")))
            head, body = _read_response(sock)
            if target == "/hello":
                assert body == b"Hello World!"
                assert b"Content-Length: 12" in head
            else:
                assert b"Transfer-Encoding: chunked" in head and body
            assert b"Connection: close" not in head


def test_without_the_flag_the_connection_closes(unix_server: tuple[GantryServer, str]) -> None:
    _, path = unix_server
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(encode_packet(_vars("/stream")) + encode_packet(_vars("/hello")))
        data = read_all(sock)
    # close-delimited, one response only, as nginx expects
    assert data.count(b"HTTP/1.1 200") == 1 and b"Transfer-Encoding" not in data


def test_kept_connection_idles_out(tmp_path: Path) -> None:
    path = str(tmp_path / "k.sock")
    server = GantryServer(
        ECHO_APP, "--uwsgi-socket", path, "--keepalive-timeout", "1",
        log_path=tmp_path / "log", http=False,
    )  # fmt: skip
    server.start(wait_for=path)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(encode_packet(_vars("/hello", GANTRY_KEEPALIVE="1")))
            _, body = _read_response(sock)
            assert body == b"Hello World!"
            started = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server once idle
            assert 0.5 < time.monotonic() - started < 4
        assert "timed out" not in server.log_text()
    finally:
        server.stop()
