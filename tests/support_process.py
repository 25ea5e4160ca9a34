"""Helpers for the process-loop and stats tests: silent clients, stats, uwsgitop.

Waiting on a condition and a process's children are ``tests.process.wait_for`` and
``child_pids``."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

UWSGITOP = Path(sys.executable).parent / "uwsgitop"


def silent_clients(address: tuple[str, int] | str, count: int) -> list[socket.socket]:
    """``count`` connections to ``address`` that never send a byte (the caller closes them)."""
    opened = []
    for _ in range(count):
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(address)
        opened.append(sock)
    return opened


def read_pty(fd: int, limit: float, until: bytes | None = None) -> bytes:
    """What a program on a pseudo-terminal wrote, read until ``until`` shows, the program
    ends (the read fails) or ``limit`` seconds pass."""
    output = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (until is None or until not in output):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                output += os.read(fd, 65536)
            except OSError:
                break
    return output


def uwsgitop_screen(stats_port: int, limit: float = 3.0, until: bytes | None = None) -> str:
    """What the real uwsgitop (a curses program) drew on a pseudo-terminal, reading the
    stats server on 127.0.0.1:``stats_port``; stopped by its PID after ``limit`` seconds
    or once ``until`` shows."""
    if not UWSGITOP.exists():
        pytest.fail("uwsgitop is not installed in the test environment (pip install uwsgitop)")
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec uwsgitop on the pty
        os.environ["TERM"] = "xterm"
        os.execv(sys.executable, [sys.executable, str(UWSGITOP), f"127.0.0.1:{stats_port}"])
    try:
        output = read_pty(fd, limit, until)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    return output.decode("utf-8", "replace")


def read_stats(port: int, timeout: float = 5.0) -> bytes:
    """One stats document from 127.0.0.1:``port``, read until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)
