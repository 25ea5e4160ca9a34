"""Requests a server must refuse, and the status each must get.

Shared by the socket tests of ``gantry serve`` and of ``gantry front``: each
refusal is the request's bytes and the status it must get (``MAX_BODY`` is the
body limit both servers are started with). What comes back before the close is
read with ``tests.process.read_until_closed``.
"""

from __future__ import annotations

# the reader lives in tests/process.py; test_front_load.py imports it from here too
from tests.process import Exchange as Exchange
from tests.process import read_until_closed as read_until_closed

MAX_BODY = 1000


def request(*fields: bytes, line: bytes = b"GET /ok HTTP/1.1", body: bytes = b"") -> bytes:
    """A request with Host and the given field lines."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in (b"Host: t", *fields)) + b"\r\n" + body


REFUSALS = {
    "duplicate-content-length": (
        request(b"Content-Length: 3", b"Content-Length: 3", line=b"POST /r HTTP/1.1", body=b"abc"),
        400,
    ),
    "content-length-and-chunked": (
        request(
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            line=b"POST /r HTTP/1.1",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "bad-chunk-size": (
        request(b"Transfer-Encoding: chunked", line=b"POST /r HTTP/1.1", body=b"6_0\r\nx\r\n"),
        400,
    ),
    "obs-fold": (request(b"X-Long: one", b" two"), 400),
    "space-before-colon": (request(b"X-Field : v"), 400),
    "no-host": (b"GET /r HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    "http-2.0": (request(line=b"GET /r HTTP/2.0"), 505),
    "long-url": (request(line=b"GET /" + b"u" * 10000 + b" HTTP/1.1"), 414),
    "huge-header": (request(b"X-Huge: " + b"h" * 10000), 431),
    "body-too-large": (
        request(b"Content-Length: %d" % (MAX_BODY + 1), line=b"POST /r HTTP/1.1")
        + b"b" * (MAX_BODY + 1),
        413,
    ),
    "unknown-transfer-coding": (
        request(b"Transfer-Encoding: gzip, chunked", line=b"POST /r HTTP/1.1", body=b"0\r\n\r\n"),
        501,
    ),
}
