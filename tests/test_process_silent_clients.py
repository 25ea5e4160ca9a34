"""A client that connects to a master's stats or metrics socket and says nothing must not
stall the master's loop: workers are still replaced at once and harakiri fires on time.
Real processes: ``gantry serve`` with a master, ``gantry up``, the real uwsgitop."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import GantryServer, GantryUp, child_pids, free_port, http_get, wait_for
from tests.support_process import read_stats, silent_clients, uwsgitop_screen
from tests.support_up import demo_stack

SILENT = 10


@pytest.fixture
def master(tmp_path: Path) -> Iterator[tuple[GantryServer, int, int]]:
    """A master with 2 workers, a stats socket, a metrics endpoint and a 1 s harakiri."""
    stats_port, metrics_port = free_port(), free_port()
    server = GantryServer(
        "tests.apps_process:app",
        "--workers", "2",
        "--harakiri", "1",
        "--stats", f"127.0.0.1:{stats_port}",
        "--metrics", f"127.0.0.1:{metrics_port}",
        log_path=tmp_path / "gantry.log",
    )  # fmt: skip
    server.start()
    try:
        assert wait_for(lambda: len(child_pids(server.pid)) == 2, 10), server.log_text()
        yield server, stats_port, metrics_port
    finally:
        server.stop()


def _silent_on_both(stats_port: int, metrics_port: int) -> list[socket.socket]:
    return silent_clients(("127.0.0.1", metrics_port), SILENT) + silent_clients(
        ("127.0.0.1", stats_port), SILENT
    )


def test_killed_worker_is_replaced_while_clients_sit_silent(
    master: tuple[GantryServer, int, int],
) -> None:
    server, stats_port, metrics_port = master
    silent = _silent_on_both(stats_port, metrics_port)
    try:
        time.sleep(0.3)  # let the master accept them all (a fixed wait: nothing to observe)
        before = child_pids(server.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_for(lambda: len(child_pids(server.pid) - before) == 1, 5.0), server.log_text()
        replaced_after = time.monotonic() - killed
        assert replaced_after < 0.5, f"replaced after {replaced_after:.2f} s"
    finally:
        for sock in silent:
            sock.close()


def test_harakiri_fires_on_time_while_clients_sit_silent(
    master: tuple[GantryServer, int, int],
) -> None:
    server, stats_port, metrics_port = master
    silent = _silent_on_both(stats_port, metrics_port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        started = time.monotonic()
        conn.request("GET", "/sleep?20")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse().read()
        took = time.monotonic() - started
        # harakiri 1 s, checked every turn of the loop (at most 0.25 s apart)
        assert took < 1.5, f"the request was killed after {took:.2f} s"
        assert "HARAKIRI" in server.log_text()
    finally:
        for sock in silent:
            sock.close()


def test_stats_and_metrics_answer_beside_silent_clients(
    master: tuple[GantryServer, int, int],
) -> None:
    server, stats_port, metrics_port = master
    silent = _silent_on_both(stats_port, metrics_port)
    try:
        started = time.monotonic()
        document = read_stats(stats_port)
        assert b'"workers"' in document
        status, body = http_get(metrics_port, "/metrics")
        assert status == 200 and b"gantry_workers" in body
        took = time.monotonic() - started
        assert took < 0.5, f"answered after {took:.2f} s"
        _uwsgitop_shows_workers(server, stats_port)
    finally:
        for sock in silent:
            sock.close()


def test_a_silent_client_is_closed_after_the_deadline(
    master: tuple[GantryServer, int, int],
) -> None:
    _, _, metrics_port = master
    (sock,) = silent_clients(("127.0.0.1", metrics_port), 1)
    with sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(100) == b""  # the master closed it
        assert time.monotonic() - started < 3.0


def test_open_connections_are_bounded(master: tuple[GantryServer, int, int]) -> None:
    """Far more silent clients than the bound: the oldest are closed, a new one is answered."""
    server, stats_port, metrics_port = master
    silent = silent_clients(("127.0.0.1", metrics_port), 100)
    try:
        assert wait_for(lambda: _closed_count(silent) >= 100 - 32, 2.0)
        assert len(os.listdir(f"/proc/{server.pid}/fd")) < 60
        assert b'"workers"' in read_stats(stats_port)
    finally:
        for sock in silent:
            sock.close()


def _closed_count(socks: list[socket.socket]) -> int:
    closed = 0
    for sock in socks:
        ready, _, _ = select.select([sock], [], [], 0)
        if ready:
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    closed += 1
            except ConnectionError:
                closed += 1
    return closed


def _uwsgitop_shows_workers(server: GantryServer, stats_port: int) -> None:
    """uwsgitop is a curses program: run it on a pseudo-terminal until it shows the workers."""
    text = uwsgitop_screen(stats_port, 3.0, until=b"WID")
    assert "Traceback" not in text and "unable to get" not in text, text[-2000:]
    assert "WID" in text, text[-2000:]


def test_stack_supervisor_is_not_stalled_by_silent_clients(tmp_path: Path) -> None:
    """gantry up: silent clients on the stack's stats and metrics; a part's master killed
    is started again at once, and the stack's stats still answer at once."""
    stats_port, metrics_port = free_port(), free_port()
    config = demo_stack(
        stack=f"""
        stats = "127.0.0.1:{stats_port}"
        metrics = "127.0.0.1:{metrics_port}"
        """
    )
    up = GantryUp(tmp_path, config)
    up.start()
    try:
        assert wait_for(lambda: _pools_up(stats_port) == {"front", "hello"}, 20), up.log_text()
        silent = _silent_on_both(stats_port, metrics_port)
        try:
            time.sleep(0.3)  # let the supervisor accept them all
            before = child_pids(up.pid)
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            assert wait_for(lambda: len(child_pids(up.pid) - before) == 1, 5), up.log_text()
            restarted_after = time.monotonic() - killed
            # the supervisor waits 0.1 s before starting a part that ran long enough
            assert restarted_after < 0.5, f"started again after {restarted_after:.2f} s"
            started = time.monotonic()
            assert b'"pools"' in read_stats(stats_port)
            assert time.monotonic() - started < 1.5
        finally:
            for sock in silent:
                sock.close()
    finally:
        up.stop()


def _pools_up(stats_port: int) -> set[str]:
    import json

    try:
        doc = json.loads(read_stats(stats_port))
    except (OSError, ValueError):
        return set()
    return {pool["name"] for pool in doc["pools"] if pool["up"]}
