"""Helpers for the tests of the front's limits and bans (a helper module, not a test
module): a burst of requests sent at once (an upstream that holds its answers is
support_front's RawUpstream with ``hold``), and a front worker in the test process
behind a real socket, for the tests that look at what one request costs."""

from __future__ import annotations

import asyncio
import socket
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gantry.config.front import front_config_from_dict
from gantry.front.connection import FrontConnection
from gantry.front.limits.handler import RouteLimits
from gantry.front.worker import FrontWorker
from tests.process import (
    read_until_closed,
    ready_workers,
    recv_until,
    socket_inodes,
    tcp_sockets,
)
from tests.support_front import limit_req_zone, limited_site


class Burst:
    """What a burst gave: each request's status (0: none), and the seconds its answer
    took from the first send."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.times: list[float] = []

    def count(self, status: int) -> int:
        """Requests answered with ``status``."""
        return sum(1 for s in self.statuses if s == status)


def _server_side(port: int) -> dict[int, int]:
    """Client port -> socket inode of the server's side of each connection to ``port``."""
    return {
        found.remote_port: found.inode
        for found in tcp_sockets()
        if found.local_port == port and found.state == "01"
    }


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response framed by Content-Length."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(data) - end - 4 >= int(value)
    return True


def spread_connections(
    port: int, master: int, each: int, warm: str, workers: int = 2
) -> list[socket.socket]:
    """``each`` connections held by every worker of the front whose master is ``master``
    (2 x ``each`` for two workers), interleaved: connections are opened in batches, each
    warmed with a request for ``warm`` (answered with a Content-Length), and sorted by
    the worker that accepted it (read from /proc), until every worker has enough."""
    pids = ready_workers(master, workers)
    held: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
    spare: list[socket.socket] = []
    try:
        for _ in range(20):
            if all(len(conns) >= each for conns in held.values()):
                break
            batch = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
            for conn in batch:
                conn.sendall(f"GET {warm} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            for conn in batch:
                recv_until(conn, _complete)
            sides = _server_side(port)
            owners = {pid: socket_inodes(pid) for pid in pids}
            for conn in batch:
                inode = sides.get(conn.getsockname()[1])
                pid = next((p for p, inodes in owners.items() if inode in inodes), None)
                if pid is not None and len(held[pid]) < each:
                    held[pid].append(conn)
                else:
                    spare.append(conn)
    finally:
        for conn in spare:
            conn.close()
    if not all(len(conns) >= each for conns in held.values()):
        for conns in held.values():
            for conn in conns:
                conn.close()
        raise AssertionError(f"the workers did not each accept {each} connections")
    return [conn for group in zip(*held.values(), strict=True) for conn in group]


def burst(
    port: int,
    count: int,
    path: str,
    headers: str = "",
    conns: list[socket.socket] | None = None,
) -> Burst:
    """``count`` requests sent at once, each on its own connection opened beforehand (or
    on ``conns``), so they all reach the front within a few ms."""
    result = Burst()
    if conns is None:
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode()
    try:
        started = time.monotonic()
        for conn in conns:
            conn.sendall(request)
        for conn in conns:
            answer = read_until_closed(conn, 10.0)
            result.statuses.append(answer.status if answer.data else 0)
            result.times.append(time.monotonic() - started)
        return result
    finally:
        for conn in conns:
            conn.close()


def log_lines(path: Path, needle: str) -> list[str]:
    """The lines of the file at ``path`` that contain ``needle``."""
    try:
        return [line for line in path.read_text().splitlines() if needle in line]
    except FileNotFoundError:
        return []


def limited_config(root: Path) -> str:
    """One worker whose /limited/ location (``root``/limited) passes some 100 requests at
    once (burst 100 at 1000r/s, nodelay) before it refuses one."""
    return limited_site(
        root,
        '{ zone = "perip", burst = 100, nodelay = true }',
        zones=limit_req_zone(rate="1000r/s", size="1m"),
        path="/limited/",
        workers=1,
        listen="127.0.0.1:1",
    )


class InProcessFront:
    """A front worker in this process (its loop run by the test) behind a real listening
    socket on 127.0.0.1."""

    def __init__(self, text: str) -> None:
        self.config = front_config_from_dict(tomllib.loads(text)["front"])
        self.loop = asyncio.new_event_loop()
        self.worker = FrontWorker(self.config, self.loop, None)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: FrontConnection(self.worker), "127.0.0.1", 0)
        )
        self.port: int = self.server.sockets[0].getsockname()[1]

    def ask(self, request: bytes, sock: socket.socket) -> bytes:
        """One request on ``sock`` (non-blocking), its whole answer (Content-Length),
        the worker's loop run meanwhile."""
        sock.sendall(request)
        answer = b""

        async def read() -> None:
            nonlocal answer
            while True:
                answer += await self.loop.sock_recv(sock, 65536)
                head, blank, body = answer.partition(b"\r\n\r\n")
                if blank and len(body) >= int(
                    head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]
                ):
                    return

        self.loop.run_until_complete(asyncio.wait_for(read(), 10))
        return answer

    def close(self) -> None:
        """Stop listening, close the worker and its loop."""
        self.server.close()
        self.worker.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


@contextmanager
def limited_front(root: Path) -> Iterator[tuple[InProcessFront, FrontConnection]]:
    """``limited_config`` serving ``root`` (which has limited/one.txt), and the worker's
    side of a client connection that had one request answered through the limit."""
    front = InProcessFront(limited_config(root))
    client = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    client.setblocking(False)
    try:
        answer = front.ask(b"GET /limited/one.txt HTTP/1.1\r\nHost: t\r\n\r\n", client)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        (conn,) = front.worker.connections
        assert isinstance(conn, FrontConnection) and conn.limit_status == "PASSED"
        yield front, conn
    finally:
        client.close()
        front.close()


def route_limits(front: InProcessFront) -> RouteLimits:
    """The limits of the route /limited/one.txt takes (worked out once per route)."""
    route = front.worker.route("t", b"/limited/one.txt")
    assert route is not None
    (limits,) = [handler for handler in route[3] if isinstance(handler, RouteLimits)]
    return limits
