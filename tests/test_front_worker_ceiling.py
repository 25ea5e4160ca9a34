"""worker_connections with several workers on one listening socket: a worker at its
ceiling leaves new clients to the workers that have room (it took them and closed them,
so a front with room refused clients), accepts again once it has room, and when every
worker is full a new client is still refused, not left waiting."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from tests.process import (
    Front,
    Launcher,
    ready_workers,
    socket_inodes,
    tcp_sockets,
    wait_for,
)
from tests.support_front import CEILING_BODY, answered_once, hold_connections

BODY = CEILING_BODY


def _front(launch: Launcher, tmp: Path, ceiling: int) -> tuple[Front, list[int]]:
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(BODY)
    front = launch.front(
        '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\nworkers = 2\n'
        f"worker_connections = {ceiling}\n"
        f'[[front.server]]\n[[front.server.location]]\npath = "/"\nroot = "{root}"\n'
    )
    workers = sorted(ready_workers(front.pid, 2))
    assert wait_for(lambda: front.log_text().count("front listening") == 2, 10)
    return front, workers


def test_a_full_worker_leaves_new_clients_to_the_others(launch: Launcher, short_tmp: Path) -> None:
    front, (first, second) = _front(launch, short_tmp, ceiling=10)
    held: list[socket.socket] = []
    os.kill(second, signal.SIGSTOP)  # the first worker takes every client, up to full
    try:
        got, refused = hold_connections(front.port, 10)
        held += got
        assert (len(got), refused) == (10, 0)
        os.kill(second, signal.SIGCONT)
        # the full worker raced the other for each of these and closed those it won
        got, refused = hold_connections(front.port, 8)
        held += got
        assert (len(got), refused) == (8, 0)
        assert all(answered_once(sock) for sock in held)
        # with room again, the first accepts again: alone, it answers a new client
        for sock in held[:3]:
            sock.close()
        del held[:3]
        os.kill(second, signal.SIGSTOP)
        got, refused = hold_connections(front.port, 2)
        held += got
        assert (len(got), refused) == (2, 0)
    finally:
        os.kill(second, signal.SIGCONT)
        for sock in held:
            sock.close()
    assert "worker_connections reached" not in front.log_text()


def _clients_of(pid: int, port: int) -> int:
    """The client connections worker ``pid`` holds on ``port``."""
    mine = socket_inodes(pid)
    return sum(
        1
        for found in tcp_sockets()
        if found.inode in mine and found.local_port == port and found.state == "01"
    )


def test_a_worker_near_its_ceiling_leaves_new_clients_to_the_others(
    launch: Launcher, short_tmp: Path
) -> None:
    # the loop accepts every client waiting at once: a worker that stopped only when full
    # took a burst past its ceiling and closed the rest, so it stops 1/64 short of it
    front, (first, second) = _front(launch, short_tmp, ceiling=128)
    held: list[socket.socket] = []
    os.kill(second, signal.SIGSTOP)
    try:
        got, refused = hold_connections(front.port, 126)
        held += got
        assert (len(got), refused) == (126, 0)
        os.kill(second, signal.SIGCONT)
        got, refused = hold_connections(front.port, 10)
        held += got
        assert (len(got), refused) == (10, 0)
        assert _clients_of(first, front.port) == 126
    finally:
        os.kill(second, signal.SIGCONT)
        for sock in held:
            sock.close()


def test_every_worker_full_a_new_client_is_refused(launch: Launcher, short_tmp: Path) -> None:
    front, _ = _front(launch, short_tmp, ceiling=5)
    held, refused = hold_connections(front.port, 10)
    try:
        assert (len(held), refused) == (10, 0)
        # both workers stopped accepting when full, and take the queue again within
        # about a second: the new client is closed then, not kept waiting
        with socket.create_connection(("127.0.0.1", front.port), timeout=5) as extra:
            assert not answered_once(extra, limit=4.0)
            extra.settimeout(4.0)
            try:
                assert extra.recv(10) == b""
            except ConnectionResetError:
                pass
        assert all(answered_once(sock) for sock in held)
        assert wait_for(lambda: "worker_connections reached" in front.log_text(), 5)
        held.pop().close()

        def fresh_answered() -> bool:  # a place free again, once the worker saw the close
            with socket.create_connection(("127.0.0.1", front.port), timeout=5) as fresh:
                return answered_once(fresh)

        assert wait_for(fresh_answered, 10)
    finally:
        for sock in held:
            sock.close()
