"""Helpers for the tests of the front's limits and bans (a helper module, not a test
module): a burst of requests sent at once (an upstream that holds its answers is
support_front's RawUpstream with ``hold``)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.process import (
    read_until_closed,
    ready_workers,
    recv_until,
    socket_inodes,
    tcp_sockets,
)


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
