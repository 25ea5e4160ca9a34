"""Helpers for the application server's hostile-input tests (tests/test_serve_*.py)."""

from __future__ import annotations

import socket
import threading
import time

from gantry.protocol.uwsgi import encode_packet
from tests.process import GantryServer, Launcher, free_port


def hostile_server(launch: Launcher, *args: str, name: str) -> tuple[GantryServer, int]:
    """A started ``gantry serve tests.apps_hostile:app`` with an HTTP and a uwsgi socket
    (and ``args``), its log in ``name``.log; it and its uwsgi port."""
    uwsgi_port = free_port()
    server = launch.serve(
        "tests.apps_hostile:app", "--uwsgi-socket", f"127.0.0.1:{uwsgi_port}", *args, name=name
    )
    return server, uwsgi_port


def get(path: str, host: str = "a") -> bytes:
    """A plain GET with a Host field."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def uwsgi_get(uri: bytes, keep: bool = False, *extra: tuple[bytes, bytes]) -> bytes:
    """A uwsgi packet for a GET of ``uri`` (path and query split as a front would), with
    ``extra`` variables, asking to keep the connection open when ``keep``."""
    path, _, query = uri.partition(b"?")
    pairs = [
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", uri),
        (b"PATH_INFO", path),
        (b"QUERY_STRING", query),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        *extra,
    ]
    if keep:
        pairs.append((b"GANTRY_KEEPALIVE", b"1"))
    return encode_packet(pairs)


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
