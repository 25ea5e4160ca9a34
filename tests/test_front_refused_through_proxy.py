"""A flood of refused requests through a trusted proxy (issue 16's blocklist bench: the
client named by X-Forwarded-For, nginx's deny beside it): a keep-alive connection that
sends again, byte for byte, the request the blocklist refused last gets the same 403
without the request being parsed again (the replay in front/connection.py); anything
else takes the whole path. Either way each refusal is counted (the blocklist's hits, the
requests), logged and timed as any, another client on the same connection is served, a
client taken off the list is served at once, and a request logs its own URI whatever
the connection's last request was rewritten from."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from pathlib import Path

import pytest

from gantry.config.front import front_config_from_dict
from gantry.front.connection import FrontConnection
from gantry.front.worker import FrontWorker
from gantry.protocol.http1 import RequestParser
from tests.support_front import RawUpstream

CONFIG = """
[front]
listen = ["127.0.0.1:1"]
workers = 1
keepalive_requests = {keepalive_requests}
access_log = "{tmp}/access.log"
access_log_format = '$remote_addr "$request" $status $body_bytes_sent'
[front.real_ip]
from = ["127.0.0.1"]
[front.blocklist]
files = ["{tmp}/listed.txt"]
[[front.server]]
[[front.server.location]]
path = "/"
root = "{tmp}/site"
[[front.server.location]]
path = "/old/"
rewrite = [["^/old/(.*)$", "/up/$1", "last"]]
[[front.server.location]]
path = "/up/"
proxy = "app"
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{upstream_port}" }}]
"""

BLOCKED = "192.0.2.1"
PASSING = "198.51.100.1"


def request(client: str, path: str = "/index.html", method: str = "GET") -> bytes:
    """A request as a proxy forwards it for ``client``."""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: bench\r\n"
        f"X-Forwarded-For: {client}\r\n\r\n"
    ).encode()


class CountingParser(RequestParser):
    """The connection's parser, counting the feeds it is given."""

    feeds = 0

    def feed(self, data: bytes) -> None:
        self.feeds += 1
        super().feed(data)


class Proxied:
    """A front worker in this process behind a real listening socket, and one keep-alive
    connection to it from a trusted proxy (127.0.0.1)."""

    def __init__(self, tmp: Path, keepalive_requests: int = 1000, upstream_port: int = 9) -> None:
        (tmp / "site").mkdir(exist_ok=True)
        (tmp / "site" / "index.html").write_text("hello\n")
        (tmp / "listed.txt").write_text(f"# flood\n{BLOCKED}\n")
        self.tmp = tmp
        text = CONFIG.format(
            tmp=tmp, keepalive_requests=keepalive_requests, upstream_port=upstream_port
        )
        config = front_config_from_dict(tomllib.loads(text)["front"])
        self.loop = asyncio.new_event_loop()
        self.worker = FrontWorker(config, self.loop, None)
        worker = self.worker
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: FrontConnection(worker), "127.0.0.1", 0)
        )
        self.client = socket.create_connection(self.server.sockets[0].getsockname()[:2])
        self.client.setblocking(False)
        self.loop.run_until_complete(self._until(lambda: bool(worker.connections)))
        (conn,) = worker.connections
        assert isinstance(conn, FrontConnection)
        self.conn = conn
        self.parser = conn.parser = CountingParser(conn, worker.limits, worker.field_memo)

    async def _until(self, done: object) -> None:
        for _ in range(500):
            if done():  # type: ignore[operator]
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not in time")

    def ask(self, data: bytes, head_only: bool = False) -> tuple[int, bytes, bytes]:
        """Send ``data``; the whole response: status, head, body (closed: status 0; the
        head alone with ``head_only``, as to a HEAD)."""
        self.client.sendall(data)
        answer = b""

        async def read() -> None:
            nonlocal answer
            while True:
                piece = await self.loop.sock_recv(self.client, 65536)
                if not piece:
                    return
                answer += piece
                head, found, body = answer.partition(b"\r\n\r\n")
                if found and head_only:
                    return
                if found:
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        return

        self.loop.run_until_complete(asyncio.wait_for(read(), 10))
        if not answer:
            return 0, b"", b""
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), head, body

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.worker.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


@pytest.fixture
def proxied(tmp_path: Path) -> Proxied:
    served = Proxied(tmp_path)
    yield served  # type: ignore[misc]
    served.close()


def test_the_same_refused_request_again_is_refused_without_parsing(proxied: Proxied) -> None:
    refused = request(BLOCKED)
    first = proxied.ask(refused)
    assert first[0] == 403
    assert proxied.parser.feeds == 1
    for _ in range(5):
        assert proxied.ask(refused) == first  # the same answer, byte for byte
    assert proxied.parser.feeds == 1  # never parsed again
    assert proxied.conn.requests == 6 and not proxied.conn.closed
    # the flood is counted as the chain counts it: each hit, each request
    blocklist = proxied.worker.blocklist
    assert blocklist is not None and blocklist.hits == {BLOCKED: 6}
    assert proxied.worker.counters.requests == 6
    # and logged with the address the proxy named, the request as sent
    lines = (proxied.tmp / "access.log").read_text().splitlines()
    assert lines == [f'{BLOCKED} "GET /index.html HTTP/1.1" 403 {len(first[2])}'] * 6


def test_any_other_request_takes_the_whole_path(proxied: Proxied) -> None:
    refused = request(BLOCKED)
    assert proxied.ask(refused)[0] == 403
    # another client through the same proxy connection is served, and the address it
    # named is the connection's for its request
    status, _, body = proxied.ask(request(PASSING))
    assert (status, body) == (200, b"hello\n")
    assert proxied.conn.remote_addr == PASSING
    assert proxied.parser.feeds == 2
    # the refused request again: refused at once, with the refused client's address
    assert proxied.ask(refused)[0] == 403
    assert proxied.parser.feeds == 2
    assert proxied.conn.remote_addr == BLOCKED
    # the same client with another request line, or a HEAD: parsed, refused
    assert proxied.ask(request(BLOCKED, path="/other"))[0] == 403
    assert proxied.ask(request(BLOCKED, method="HEAD"), head_only=True)[::2] == (403, b"")
    assert proxied.parser.feeds == 4
    # a HEAD refused again: again without its body
    assert proxied.ask(request(BLOCKED, method="HEAD"), head_only=True)[::2] == (403, b"")
    assert proxied.parser.feeds == 4


def test_a_client_no_longer_listed_is_served(proxied: Proxied) -> None:
    refused = request(BLOCKED)
    assert proxied.ask(refused)[0] == 403
    assert proxied.ask(refused)[0] == 403
    (proxied.tmp / "listed.txt").write_text("# nobody\n")
    blocklist = proxied.worker.blocklist
    assert blocklist is not None and blocklist.poll(force=True)
    status, _, body = proxied.ask(refused)
    assert (status, body) == (200, b"hello\n")
    assert blocklist.hits == {BLOCKED: 2}


def test_a_refused_request_logs_its_own_uri_after_a_rewritten_one(tmp_path: Path) -> None:
    # the rewritten request goes to an upstream: still being answered when the refused
    # one behind it is parsed, which then waits in the connection's queue
    upstream = RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nup\n")
    served = Proxied(tmp_path, upstream_port=upstream.port)
    try:
        rewritten = request(PASSING, path="/old/index.html")
        refused = request(BLOCKED)
        # one after the other (the connection idle between them), then pipelined
        assert served.ask(rewritten)[::2] == (200, b"up\n")
        status, _, page = served.ask(refused)
        assert status == 403
        served.client.sendall(rewritten + refused)
        answers = b""

        async def read() -> None:
            nonlocal answers
            while not answers.endswith(page):
                answers += await served.loop.sock_recv(served.client, 65536)

        served.loop.run_until_complete(asyncio.wait_for(read(), 10))
        assert answers.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 403" in answers
        assert served.conn.requests == 4
        # each logged as its client sent it: the refusal not with the rewritten one's URI
        passed = f'{PASSING} "GET /old/index.html HTTP/1.1" 200 3'
        denied = f'{BLOCKED} "GET /index.html HTTP/1.1" 403 {len(page)}'
        lines = (tmp_path / "access.log").read_text().splitlines()
        assert lines == [passed, denied, passed, denied]
    finally:
        served.close()
        upstream.close()


def test_keepalive_requests_still_ends_the_connection(tmp_path: Path) -> None:
    served = Proxied(tmp_path, keepalive_requests=3)
    try:
        refused = request(BLOCKED)
        assert served.ask(refused)[0] == 403
        status, head, _ = served.ask(refused)
        assert status == 403 and b"Connection: close" not in head
        status, head, _ = served.ask(refused)  # the third and last
        assert status == 403 and b"Connection: close" in head
        assert served.ask(refused)[0] == 0  # closed
    finally:
        served.close()


def test_requests_pipelined_in_one_read_are_each_refused(proxied: Proxied) -> None:
    refused = request(BLOCKED)
    proxied.client.sendall(refused * 3)
    answers = b""

    async def read() -> None:
        nonlocal answers
        while answers.count(b"HTTP/1.1 403") < 3:
            answers += await proxied.loop.sock_recv(proxied.client, 65536)

    proxied.loop.run_until_complete(asyncio.wait_for(read(), 10))
    assert proxied.conn.requests == 3
    assert proxied.ask(refused)[0] == 403
    assert proxied.conn.requests == 4
