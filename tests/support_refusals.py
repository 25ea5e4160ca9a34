"""Requests a server must refuse, and a reader for what comes back before the close.

Shared by the socket tests of ``gantry serve`` and of ``gantry front``: each
refusal is the request's bytes and the status it must get (``MAX_BODY`` is the
body limit both servers are started with).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

MAX_BODY = 1000


@dataclass
class Exchange:
    """What came back on one connection: the bytes, and whether the server closed it."""

    data: bytes
    closed: bool
    elapsed: float

    @property
    def statuses(self) -> list[int]:
        """The status of every response in the data, walking Content-Length framing."""
        found = []
        rest = self.data
        while rest:
            head, separator, rest = rest.partition(b"\r\n\r\n")
            assert separator, f"incomplete response head: {head[:200]!r}"
            status_line, *fields = head.split(b"\r\n")
            assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), status_line
            found.append(int(status_line.split(b" ", 2)[1]))
            lengths = [
                f.split(b":", 1)[1] for f in fields if f.lower().startswith(b"content-length:")
            ]
            if not lengths:
                break  # delimited by the close: the rest is this response's body
            rest = rest[int(lengths[0]) :]
        return found

    @property
    def status(self) -> int:
        """The status of the first response."""
        statuses = self.statuses
        assert statuses, "no response before the close"
        return statuses[0]


def read_until_closed(sock: socket.socket, wait: float) -> Exchange:
    """Read until the server closes the connection or ``wait`` seconds pass."""
    started = time.monotonic()
    deadline = started + wait
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Exchange(bytes(data), False, time.monotonic() - started)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""  # a reset is a close too; what arrived before it is kept
        if not chunk:
            return Exchange(bytes(data), True, time.monotonic() - started)
        data += chunk


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
