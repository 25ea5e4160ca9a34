"""A worker that stopped accepting at its worker_connections ceiling, still full, takes
the clients waiting in the listen queue (and refuses them) only once it has seen them
waiting at two ticks in a row (FrontWorker's two-tick resume rule): at one look, a busy
worker with room may just not have reached its accept yet. A worker in this process
(its loop run by the test) on a real listening socket it shares as a front's workers do,
real clients, its clock ticked by the test."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gantry.config.front import front_config_from_dict
from gantry.front.run import _connections, _SharedListeners
from gantry.front.worker import FrontWorker
from tests.support_front import CEILING_BODY, CEILING_REQUEST

#: worker_connections: the worker pauses accepting when it holds this many (below 64 its
#: accept limit is the ceiling itself) and refuses one more it accepts
CEILING = 5


class SharingWorker:
    """A front worker with CEILING connections at most whose one listener is served as
    when other workers share it (so it pauses and resumes accepting on it)."""

    def __init__(self, root: Path) -> None:
        text = f"""
[front]
listen = ["127.0.0.1:1"]
workers = 2
worker_connections = {CEILING}
[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""
        config = front_config_from_dict(tomllib.loads(text)["front"])
        self.loop = asyncio.new_event_loop()
        self.worker = FrontWorker(config, self.loop, None)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.switch = _SharedListeners(self.loop)
        factory = _connections(self.worker, 0, config.listeners[0])
        self.loop.run_until_complete(self.switch.serve(factory, self.listener))
        self.worker.accept_switch = self.switch
        self.clients: list[socket.socket] = []

    def client(self) -> socket.socket:
        """A new non-blocking client of the listener (connected: the kernel completes the
        handshake whether or not the worker accepts it)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        self.clients.append(sock)
        return sock

    def answered(self, sock: socket.socket) -> bool:
        """CEILING_REQUEST on ``sock`` gets its 200 (the worker's loop run meanwhile)."""

        async def ask() -> bytes:
            await self.loop.sock_sendall(sock, CEILING_REQUEST)
            data = b""
            while not data.endswith(CEILING_BODY):
                piece = await self.loop.sock_recv(sock, 65536)
                if not piece:
                    break
                data += piece
            return data

        data = self.loop.run_until_complete(asyncio.wait_for(ask(), 5))
        return data.startswith(b"HTTP/1.1 200")

    def read(self, sock: socket.socket, limit: float) -> bytes | None:
        """What ``sock`` receives first within ``limit`` seconds, the worker's loop run
        meanwhile: b"" when closed or reset, None when nothing came."""

        async def first() -> bytes:
            try:
                return await self.loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return b""

        try:
            return self.loop.run_until_complete(asyncio.wait_for(first(), limit))
        except TimeoutError:
            return None

    def until(self, condition: Callable[[], bool], limit: float) -> bool:
        """Run the loop until ``condition()`` (polled every 10 ms) or ``limit`` seconds."""

        async def wait() -> bool:
            deadline = self.loop.time() + limit
            while not condition():
                if self.loop.time() > deadline:
                    return False
                await asyncio.sleep(0.01)
            return True

        return self.loop.run_until_complete(wait())

    def close(self) -> None:
        """Close the clients, the listeners, the worker and its loop."""
        for sock in self.clients:
            sock.close()
        self.switch.close()
        self.worker.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        self.listener.close()


@pytest.fixture
def sharing(tmp_path: Path) -> Iterator[SharingWorker]:
    (tmp_path / "index.html").write_bytes(CEILING_BODY)
    worker = SharingWorker(tmp_path)
    try:
        yield worker
    finally:
        worker.close()


def test_a_full_worker_takes_waiting_clients_at_the_second_tick(sharing: SharingWorker) -> None:
    held = [sharing.client() for _ in range(CEILING)]
    assert all(sharing.answered(sock) for sock in held)
    assert len(sharing.worker.connections) == CEILING
    assert not sharing.switch.accepting  # full: it left new clients to the other workers
    waiting = sharing.client()
    assert sharing.until(sharing.switch.clients_waiting, 5)
    sharing.worker.start_clock()  # a tick sees the client waiting: not enough
    assert sharing.read(waiting, 0.3) is None  # not taken, not refused: left waiting
    assert not sharing.switch.accepting
    sharing.worker.start_clock()  # the next sees it again: every worker is full
    assert sharing.read(waiting, 5) == b""  # taken and refused at once, not left waiting
    assert sharing.until(lambda: not sharing.switch.clients_waiting(), 5)
    assert all(sharing.answered(sock) for sock in held)  # the held ones are still served
