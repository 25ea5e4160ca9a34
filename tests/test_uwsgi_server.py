"""The uwsgi socket of a running ``gantry serve``: packets in, raw HTTP out, refusals logged."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.uwsgi import GANTRY_MODIFIER2, encode_packet
from tests.process import GantryServer, free_port, read_all, wait_for, wait_until_accepted

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
def unix_server(module_short_tmp: Path) -> Iterator[tuple[GantryServer, str]]:
    """gantry serve on a unix uwsgi socket only, with a small body limit."""
    workdir = module_short_tmp
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


def _own_server(tmp_path: Path, *args: str) -> tuple[GantryServer, str]:
    """A started gantry serve of its own on a unix uwsgi socket, with ``args``."""
    path = str(tmp_path / "u.sock")
    server = GantryServer(
        ECHO_APP, "--uwsgi-socket", path, *args, log_path=tmp_path / "log", http=False
    )
    server.start(wait_for=path)
    return server, path


def test_kept_connection_idles_out(tmp_path: Path) -> None:
    server, path = _own_server(tmp_path, "--keepalive-timeout", "1")
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


def test_graceful_stop_serves_a_connection_whose_packet_is_on_its_way(tmp_path: Path) -> None:
    """A connection accepted before SIGTERM whose packet comes after it is served, not
    closed as idle: the front opened it to send a request (a reload's old pool would
    otherwise answer a front's fresh connection with a close, and the client a 502). A
    kept connection idle between packets is closed."""
    server, path = _own_server(tmp_path, "--graceful-timeout", "5")
    try:
        with socket.socket(socket.AF_UNIX) as fresh, socket.socket(socket.AF_UNIX) as kept:
            fresh.settimeout(5)
            kept.settimeout(5)
            kept.connect(path)
            kept.sendall(encode_packet(_vars("/hello", GANTRY_KEEPALIVE="1")))
            assert _read_response(kept)[1] == b"Hello World!"
            fresh.connect(path)
            wait_until_accepted(path)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            assert wait_for(lambda: "received graceful stop signal" in server.log_text(), 5)
            fresh.sendall(encode_packet(_vars("/hello", GANTRY_KEEPALIVE="1")))
            head, body = _read_response(fresh)
            assert body == b"Hello World!"
            assert fresh.recv(1) == b""  # stopping: no next packet on it
            started = time.monotonic()
            assert kept.recv(1) == b""  # idle between packets: closed
            assert time.monotonic() - started < 3
        assert server.process.wait(timeout=5) == 0
    finally:
        server.stop()


def test_graceful_stop_waits_for_a_silent_connection_only_its_header_timeout(
    tmp_path: Path,
) -> None:
    """A connection that never sends its packet holds a stopping server for the header
    timeout (1 s here), not for the graceful timeout (30 s)."""
    server, path = _own_server(tmp_path, "--header-timeout", "1", "--graceful-timeout", "30")
    try:
        with socket.socket(socket.AF_UNIX) as silent:
            silent.settimeout(10)
            silent.connect(path)
            wait_until_accepted(path)
            assert server.process is not None
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert silent.recv(1) == b""
            assert server.process.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
    finally:
        server.stop()


def _front_packets(raw: bytes, script_name: str = "") -> tuple[bytes, bytes]:
    """What gantry front sends for the HTTP request ``raw``: a standard uwsgi packet with
    GANTRY_KEEPALIVE=1 and gantry's own packet (the front's encoders, a real parse)."""
    from gantry.front.routing import normalize_path
    from gantry.front.upstream_request import (
        connection_vars,
        gantry_connection_vars,
        gantry_packet,
        uwsgi_packet,
    )
    from gantry.protocol.http1 import HTTPLimits, RequestHead, RequestParser

    class Sink:
        head = RequestHead()
        body = b""

        def request_head(self, head: RequestHead) -> None:
            self.head = head

        def request_body(self, data: bytes) -> None:
            self.body += data

        def request_end(self, trailers: object) -> None:
            pass

    sink = Sink()
    RequestParser(sink, HTTPLimits()).feed(raw)
    head, body = sink.head, sink.body
    path = normalize_path(head.path) or "/"
    where = ("198.51.100.7", "40000", "8080")
    standard = uwsgi_packet(connection_vars(*where), head, path, script_name, len(body), True)
    own = gantry_packet(gantry_connection_vars(*where), head, path, script_name, len(body))
    assert own is not None and own[3] == GANTRY_MODIFIER2
    return standard + body, own + body


GANTRY_PACKET_CASES = [
    (b"GET /cgi?a=1&b=%2F HTTP/1.1\r\nHost: example.test:8080\r\nUser-Agent: t\r\n\r\n", ""),
    (b"GET /cgi HTTP/1.1\r\nHost: [::1]:8080\r\nCookie: a=1\r\nCookie: b=2\r\n"
     b"X-Multi: x\r\nX-Multi: y\r\n\r\n", ""),
    (b"POST /cgi HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
     b"hello", ""),
    (b"GET /app/cgi HTTP/1.0\r\n\r\n", "/app"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "script_name"), GANTRY_PACKET_CASES)
def test_gantry_packet_gives_the_app_what_the_standard_packet_gives(
    unix_server: tuple[GantryServer, str], raw: bytes, script_name: str
) -> None:
    """Gantry's own packet (what gantry front sends its pools) and the standard one make
    the same environ, repeated fields joined alike; the connection stays for the next."""
    _, path = unix_server
    standard, own = _front_packets(raw, script_name)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(standard)
        _, expected = _read_response(sock)
        sock.sendall(own)
        head, seen = _read_response(sock)
        sock.sendall(own)  # the same connection serves the next packet
        _, again = _read_response(sock)
    environ = json.loads(seen)
    assert environ == {k: v for k, v in json.loads(expected).items() if k != "GANTRY_KEEPALIVE"}
    assert json.loads(again) == environ
    assert b"Connection: close" not in head
    assert environ["REMOTE_ADDR"] == "198.51.100.7" and environ["SCRIPT_NAME"] == script_name
    if b"Cookie" in raw:
        assert environ["HTTP_COOKIE"] == "a=1; b=2" and environ["HTTP_X_MULTI"] == "x, y"
    if raw.startswith(b"POST"):
        assert environ["CONTENT_LENGTH"] == "5" and environ["CONTENT_TYPE"] == "text/plain"
    else:
        assert "CONTENT_LENGTH" not in environ and "CONTENT_TYPE" not in environ


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"REQUEST_METHOD\0GET\0PATH_INFO", "a key without a value"),
        (b"REQUEST_METHOD\0POST\0PATH_INFO\0/echo\0CONTENT_LENGTH\0\xb2", "CONTENT_LENGTH"),
    ],
)
def test_malformed_gantry_packet_is_refused(
    unix_server: tuple[GantryServer, str], block: bytes, reason: str
) -> None:
    server, path = unix_server
    packet = b"\x00" + len(block).to_bytes(2, "little") + bytes((GANTRY_MODIFIER2,)) + block
    assert _exchange(path, packet) == b""
    deadline = time.monotonic() + 3
    while reason not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "uwsgi: malformed packet from" in server.log_text() and reason in server.log_text()
    assert _exchange(path, encode_packet(_vars("/hello"))).endswith(b"Hello World!")
