"""Refusals and the connection they came on (issue 16's blocklist bench, against nginx's
deny behind realip). A client named by a trusted proxy's X-Forwarded-For says nothing
about the TCP peer, which is the proxy and carries other clients too: its refusal (403)
keeps the proxy's keep-alive connection, as nginx's does. A peer listed by its own
address is still answered and closed. The real-address step remembers the field names
and values a proxy sends again and again, so a refused flood through it costs no parsing
per request."""

from __future__ import annotations

import asyncio
import socket
import sys
import tomllib
from pathlib import Path
from types import FrameType
from typing import Any

from gantry.config.front import front_config_from_dict
from gantry.front.connection import FrontConnection
from gantry.front.real_ip import RealAddressHandler
from gantry.front.worker import FrontWorker
from tests.process import Launcher, read_until_closed, responses

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2

[front.real_ip]
from = ["127.0.0.3"]
recursive = true

[front.blocklist]
files = ["{listed}"]

[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""


def _request(client: str = "", close: bool = False) -> bytes:
    fields = f"X-Forwarded-For: {client}\r\n" if client else ""
    if close:
        fields += "Connection: close\r\n"
    return f"GET /index.html HTTP/1.1\r\nHost: t\r\n{fields}\r\n".encode()


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """One whole response read from a keep-alive connection (with a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"closed after {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, f"closed after {data!r}"
        body += piece
    assert len(body) == length, "more than one response"
    return int(head.split(b" ")[1]), body


def _front(launch: Launcher, tmp: Path) -> int:
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    (tmp / "listed.txt").write_text("127.0.0.2\n192.0.2.1\n2001:db8::/32\n")
    return launch.front(CONFIG.format(listed=tmp / "listed.txt", root=root)).port


def test_a_client_refused_by_the_proxys_header_keeps_the_proxys_connection(
    launch: Launcher, short_tmp: Path
) -> None:
    port = _front(launch, short_tmp)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.3", 0))  # the trusted proxy
        proxy.settimeout(10)
        proxy.connect(("127.0.0.1", port))
        for client in ("192.0.2.1", "10.1.1.1, 192.0.2.1", "2001:db8::7", "192.0.2.1"):
            proxy.sendall(_request(client))
            status, _ = _answer(proxy)
            assert status == 403, client
        # the same connection carries the proxy's other clients, served as ever
        proxy.sendall(_request("198.51.100.1"))
        assert _answer(proxy) == (200, b"hello\n")
        proxy.sendall(_request("192.0.2.1"))
        assert _answer(proxy)[0] == 403
        proxy.sendall(_request("198.51.100.1", close=True))
        got = read_until_closed(proxy, 10)
        assert got.closed and responses(got.data) == [(200, b"hello\n")]


def test_a_peer_listed_by_its_own_address_is_still_closed(
    launch: Launcher, short_tmp: Path
) -> None:
    port = _front(launch, short_tmp)
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(_request() * 2)
        got = read_until_closed(sock, 10)
        assert got.closed
        assert [status for status, _ in responses(got.data)] == [403]  # the second unread


def test_the_real_address_of_a_known_proxy_value_is_not_read_again(short_tmp: Path) -> None:
    """A repeated X-Forwarded-For value and field names cost no lowering, splitting or
    address parsing (pure run: the calls are seen), and the answer is the same."""
    (short_tmp / "listed.txt").write_text("192.0.2.1\n")
    root = short_tmp / "site"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    text = CONFIG.format(listed=short_tmp / "listed.txt", root=root)
    text = text.replace("FRONT_PORT", "1").replace('"127.0.0.3"', '"127.0.0.1"')
    config = front_config_from_dict(tomllib.loads(text)["front"])
    loop = asyncio.new_event_loop()
    worker = FrontWorker(config, loop, None)
    server = loop.run_until_complete(
        loop.create_server(lambda: FrontConnection(worker), "127.0.0.1", 0)
    )
    client = socket.create_connection(server.sockets[0].getsockname()[:2], timeout=10)
    client.setblocking(False)
    refused = _request("10.0.0.9, 192.0.2.1").replace(b"Host: t", b"Host: t\r\nX-Other: 1")
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        # what real_ip.py runs: its functions, and the C functions they call
        if not frame.f_code.co_filename.endswith("real_ip.py"):
            return
        if event == "c_call":
            calls.append(getattr(arg, "__name__", ""))
        elif event == "call":
            calls.append(frame.f_code.co_name)

    async def exchange(count: int) -> bytes:
        answer = b""
        for _ in range(count):
            client.sendall(refused)
            while answer.count(b"HTTP/1.1 403") < 1:
                answer += await loop.sock_recv(client, 65536)
            assert answer.count(b"HTTP/1.1 403") == 1, answer
            answer = b""
        return answer

    try:
        loop.run_until_complete(asyncio.wait_for(exchange(1), 10))
        (handler,) = [
            h for h in worker.route("t", b"/index.html")[3]  # type: ignore[index]
            if isinstance(h, RealAddressHandler)
        ]  # fmt: skip
        calls.clear()
        sys.setprofile(profile)
        try:
            loop.run_until_complete(asyncio.wait_for(exchange(3), 10))
        finally:
            sys.setprofile(None)
        (conn,) = worker.connections
        assert isinstance(conn, FrontConnection)
        assert conn.remote_addr == "192.0.2.1" and conn.status == 403
        if calls:  # pure: the handler's own calls are seen (compiled, none are)
            assert set(calls) <= {"handle", "get", "len"}, calls
        assert handler.found == {b"10.0.0.9, 192.0.2.1": "192.0.2.1"}
    finally:
        client.close()
        server.close()
        worker.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
