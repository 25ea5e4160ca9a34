"""WebSocket through gantry front (issue 18): a real server (the ``websockets`` package,
tests/apps_websocket.py) behind the front, its real client in front of it."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.process import Front, Launcher, free_port, wait_for

pytest.importorskip("websockets")


def _config(ws_port: int, extra: str = "") -> str:
    return f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
{extra}
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "ws"
[[front.server.location]]
path = "/refused/"
proxy = "ws"
websocket = false
[[front.server.location]]
path = "/app/"
proxy = "app"
[front.upstream.ws]
servers = [{{ address = "127.0.0.1:{ws_port}" }}]
[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:/nonexistent/app.sock" }}]
"""


def _start(launch: Launcher, extra: str = "") -> tuple[Front, subprocess.Popen[bytes]]:
    ws_port = free_port()
    server = launch.program(
        [sys.executable, "-m", "tests.apps_websocket", str(ws_port)],
        ("127.0.0.1", ws_port),
        name="ws",
    )
    front = launch.front(_config(ws_port, extra))
    return front, server


def _raw(port: int, request: bytes) -> bytes:
    """One raw request; what comes back until the close (or a response head and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def _upgrade(path: str, key: str = "dGhlIHNhbXBsZSBub25jZQ==", version: str = "13") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: ws.test", "Upgrade: websocket", "Connection: Upgrade"]
    if key:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_messages_pings_and_closes_both_ways(launch: Launcher) -> None:
    front, _ = _start(launch)
    url = f"ws://127.0.0.1:{front.port}"

    async def scenario() -> None:
        async with connect(url + "/echo", max_size=None, ping_interval=None) as ws:
            for size in (0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20):
                data = os.urandom(size)
                await ws.send(data)
                back = await asyncio.wait_for(ws.recv(), 60)
                assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest(), size
                text = "é" * (size // 2)
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 60) == text
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 10)
        # a close from the client ends cleanly (1000 both ways)
        assert ws.close_code == 1000
        # a close from the server reaches the client
        async with connect(url + "/close", ping_interval=None) as ws:
            await ws.send("bye")
            assert await ws.recv() == "bye"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
            assert closed.value.rcvd.reason == "server done"

    asyncio.run(scenario())


def test_the_upstream_sees_the_real_address_and_the_upgrade_only(launch: Launcher) -> None:
    front, _ = _start(launch)

    async def scenario() -> dict[str, str]:
        async with connect(
            f"ws://127.0.0.1:{front.port}/headers",
            additional_headers={"X-Forwarded-For": "203.0.113.9", "Keep-Alive": "timeout=5"},
        ) as ws:
            return dict(json.loads(await ws.recv()))

    fields = asyncio.run(scenario())
    assert fields["x-real-ip"] == "127.0.0.1"
    assert fields["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert fields["upgrade"] == "websocket"
    assert fields["connection"] == "upgrade"
    assert "keep-alive" not in fields


def test_bad_upgrades_are_400_and_refused_locations_403(launch: Launcher) -> None:
    front, _ = _start(launch)
    for request in (
        _upgrade("/echo", key=""),
        _upgrade("/echo", version="8"),
        _upgrade("/echo", key="short"),
        _upgrade("/echo", version=""),
    ):
        answer = _raw(front.port, request)
        assert answer.startswith(b"HTTP/1.1 400 "), (request, answer[:200])
    assert b"Sec-WebSocket-Version: 13" in _raw(front.port, _upgrade("/echo", version="8"))
    post = _upgrade("/echo").replace(b"GET ", b"POST ", 1)
    assert _raw(front.port, post).startswith(b"HTTP/1.1 400 ")
    assert _raw(front.port, _upgrade("/refused/x")).startswith(b"HTTP/1.1 403 ")
    # an upgrade to a uwsgi upstream: said clearly, not attempted
    assert _raw(front.port, _upgrade("/app/x")).startswith(b"HTTP/1.1 502 ")
    # and a proper one goes through
    answer = _raw_upgrade_head(front.port, _upgrade("/echo"))
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer  # RFC 6455's example accept key


def test_an_upstream_that_refuses_the_upgrade_is_answered_as_it_said(launch: Launcher) -> None:
    front, _ = _start(launch)
    answer = _raw(front.port, _upgrade("/deny"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 "), answer
    assert body == b"not for you\n"
    assert b"Content-Length: 12" in head and b"Connection: close" in head, head


def _raw_upgrade_head(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_many_connections_held_open_all_echo(launch: Launcher) -> None:
    front, _ = _start(launch)
    count = 1000

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{front.port}/echo"
        sockets: list[ClientConnection] = list(
            await asyncio.gather(
                *(connect(url, ping_interval=None, open_timeout=30) for _ in range(count))
            )
        )
        try:
            for i, ws in enumerate(sockets):
                await ws.send(f"hello {i}")
            for i, ws in enumerate(sockets):
                assert await asyncio.wait_for(ws.recv(), 30) == f"hello {i}"
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    asyncio.run(scenario())


def test_upstream_killed_mid_connection_closes_the_client(launch: Launcher) -> None:
    front, server = _start(launch)

    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{front.port}/echo", ping_interval=None) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            server.send_signal(signal.SIGKILL)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is None  # no close frame: 1006 on the client's side

    asyncio.run(scenario())
    # the worker keeps serving: a new upgrade finds no server (502), plain HTTP too
    answer = _raw(front.port, _upgrade("/echo"))
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]


def test_idle_tunnel_is_closed_after_websocket_idle_timeout(launch: Launcher) -> None:
    front, _ = _start(launch, 'websocket_idle_timeout = "1s"')

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        async with connect(f"ws://127.0.0.1:{front.port}/echo", ping_interval=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            started = loop.time()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return loop.time() - started

    waited = asyncio.run(scenario())
    assert 0.9 <= waited < 5, waited
    assert wait_for(lambda: "websocket_idle_timeout" in front.log_text())


def test_access_log_line_when_the_tunnel_closes(launch: Launcher, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    front, _ = _start(launch, f'access_log = "{log}"')

    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{front.port}/echo", ping_interval=None) as ws:
            await ws.send(os.urandom(5000))  # not compressible (permessage-deflate)
            await ws.recv()

    asyncio.run(scenario())
    assert wait_for(lambda: log.exists() and " 101 " in log.read_text())
    line = next(line for line in log.read_text().splitlines() if " 101 " in line)
    assert '"GET /echo HTTP/1.1" 101 ' in line, line
    sent = int(line.split('" 101 ')[1].split()[0])
    assert sent >= 5000, line


def _stats(path: Path) -> dict[str, Any]:
    from gantry.stats.top import fetch

    return fetch(str(path))


def _metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_open_websockets_are_counted_in_stats_and_metrics(
    launch: Launcher, short_tmp: Path
) -> None:
    stats_path, metrics_port = short_tmp / "s.sock", free_port()
    front, _ = _start(launch, f'stats = "{stats_path}"\nmetrics = "127.0.0.1:{metrics_port}"')

    def open_now() -> int:
        return sum(w["websockets"] for w in _stats(stats_path)["workers"])

    def gauge() -> int:
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in _metrics(metrics_port).splitlines()
            if line.startswith("gantry_worker_websockets{")
        )

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{front.port}/echo"
        sockets = [await connect(url, ping_interval=None) for _ in range(3)]
        for ws in sockets:
            await ws.send("x")
            assert await ws.recv() == "x"
        assert await asyncio.to_thread(wait_for, lambda: open_now() == 3), _stats(stats_path)
        assert await asyncio.to_thread(wait_for, lambda: gauge() == 3)
        top = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gantry", "top", "--once", str(stats_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "3 websockets open" in top.stdout, top.stdout + top.stderr
        await asyncio.gather(*(ws.close() for ws in sockets))

    asyncio.run(scenario())
    assert wait_for(lambda: open_now() == 0), _stats(stats_path)


def test_json_access_log_has_the_bytes_both_ways(launch: Launcher, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    front, _ = _start(launch, f'access_log = "{log}"\naccess_log_format = "json"')

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{front.port}/echo"
        async with connect(url, ping_interval=None, compression=None) as ws:
            await ws.send(os.urandom(70000))
            await ws.recv()

    asyncio.run(scenario())
    assert wait_for(lambda: log.exists() and '"status": 101' in log.read_text())
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["status"] == 101
    # one 70,000-byte message and a close frame each way (the client's are masked)
    assert 70000 < entry["body_bytes_sent"] < 70100, entry
    assert 70000 < entry["bytes_received"] < 70100, entry


def test_least_conn_counts_an_open_tunnel_as_a_request_in_flight(launch: Launcher) -> None:
    ports = [free_port(), free_port()]
    for port in ports:
        launch.program(
            [sys.executable, "-m", "tests.apps_websocket", str(port)],
            ("127.0.0.1", port),
            name=f"ws{port}",
        )
    servers = ", ".join(f'{{ address = "127.0.0.1:{port}" }}' for port in ports)
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "ws"
[front.upstream.ws]
balance = "least_conn"
servers = [{servers}]
""")
    url = f"ws://127.0.0.1:{front.port}/whoami"

    async def scenario() -> list[str]:
        async with connect(url, ping_interval=None) as held:
            held_by = await held.recv()
            others = []
            for _ in range(4):  # one at a time: each while only the held one is open
                async with connect(url, ping_interval=None) as ws:
                    others.append(await ws.recv())
            return [str(held_by), *map(str, others)]

    held_by, *others = asyncio.run(scenario())
    assert held_by not in others and len(set(others)) == 1, (held_by, others)


def test_the_parser_says_upgrade_with_the_head() -> None:
    """The front decides on the head (the handler chain runs at request_end): the flag
    must be there then, not only once llhttp stops after the request."""
    from gantry.protocol.http1 import RequestHead, RequestParser

    seen: list[tuple[str, bool]] = []

    class Sink:
        head: RequestHead | None = None

        def request_head(self, head: RequestHead) -> None:
            self.head = head
            seen.append(("head", head.upgrade))

        def request_body(self, data: bytes) -> None:
            pass

        def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
            assert self.head is not None
            seen.append(("end", self.head.upgrade))

    RequestParser(Sink()).feed(_upgrade("/echo"))
    assert seen == [("head", True), ("end", True)]
    plain = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\n\r\n"
    seen.clear()
    RequestParser(Sink()).feed(plain)  # Connection names upgrade, but no Upgrade field
    assert seen == [("head", False), ("end", False)]
