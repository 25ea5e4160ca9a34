"""PEP 3333 from the server's side, over real sockets against a running ``gantry serve``."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps_contract import EVENTS_ENV, FILE_SIZE, _file_bytes
from tests.process import GantryServer, read_all, recv_until, rss_kib, wait_until_read


@pytest.fixture(scope="module", params=["inline", "threads"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GantryServer]:
    """One server per mode: the app on the loop thread, and on a pool of 2 threads."""
    workdir = tmp_path_factory.mktemp(f"contract-{request.param}")
    extra = ["--threads", "2"] if request.param == "threads" else []
    events = workdir / "events.txt"
    with GantryServer(
        "tests.apps_contract:app",
        *extra,
        "--access-log",
        str(workdir / "access.log"),
        log_path=workdir / "stderr.log",
        env={EVENTS_ENV: str(events)},
    ) as running:
        running.events = events  # type: ignore[attr-defined]
        running.access = workdir / "access.log"  # type: ignore[attr-defined]
        yield running


def _events(server: GantryServer) -> list[str]:
    path: Path = server.events  # type: ignore[attr-defined]
    return path.read_text().splitlines() if path.exists() else []


def _wait_event(server: GantryServer, event: str, limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if event in _events(server):
            return True
        time.sleep(0.05)
    return False


def _get(server: GantryServer, path: str, method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path)
    return conn.getresponse()


def test_streamed_result_is_chunked_and_closed(server: GantryServer) -> None:
    response = _get(server, "/stream")
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.read() == b"part0;part1;part2;part3;part4;"
    assert _wait_event(server, "closed stream")


def test_write_callable_then_result(server: GantryServer) -> None:
    response = _get(server, "/write")
    assert response.read() == b"written;then;returned"
    assert _wait_event(server, "closed write")


def test_exception_mid_stream_aborts_connection_and_closes_result(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /fail-mid-stream HTTP/1.1\r\nHost: t\r\n\r\n")
        data = read_all(sock)
    # Head and the first pieces went out; then the stream is cut, never a clean end.
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert not data.endswith(b"0\r\n\r\n")
    assert _wait_event(server, "closed fail-mid-stream")
    assert "failing mid-stream on purpose" in server.log_text()


def test_start_response_with_exc_info_before_body(server: GantryServer) -> None:
    response = _get(server, "/fail-before-body")
    assert response.status == 503
    assert response.read() == b"recovered"


def test_app_exception_gives_500_without_traceback(server: GantryServer) -> None:
    response = _get(server, "/raise")
    body = response.read()
    assert response.status == 500
    assert b"SECRET-TRACEBACK-MARKER" not in body and b"Traceback" not in body
    deadline = time.monotonic() + 5
    while "SECRET-TRACEBACK-MARKER" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Traceback" in server.log_text()
    assert "SECRET-TRACEBACK-MARKER" in server.log_text()


def test_content_length_of_the_app_is_enforced(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"GET /too-long HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 5" in head
    # The extra bytes never reach the wire and the connection is closed after:
    # the second response never comes, so nothing can be smuggled into it.
    assert body == b"12345"
    with server.connect() as sock:
        sock.sendall(b"GET /too-short HTTP/1.1\r\nHost: t\r\n\r\n")
        data = read_all(sock)
    assert data.endswith(b"\r\n\r\n12345")  # short, then closed by the server


def test_head_has_headers_and_no_body(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        data = recv_until(sock, lambda got: got.endswith(b"Hello World!"))
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 12" in first
    # the next response starts right after the head: no body bytes in between
    assert rest.startswith(b"HTTP/1.1 200 OK")
    assert rest.endswith(b"\r\n\r\nHello World!")


def test_http10_stream_is_close_delimited(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert body == b"part0;part1;part2;part3;part4;"


def test_http10_keep_alive(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = recv_until(sock, lambda got: got.endswith(b"Hello World!"))
        assert b"Connection: keep-alive" in first
        sock.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        second = read_all(sock)
    assert second.startswith(b"HTTP/1.1 200") and b"Connection: close" in second


def test_pipelined_requests_answer_in_order(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data = read_all(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", data)
    assert statuses == [b"200", b"200", b"404"]
    # the echo body alone on its chunk line: "3:3" may also stand in a Date field (22:53:36)
    assert data.index(b"Hello World!") < data.index(b"\r\n3:3\r\n") < data.index(b"not found")


def test_expect_100_continue(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        final = recv_until(sock, lambda got: got.endswith(b"0\r\n\r\n"))
    assert final.startswith(b"HTTP/1.1 200") and b"\r\n5:5\r\n" in final


def test_chunked_upload_gets_a_content_length(server: GantryServer) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: yes\r\n\r\n"
        )
        data = recv_until(sock, lambda got: got.endswith(b"0\r\n\r\n"))
    assert b"\r\n7:7\r\n" in data


def test_file_wrapper_through_validator(server: GantryServer) -> None:
    response = _get(server, "/file")
    assert response.read() == _file_bytes()


def test_access_log_is_combined_format(server: GantryServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/hello?x=1", headers={"User-Agent": "probe/1.0", "Referer": "http://r/"})
    conn.getresponse().read()
    access: Path = server.access  # type: ignore[attr-defined]
    pattern = re.compile(
        r"^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
        r'"GET /hello\?x=1 HTTP/1\.1" 200 12 "http://r/" "probe/1\.0"$'
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if access.exists() and any(pattern.match(line) for line in access.read_text().splitlines()):
            return
        time.sleep(0.05)
    pytest.fail(f"no combined-format line in {access.read_text() if access.exists() else ''!r}")


def test_slow_reader_does_not_grow_memory(server: GantryServer) -> None:
    """200 MiB streamed to a client that reads slowly: back-pressure keeps RSS flat."""
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big-stream HTTP/1.1\r\nHost: t\r\n\r\n")
        before = rss_kib(server.pid)
        received = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            received += len(sock.recv(65536))
            time.sleep(0.01)
        grown = rss_kib(server.pid) - before
    # A server without back-pressure would have buffered ~200 MiB by now.
    assert received < 100 * 1024 * 1024
    assert grown < 40 * 1024, f"RSS grew by {grown} KiB while the client read {received} bytes"
    assert _wait_event(server, "closed big-stream"), "close() not called after the client left"


def test_client_disconnect_mid_stream_closes_result(server: GantryServer) -> None:
    sock = server.connect()
    sock.sendall(b"GET /big-stream HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.recv(65536)
    sock.close()
    assert _wait_event(server, "closed big-stream")


@pytest.fixture(scope="module")
def raw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GantryServer]:
    """The app without the validator, so the server sees its own file wrapper."""
    workdir = tmp_path_factory.mktemp("contract-raw")
    with GantryServer("tests.apps_contract:raw_app", log_path=workdir / "stderr.log") as running:
        yield running


def test_file_wrapper_uses_sendfile_with_length(raw_server: GantryServer) -> None:
    response = _get(raw_server, "/file")
    assert response.getheader("Content-Length") == str(FILE_SIZE)
    assert response.read() == _file_bytes()
    head = _get(raw_server, "/file", method="HEAD")
    assert head.getheader("Content-Length") == str(FILE_SIZE)
    assert head.read() == b""


@pytest.fixture(scope="module")
def bad_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GantryServer]:
    """An app that breaks the WSGI contract."""
    workdir = tmp_path_factory.mktemp("contract-bad")
    with GantryServer("tests.apps_contract:bad_app", log_path=workdir / "stderr.log") as running:
        yield running


@pytest.mark.parametrize("path", ["/no-start", "/str-body", "/header-injection"])
def test_contract_breaches_give_500_and_the_worker_lives(
    bad_server: GantryServer, path: str
) -> None:
    response = _get(bad_server, path)
    assert response.status == 500
    assert b"stolen" not in response.read()
    assert _get(bad_server, "/ok").status == 200


def test_sigterm_finishes_the_request_in_flight(tmp_path: Path) -> None:
    with GantryServer(
        "tests.apps_contract:app", "--threads", "2", log_path=tmp_path / "stderr.log"
    ) as running:
        sock = running.connect()
        sock.sendall(b"GET /slow?1.0 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until_read(sock)
        started = time.monotonic()
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        data = read_all(sock, limit=10)
        sock.close()
        code = running.process.wait(timeout=10)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slow done\r\n0\r\n\r\n")
        assert code == 0
        assert time.monotonic() - started < 5
        # no new connections after the stop
        with pytest.raises(OSError):
            running.connect(timeout=1).recv(1)


def test_sigint_stops_at_once(tmp_path: Path) -> None:
    with GantryServer(
        "tests.apps_contract:app", "--threads", "2", log_path=tmp_path / "stderr.log"
    ) as running:
        sock = running.connect()
        sock.sendall(b"GET /slow?5 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until_read(sock)
        started = time.monotonic()
        assert running.process is not None
        running.process.send_signal(signal.SIGINT)
        running.process.wait(timeout=10)
        assert time.monotonic() - started < 3
        sock.close()
