"""Helpers for the control socket's tests (a helper module, not a test module): `gantry ctl`
run as a subprocess, and client connections pinned to each worker of a front."""

from __future__ import annotations

import http.client
import subprocess
import sys

from tests.process import REPO, gantry_env, poll, socket_inodes, tcp_socket


def ctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``gantry ctl ARGS``: its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "gantry", "ctl", *args],
        cwd=REPO, env=gantry_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def start_ctl(*args: str) -> subprocess.Popen[str]:
    """``gantry ctl ARGS`` started, not waited for (the caller waits, bounded)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gantry", "ctl", *args],
        cwd=REPO, env=gantry_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def serving_pid(conn: http.client.HTTPConnection, port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server end of ``conn`` (connected to ``port``)."""
    assert conn.sock is not None
    server_end = tcp_socket(port, conn.sock.getsockname()[1])
    if server_end is None:
        return None
    return next((pid for pid in pids if server_end.inode in socket_inodes(pid)), None)


def connection_to_each(
    port: int, pids: set[int], tries: int = 200
) -> dict[int, http.client.HTTPConnection]:
    """A kept-alive connection to ``port`` served by each of ``pids`` (new connections are
    opened until every worker has accepted one; the others are closed)."""
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(tries):
        if len(found) == len(pids):
            return found
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        pid = poll(lambda c=conn: serving_pid(c, port, pids), limit=5, interval=0.01)  # type: ignore[misc]
        if pid is None or pid in found:
            conn.close()
        else:
            found[pid] = conn
    raise AssertionError(f"no connection reached every worker of {pids}: {set(found)}")


def fetch(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, bytes]:
    """One GET on a kept-alive connection: status, Cache-Status and body."""
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("Cache-Status") or "", body
