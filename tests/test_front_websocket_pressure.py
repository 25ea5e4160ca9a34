"""WebSocket tunnels through gantry front under pressure: back-pressure both ways (a side
that does not read holds the other, the front buffers a bounded amount) and a graceful
stop that lets an open tunnel go on until graceful_timeout."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.process import Front, Launcher, wait_for

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
#: what a flooding side may push at most before the test calls the front unbounded
FLOOD = 256 << 20


class RawWebSocketUpstream:
    """A listening socket that answers each upgrade with a 101 (no frames parsed: the
    tunnel carries bytes) and keeps the accepted sockets for the test to drive."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@contextmanager
def _stack(launch: Launcher, extra: str = "") -> Iterator[tuple[Front, RawWebSocketUpstream]]:
    upstream = RawWebSocketUpstream()
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
{extra}
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "ws"
[front.upstream.ws]
servers = [{{ address = "127.0.0.1:{upstream.port}" }}]
""")
    try:
        yield front, upstream
    finally:
        upstream.close()


def _open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def _flood(sock: socket.socket, stall: float = 1.0) -> int:
    """Send until the peer has taken nothing for ``stall`` seconds (or FLOOD bytes went):
    how many bytes went."""
    sock.setblocking(False)
    block = b"x" * 65536
    sent = 0
    last = time.monotonic()
    while sent < FLOOD and time.monotonic() - last < stall:
        try:
            sent += sock.send(block)
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    return sent


def test_a_client_that_does_not_read_holds_the_upstream(launch: Launcher) -> None:
    with _stack(launch) as (front, upstream):
        client = _open(front.port)
        assert wait_for(lambda: upstream.accepted)
        pushed = _flood(upstream.accepted[0])
        # kernel buffers on both hops plus the front's high-water mark, not everything
        assert pushed < 64 << 20, pushed
        # and nothing was lost: the client reads it all once it reads
        client.settimeout(10)
        got = 0
        while got < pushed:
            chunk = client.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == pushed
        client.close()


def test_an_upstream_that_does_not_read_holds_the_client(launch: Launcher) -> None:
    with _stack(launch) as (front, upstream):
        client = _open(front.port)
        assert wait_for(lambda: upstream.accepted)
        pushed = _flood(client)
        assert pushed < 64 << 20, pushed
        server = upstream.accepted[0]
        server.settimeout(10)
        got = 0
        while got < pushed:
            chunk = server.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == pushed
        client.close()


def _refused(port: int) -> bool:
    """The listener is closed: a connect is refused, or reset when it reached the backlog
    the moment the listener closed (the kernel resets what no one will accept)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def test_graceful_stop_lets_a_tunnel_go_on_until_graceful_timeout(launch: Launcher) -> None:
    with _stack(launch, 'graceful_timeout = "3s"') as (front, upstream):
        client = _open(front.port)
        assert wait_for(lambda: upstream.accepted)
        server = upstream.accepted[0]
        started = time.monotonic()
        os.kill(front.pid, signal.SIGTERM)
        # the stop has begun (the listener is closed): the tunnel still carries bytes
        assert wait_for(lambda: _refused(front.port), limit=3)
        client.sendall(b"still here")
        server.settimeout(5)
        assert server.recv(100) == b"still here"
        server.sendall(b"and back")
        client.settimeout(5)
        assert client.recv(100) == b"and back"
        # past graceful_timeout the front closes it
        client.settimeout(10)
        assert client.recv(100) == b""
        assert 2.5 <= time.monotonic() - started < 9
