"""What an idle keep-alive connection of the front holds (issue 16's bench: 100,000 idle
connections under 1 GiB): no request queue until a client pipelines (an empty deque is
600 bytes), and no llhttp parser until a request the plain path cannot take (half a
kilobyte); the queue still answers pipelined requests in order, and a request that
needs llhttp after plain ones is parsed as ever."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.config.front import front_config_from_dict
from gantry.front.connection import FrontConnection
from gantry.front.worker import FrontWorker
from tests.process import responses

CONFIG = """
listen = ["127.0.0.1:1"]
workers = 1

[[server]]
[[server.location]]
path = "/"
root = "{root}"
"""


class Served:
    """A front worker in this process behind a real listening socket."""

    def __init__(self, root: Path) -> None:
        config = front_config_from_dict(tomllib.loads(CONFIG.format(root=root)))
        self.loop = asyncio.new_event_loop()
        self.worker = FrontWorker(config, self.loop, None)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: FrontConnection(self.worker), "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]

    def exchange(self, client: socket.socket, data: bytes, answers: int) -> bytes:
        """Send ``data`` and read until ``answers`` responses came back."""

        async def run() -> bytes:
            got = b""
            await self.loop.sock_sendall(client, data)
            while got.count(b"HTTP/1.1 ") < answers or not got.endswith(b"one\n"):
                chunk = await self.loop.sock_recv(client, 65536)
                assert chunk, "closed"
                got += chunk
            return got

        return self.loop.run_until_complete(asyncio.wait_for(run(), 10))

    def close(self) -> None:
        self.server.close()
        self.worker.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    (tmp_path / "one.txt").write_text("one\n")
    site = Served(tmp_path)
    try:
        yield site
    finally:
        site.close()


def _client(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.setblocking(False)
    return client


REQUEST = b"GET /one.txt HTTP/1.1\r\nHost: t\r\n\r\n"


def test_an_idle_connection_holds_no_request_queue(served: Served) -> None:
    clients = [_client(served.port) for _ in range(20)]
    try:
        for client in clients:
            assert responses(served.exchange(client, REQUEST, 1)) == [(200, b"one\n")]
        connections = list(served.worker.connections)
        assert len(connections) == 20
        for conn in connections:
            assert isinstance(conn, FrontConnection)
            assert not conn.busy and conn.queue is None
            assert conn.parser._parser is None  # llhttp's: made when first needed
    finally:
        for client in clients:
            client.close()


def test_pipelined_requests_are_queued_and_answered_in_order(served: Served) -> None:
    client = _client(served.port)
    try:
        paths = [b"/one.txt", b"/missing", b"/one.txt", b"/missing2", b"/one.txt"]
        data = b"".join(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n" for path in paths)
        got = served.exchange(client, data, len(paths))
        assert [status for status, _ in responses(got)] == [200, 404, 200, 404, 200]
        (conn,) = served.worker.connections
        assert isinstance(conn, FrontConnection) and not conn.queue  # emptied in turn
    finally:
        client.close()


def test_a_request_needing_llhttp_after_plain_ones(served: Served) -> None:
    client = _client(served.port)
    try:
        assert responses(served.exchange(client, REQUEST, 1)) == [(200, b"one\n")]
        (conn,) = served.worker.connections
        assert isinstance(conn, FrontConnection)
        assert conn.parser._parser is None
        chunked = (
            b"GET /one.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        got = served.exchange(client, chunked + REQUEST, 2)
        assert responses(got) == [(200, b"one\n"), (200, b"one\n")]
        assert conn.parser._parser is not None
    finally:
        client.close()
