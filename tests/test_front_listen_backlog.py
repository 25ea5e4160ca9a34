"""The front's listen queue (issue 16's idle_many bench: 36,000 keep-alive clients took
gantry 83-110 s to connect, nginx 7-14 s). The loop's create_server listened again on the
bound socket with its own default queue of 100, so a burst of clients past it had their
SYNs dropped and retried 1, 3, 7 s later. The queue is the front's own again (2048):
clients connecting while the worker is busy are all taken by the kernel at once."""

from __future__ import annotations

import os
import select
import signal
import socket
from pathlib import Path

from tests.process import Launcher, tcp_sockets, wait_for

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""

#: past the loop's default queue of 100, well within the front's 2048 (and somaxconn)
CLIENTS = 400
REQUEST = b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n"


def _established(ports: set[int], server_port: int) -> int:
    """How many of the clients on ``ports`` have their connection established (the
    kernel answered their SYN: it had room in the listen queue)."""
    return sum(
        1
        for found in tcp_sockets()
        if found.remote_port == server_port and found.local_port in ports and found.state == "01"
    )


def test_a_burst_of_clients_is_queued_while_the_worker_is_busy(
    launch: Launcher, short_tmp: Path
) -> None:
    root = short_tmp / "site"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    front = launch.front(CONFIG.format(root=root))
    assert front.process is not None
    pid = front.process.pid  # one worker, no master: this process accepts
    clients: list[socket.socket] = []
    os.kill(pid, signal.SIGSTOP)  # busy: it accepts nothing meanwhile
    try:
        for _ in range(CLIENTS):
            sock = socket.socket()
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", front.port)) in (0, 115)  # EINPROGRESS
            clients.append(sock)
        ports = {sock.getsockname()[1] for sock in clients}
        # with a queue of 100, the rest stay in SYN-SENT as long as the worker is stopped
        assert wait_for(lambda: _established(ports, front.port) == CLIENTS, 10), (
            f"{_established(ports, front.port)} of {CLIENTS} clients got a connection"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        # each is served once the worker goes on
        for sock in clients:
            sock.setblocking(True)
            sock.settimeout(10)
            sock.sendall(REQUEST)
        for sock in clients:
            answer = b""
            while not answer.endswith(b"hello\n"):
                ready, _, _ = select.select([sock], [], [], 10)
                assert ready, answer
                piece = sock.recv(4096)
                assert piece, answer
                answer += piece
            assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        for sock in clients:
            sock.close()
