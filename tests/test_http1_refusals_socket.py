"""Refusals and slow clients over a real socket against a running ``gantry serve``.

The parser's unit tests prove what is refused; these prove what the server then
does with it: one response with the right status, the connection closed, the
application never called for the refused request, and the timeouts enforced
for clients that stall.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apps_refusal import CALLS_ENV
from tests.process import Exchange, GantryServer, read_until_closed
from tests.support_refusals import MAX_BODY, REFUSALS, request

TIMEOUT = 1  # --header-timeout, --keepalive-timeout and --body-timeout, in seconds


@dataclass
class Server:
    """A running ``gantry serve`` and the file its app records calls in."""

    process: GantryServer
    calls_file: Path

    def calls(self) -> list[str]:
        """Every call the app has recorded so far, as 'METHOD PATH BODY_LENGTH'."""
        if not self.calls_file.exists():
            return []
        return self.calls_file.read_text().splitlines()

    def connect(self) -> socket.socket:
        """A fresh client connection."""
        return self.process.connect()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, with 1 s timeouts and a 1000-byte body limit."""
    workdir = tmp_path_factory.mktemp("refusals")
    calls_file = workdir / "calls.txt"
    process = GantryServer(
        "tests.apps_refusal:app",
        "--header-timeout", str(TIMEOUT),
        "--keepalive-timeout", str(TIMEOUT),
        "--body-timeout", str(TIMEOUT),
        "--max-body-size", str(MAX_BODY),
        log_path=workdir / "server.log",
        env={CALLS_ENV: str(calls_file)},
    )  # fmt: skip
    try:
        process.start()
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{' '.join(process.command)}", pytrace=False)
    try:
        yield Server(process, calls_file)
    finally:
        process.stop()


def exchange(server: Server, payload: bytes, wait: float = 2.0) -> Exchange:
    """Send ``payload`` on a fresh connection and read until close (at most ``wait`` s)."""
    with server.connect() as sock:
        sock.sendall(payload)
        return read_until_closed(sock, wait)


def test_server_answers_a_good_request(server: Server) -> None:
    """The baseline the refusals are measured against: 200 and the app is called."""
    before = len(server.calls())
    result = exchange(server, request(b"Connection: close", line=b"GET /baseline HTTP/1.1"))
    assert result.status == 200 and result.closed
    assert server.calls()[before:] == ["GET /baseline 0"]


@pytest.mark.parametrize("name", REFUSALS)
def test_refusal_gets_its_status_and_a_close(server: Server, name: str) -> None:
    """One response with the expected status, then the connection is closed; no app call."""
    payload, status = REFUSALS[name]
    before = len(server.calls())
    result = exchange(server, payload)
    assert result.status == status, result.data[:300]
    assert result.statuses == [status], result.data[:300]
    assert result.closed, f"still open after {result.elapsed:.1f} s"
    assert server.calls()[before:] == []


@pytest.mark.parametrize(
    "framing",
    [
        (b"Content-Length: %d", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked", b"Content-Length: %d"),
        (b"Content-Length: %d", b"Transfer-Encoding:  chunked"),
    ],
    ids=["CL.TE", "TE.CL", "CL.TE-ows"],
)
def test_smuggled_request_never_reaches_the_app(
    server: Server, framing: tuple[bytes, bytes]
) -> None:
    """A second request hidden in a CL+TE body is not run, whichever header a parser trusts."""
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    fields = [f % len(body) if b"%d" in f else f for f in framing]
    before = len(server.calls())
    result = exchange(server, request(*fields, line=b"POST /front HTTP/1.1", body=body))
    assert result.statuses == [400], result.data[:300]
    assert result.closed
    # and a follow-up on a fresh connection does not pick up any leftover
    follow = exchange(server, request(b"Connection: close", line=b"GET /after HTTP/1.1"))
    assert follow.statuses == [200]
    assert server.calls()[before:] == ["GET /after 0"]


def test_pipelined_request_after_close_is_not_run(server: Server) -> None:
    """RFC 9112 9.6: after 'Connection: close' the next request is neither run nor answered."""
    before = len(server.calls())
    payload = request(b"Connection: close", line=b"GET /first HTTP/1.1") + request(
        line=b"GET /second HTTP/1.1"
    )
    result = exchange(server, payload)
    assert result.statuses == [200], result.data[:300]
    assert result.closed
    assert server.calls()[before:] == ["GET /first 0"]


# --- slow clients -------------------------------------------------------------------


def test_half_a_head_gets_408_after_the_header_timeout(server: Server) -> None:
    """A client that stops in the middle of its head gets 408, then a close."""
    with server.connect() as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Partial: ")
        result = read_until_closed(sock, TIMEOUT + 3)
    assert result.statuses == [408], result.data[:300]
    assert result.closed
    assert TIMEOUT * 0.8 <= result.elapsed <= TIMEOUT + 3


def test_idle_keepalive_connection_is_closed_silently(server: Server) -> None:
    """After a response, an idle keep-alive connection is closed with no further bytes."""
    with server.connect() as sock:
        sock.sendall(request(line=b"GET /keep HTTP/1.1"))
        first = b""
        while b"called /keep\n" not in first:
            chunk = sock.recv(65536)
            assert chunk, "closed before the response"
            first += chunk
        assert first.startswith(b"HTTP/1.1 200")
        result = read_until_closed(sock, TIMEOUT + 3)
    assert result.closed, "keep-alive connection still open"
    assert result.data == b""
    assert TIMEOUT * 0.8 <= result.elapsed <= TIMEOUT + 3


def test_stalled_body_is_closed_after_the_body_timeout(server: Server) -> None:
    """A body that stops coming gets the connection closed (with at most a 408)."""
    before = len(server.calls())
    with server.connect() as sock:
        sock.sendall(request(b"Content-Length: 100", line=b"POST /stall HTTP/1.1") + b"x" * 10)
        result = read_until_closed(sock, TIMEOUT + 3)
    assert result.closed, "stalled upload still open"
    assert result.statuses in ([], [408]), result.data[:300]
    assert TIMEOUT * 0.8 <= result.elapsed <= TIMEOUT + 3
    assert all("/stall" not in call for call in server.calls()[before:])
