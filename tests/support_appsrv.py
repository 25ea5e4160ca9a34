"""Helpers for the application server's hostile-input tests (tests/test_serve_*.py)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass
class Exchange:
    """What came back on one connection: the bytes, and whether the server closed it."""

    data: bytes
    closed: bool
    elapsed: float

    @property
    def statuses(self) -> list[int]:
        """The status of every response, walking Content-Length and chunked framing."""
        return [status for status, _ in responses(self.data)]


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """Every (status, body) in ``data``; a response without framing takes the rest."""
    found = []
    rest = data
    while rest:
        head, separator, rest = rest.partition(b"\r\n\r\n")
        assert separator, f"incomplete response head: {head[:200]!r}"
        status_line, *fields = head.split(b"\r\n")
        assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), status_line
        status = int(status_line.split(b" ", 2)[1])
        lowered = [f.lower() for f in fields]
        lengths = [f.split(b":", 1)[1] for f in lowered if f.startswith(b"content-length:")]
        if lengths:
            size = int(lengths[0])
            found.append((status, rest[:size]))
            rest = rest[size:]
        elif b"transfer-encoding: chunked" in lowered:
            body = bytearray()
            while True:
                size_line, separator, rest = rest.partition(b"\r\n")
                assert separator, "chunked body cut short"
                size = int(size_line, 16)
                if size == 0:
                    _, separator, rest = rest.partition(b"\r\n")
                    assert separator, "chunked body cut short"
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
            found.append((status, bytes(body)))
        else:
            found.append((status, rest))
            break
    return found


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
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""  # a reset is a close too; what arrived before it is kept
        if not chunk:
            return Exchange(bytes(data), True, time.monotonic() - started)
        data += chunk


def get(path: str, host: str = "a") -> bytes:
    """A plain GET with a Host field."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
