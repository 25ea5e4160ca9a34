"""The cheap path of a refused client (issue 16's bench goal: refusals at least as fast as
nginx's deny). A client whose own address is blocklisted (no trusted proxy names another,
or a PROXY header named it) is decided once, at accept: its first request is answered
403 without being parsed, and the connection closes (444: closed at once). A refusal
through the chain (a client named by X-Forwarded-For) takes no shared lock: the
blocklist's counts reach the shared stats with the file poll, a quarter second later."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tomllib
from pathlib import Path
from types import FrameType
from typing import Any

from gantry.config.front import front_config_from_dict
from gantry.front.blocklist import FILE_HIT
from gantry.front.connection import FrontConnection
from gantry.front.worker import FrontWorker
from gantry.protocol.proxy_protocol import encode_v1, encode_v2
from tests.process import Front, Launcher, accepts, read_until_closed, responses, wait_for

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT", "127.0.0.1:{proxied_port} proxy_protocol"]
workers = 2
access_log = "{log}"
access_log_format = "json"
stats = "{stats}"

[front.real_ip]
from = ["127.0.0.3"]
header = "{header}"

[front.blocklist]
files = ["{listed}"]
status = {status}

[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""

REQUEST = b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n"
#: what the parser refuses (400): a field without a colon
MALFORMED = b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n"


def _front(
    launch: Launcher, tmp: Path, status: int = 403, header: str = "X-Forwarded-For"
) -> tuple[Front, int]:
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    # listed: 127.0.0.2 (its own connections) and 192.0.2.1 (named by a proxy)
    (tmp / "listed.txt").write_text("127.0.0.2\n192.0.2.1\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        proxied_port = probe.getsockname()[1]
    config = CONFIG.format(
        proxied_port=proxied_port, log=tmp / "access.log", stats=tmp / "stats.sock",
        header=header, listed=tmp / "listed.txt", status=status, root=root,
    )  # fmt: skip
    return launch.front(config), proxied_port


def _send(port: int, data: bytes, source: str, wait: float = 5.0) -> tuple[bytes, bool]:
    """``data`` from ``source`` on a new connection: what came back, and whether the front
    closed the connection."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        if data:
            sock.sendall(data)
        got = read_until_closed(sock, wait)
        return got.data, got.closed


def _blocked_by_file(path: Path) -> int:
    """The front's count of requests refused by a blocklist file's line (stats JSON)."""
    if not accepts(path):
        return -1
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        doc = json.loads(read_until_closed(sock, 5).data)
    return int(doc["limits"]["blocked"]["file"])


def test_a_listed_peer_is_answered_403_unparsed_and_closed(
    launch: Launcher, short_tmp: Path
) -> None:
    front, _ = _front(launch, short_tmp)
    data, closed = _send(front.port, REQUEST, "127.0.0.2")
    assert closed  # no second request on this connection
    ((status, body),) = responses(data)
    assert status == 403 and b"Connection: close" in data, data
    # not parsed: what the parser would refuse (400) is refused as blocked all the same
    data, closed = _send(front.port, MALFORMED, "127.0.0.2")
    assert closed and responses(data)[0][0] == 403, data
    # a HEAD gets the head alone
    data, _ = _send(front.port, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", "127.0.0.2")
    assert data.startswith(b"HTTP/1.1 403") and data.endswith(b"\r\n\r\n"), data
    # a head arriving in pieces is answered once whole
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", front.port))
        sock.sendall(REQUEST[:10])
        assert read_until_closed(sock, 0.3).data == b""  # nothing yet
        sock.sendall(REQUEST[10:])
        assert read_until_closed(sock, 5).data.startswith(b"HTTP/1.1 403")
    # others are served, the same request parsed as ever
    data, _ = _send(
        front.port, REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), "127.0.0.4"
    )
    assert responses(data) == [(200, b"hello\n")]
    data, _ = _send(front.port, MALFORMED, "127.0.0.4")
    assert responses(data)[0][0] == 400
    # each refusal has its access-log line and is counted (the stats within a poll)
    log = short_tmp / "access.log"

    def refused_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        return [line for line in lines if line["remote_addr"] == "127.0.0.2"]

    assert wait_for(lambda: len(refused_lines()) == 4, 5), refused_lines()
    assert {line["status"] for line in refused_lines()} == {403}
    assert wait_for(lambda: _blocked_by_file(short_tmp / "stats.sock") == 4, 5)


def test_a_listed_peer_is_closed_at_accept_with_444(launch: Launcher, short_tmp: Path) -> None:
    front, _ = _front(launch, short_tmp, status=444)
    data, closed = _send(front.port, b"", "127.0.0.2")  # nothing sent: closed all the same
    assert closed and data == b""
    data, _ = _send(
        front.port, REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), "127.0.0.4"
    )
    assert responses(data) == [(200, b"hello\n")]


def test_a_client_named_by_a_proxy_header_is_refused_at_its_first_bytes(
    launch: Launcher, short_tmp: Path
) -> None:
    front, proxied_port = _front(launch, short_tmp, header="proxy_protocol")
    for header in (
        encode_v1(("192.0.2.1", 5000), ("127.0.0.1", 80)),
        encode_v2(("192.0.2.1", 5000), ("127.0.0.1", 80)),
    ):
        data, closed = _send(proxied_port, header + MALFORMED, "127.0.0.3")
        assert closed and responses(data)[0][0] == 403, (header, data)
    # the proxy's other clients are served
    header = encode_v1(("192.0.2.9", 5000), ("127.0.0.1", 80))
    data, _ = _send(
        proxied_port,
        header + REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
        "127.0.0.3",
    )
    assert responses(data) == [(200, b"hello\n")]


def test_a_refusal_through_the_chain_takes_no_shared_lock(short_tmp: Path) -> None:
    """A client named by X-Forwarded-For is refused by the chain's blocklist handler:
    counted in the worker, not under the shared counters' lock per request."""
    (short_tmp / "listed.txt").write_text("192.0.2.1\n")
    root = short_tmp / "site"
    root.mkdir()
    text = CONFIG.format(
        proxied_port=1, log="", stats="", header="X-Forwarded-For",
        listed=short_tmp / "listed.txt", status=403, root=root,
    ).replace('access_log = ""\n', "").replace('stats = ""\n', "")  # fmt: skip
    text = text.replace('from = ["127.0.0.3"]', 'from = ["127.0.0.1"]')
    config = front_config_from_dict(tomllib.loads(text.replace("FRONT_PORT", "1"))["front"])
    loop = asyncio.new_event_loop()
    worker = FrontWorker(config, loop, None)
    server = loop.run_until_complete(
        loop.create_server(lambda: FrontConnection(worker), "127.0.0.1", 0)
    )
    client = socket.create_connection(server.sockets[0].getsockname()[:2], timeout=10)
    client.setblocking(False)
    refused = REQUEST.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")
    c_calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            c_calls.append(getattr(arg, "__name__", ""))

    async def exchange(count: int) -> bytes:
        answer = b""
        client.sendall(refused * count)  # pipelined: answered in turn on the connection
        while answer.count(b"HTTP/1.1 403") < count:
            answer += await loop.sock_recv(client, 65536)
        return answer

    try:
        loop.run_until_complete(asyncio.wait_for(exchange(1), 10))
        assert worker.defences is not None and worker.defences.bans is not None
        sys.setprofile(profile)
        try:
            loop.run_until_complete(asyncio.wait_for(exchange(5), 10))
        finally:
            sys.setprofile(None)
        assert "acquire" not in c_calls, c_calls
        blocklist = worker.blocklist
        assert blocklist is not None
        table = worker.defences.bans.table
        assert table.counter(FILE_HIT) == 0  # not yet shared
        blocklist.share_counts()
        assert table.counter(FILE_HIT) == 6
    finally:
        client.close()
        server.close()
        worker.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
