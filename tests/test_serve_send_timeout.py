"""send_timeout (nginx's): a client that reads nothing of its answer is closed after it,
so a connection that never reads cannot hold a worker's buffers and a socket forever."""

from __future__ import annotations

import socket
import time

from tests.process import Launcher, wait_for


def _rcvbuf_small(sock: socket.socket) -> None:
    # a small receive window: the server's output backs up after a few hundred KiB
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


def test_a_client_that_never_reads_is_closed_after_send_timeout(launch: Launcher) -> None:
    server = launch.serve("tests.apps_hostile:app", "--send-timeout", "2s")
    with socket.socket() as sock:
        _rcvbuf_small(sock)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /stream/50 HTTP/1.1\r\nHost: a\r\n\r\n")  # 50 MiB, never read
        assert wait_for(lambda: "send timeout" in server.log_text(), 10), server.log_text()
        # the answer was cut: what is left in the socket ends without the final chunk
        sock.settimeout(10)
        received = b""
        try:
            while chunk := sock.recv(1 << 20):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        assert not received.endswith(b"0\r\n\r\n")
        assert len(received) < 50 << 20


def test_a_slow_reader_that_keeps_reading_is_not_cut(launch: Launcher) -> None:
    """The timeout is between two reads, not for the whole answer."""
    server = launch.serve("tests.apps_hostile:app", "--send-timeout", "2s")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /stream/4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        received = b""
        started = time.monotonic()
        while chunk := sock.recv(256 << 10):
            received += chunk
            time.sleep(0.2)  # the stimulus: a slow reader, more than 2 s in all
        assert received.endswith(b"0\r\n\r\n")
        assert time.monotonic() - started > 2.5
    assert "send timeout" not in server.log_text()
