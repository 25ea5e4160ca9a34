"""Every buffer a peer can fill is bounded (issue 14, appserver side), against real sockets.

- a chunked body's trailer section: llhttp holds an unfinished trailer field
  whole, so an endless one grew the worker without limit; now 431 past the
  head-size limit (the front shares the parser);
- a uwsgi packet whose vars block exceeds --buffer-size: the connection closes
  without an answer, as uWSGI does, as soon as the header is in;
- a kept uwsgi connection whose peer keeps sending while a response runs: the
  worker stops reading past a bound instead of keeping it all.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from gantry.protocol.http1 import HTTPLimits, ProtocolError, RequestParser
from tests.corpus import RecordingSink
from tests.process import GantryServer, Launcher, read_until_closed, responses, rss_kib
from tests.support_appsrv import Sender, hostile_server, uwsgi_get

CHUNKED_HEAD = b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"


def test_parser_bounds_an_endless_trailer_field() -> None:
    """An unfinished trailer field fed 64 KiB at a time: 431 within two pieces of the
    head-size limit, not after everything was held."""
    limits = HTTPLimits()
    parser = RequestParser(RecordingSink(), limits)
    parser.feed(CHUNKED_HEAD + b"X-T: ")
    fed = 0
    with pytest.raises(ProtocolError) as refusal:
        while fed < 16 * limits.max_head_size:
            parser.feed(b"a" * 65536)
            fed += 65536
    assert refusal.value.status == 431
    assert fed <= limits.max_head_size + 65536


def test_parser_bounds_many_trailer_fields() -> None:
    """Many small trailer fields in one feed: refused (431), not all kept."""
    parser = RequestParser(RecordingSink())
    with pytest.raises(ProtocolError) as refusal:
        parser.feed(CHUNKED_HEAD + b"X-T: v\r\n" * 20000 + b"\r\n")
    assert refusal.value.status == 431


def test_parser_still_takes_a_small_trailer_section() -> None:
    """The baseline: a few trailer fields pass and reach the sink."""
    sink = RecordingSink()
    RequestParser(sink).feed(CHUNKED_HEAD + b"X-A: 1\r\nX-B: 2\r\n\r\n")
    (request,) = sink.requests
    assert request.ended and request.trailers == [(b"X-A", b"1"), (b"X-B", b"2")]


@pytest.fixture(scope="module")
def server(module_launch: Launcher) -> tuple[GantryServer, int]:
    """One ``gantry serve`` (no master, app threads) with an HTTP and a uwsgi socket."""
    return hostile_server(
        module_launch,
        "--buffer-size", "4096",
        "--threads", "2",  # the loop reads while a request sleeps
        name="buffers",
    )  # fmt: skip


def test_serve_refuses_an_endless_trailer(server: tuple[GantryServer, int]) -> None:
    """A chunked POST whose trailer field never ends: 431 and the close, RSS bounded."""
    process, _ = server
    before = rss_kib(process.pid)
    with process.connect(timeout=30) as sock:
        sock.sendall(CHUNKED_HEAD + b"X-T: ")
        sender = Sender(sock, b"a" * (64 << 20))
        sender.start()
        result = read_until_closed(sock, wait=20)
        sender.join(timeout=20)
    assert result.closed and [s for s, _ in responses(result.data)] == [431]
    assert rss_kib(process.pid) - before < 20 * 1024


def test_uwsgi_packet_over_the_buffer_size_is_closed(server: tuple[GantryServer, int]) -> None:
    """A vars block over --buffer-size: closed at once, no answer (uWSGI's behaviour),
    and the error log says why."""
    process, port = server
    packet = uwsgi_get(b"/p", False, (b"HTTP_X_BIG", b"b" * 5000))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(packet[:4])  # the header alone is enough to refuse
        result = read_until_closed(sock, wait=5)
    assert result.closed and result.data == b""
    assert "exceeds the buffer size 4096" in process.log_text()


def test_kept_uwsgi_connection_bounds_what_arrives_during_a_response(
    server: tuple[GantryServer, int],
) -> None:
    """A kept connection's peer sends 64 MiB while a 2 s request runs: the worker
    stops reading (RSS grows < 20 MB), answers the request, then refuses the
    garbage as a packet and closes."""
    process, port = server
    before = rss_kib(process.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(uwsgi_get(b"/sleep/2", True))
        # garbage whose header announces a vars block over the buffer size
        sender = Sender(sock, struct.pack("<BHB", 0, 60000, 0) * (16 << 20))
        sender.start()
        grown = 0
        deadline = time.monotonic() + 3  # the request's 2 s and a margin
        while time.monotonic() < deadline and sender.is_alive():
            grown = max(grown, rss_kib(process.pid) - before)
            time.sleep(0.05)
        result = read_until_closed(sock, wait=20)
        sender.join(timeout=20)
    assert grown < 20 * 1024, f"RSS grew {grown} KiB"
    assert result.closed and [s for s, _ in responses(result.data)] == [200]
