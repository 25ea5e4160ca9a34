"""Helpers for the application server's hostile-input tests (tests/test_serve_*.py)."""

from __future__ import annotations

import socket
import threading
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
    pos, end = 0, len(data)
    while pos < end:
        head_end = data.find(b"\r\n\r\n", pos)
        assert head_end >= 0, f"incomplete response head: {data[pos : pos + 200]!r}"
        status_line, *fields = data[pos:head_end].split(b"\r\n")
        pos = head_end + 4
        assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), status_line
        status = int(status_line.split(b" ", 2)[1])
        lowered = [f.lower() for f in fields]
        lengths = [f.split(b":", 1)[1] for f in lowered if f.startswith(b"content-length:")]
        if lengths:
            size = int(lengths[0])
            found.append((status, data[pos : pos + size]))
            pos += size
        elif b"transfer-encoding: chunked" in lowered:
            body = bytearray()
            while True:
                line_end = data.find(b"\r\n", pos)
                assert line_end >= 0, "chunked body cut short"
                size = int(data[pos:line_end], 16)
                pos = line_end + 2
                if size == 0:
                    assert data.startswith(b"\r\n", pos), "chunked body cut short"
                    pos += 2
                    break
                body += data[pos : pos + size]
                pos += size + 2
            found.append((status, bytes(body)))
        else:
            found.append((status, data[pos:]))
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


class Sender(threading.Thread):
    """Sends ``payload`` in 64 KiB pieces, counting what the kernel took."""

    def __init__(self, sock: socket.socket, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.payload = memoryview(payload)
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.sent < len(self.payload):
                self.sent += self.sock.send(self.payload[self.sent : self.sent + 65536])
        except BaseException as exc:  # reported by the test
            self.error = exc


def wait_stalled(sender: Sender, quiet: float = 2.0, limit: float = 60.0) -> None:
    """Wait until the sender finished or made no progress for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline and sender.is_alive():
        if sender.sent != last:
            last, since = sender.sent, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
