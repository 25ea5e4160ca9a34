"""Helpers for the process-loop tests (test_process_*.py): children, waiting, silent clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


def children(pid: int) -> set[int]:
    """The PIDs of ``pid``'s children (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def wait_for(condition: Callable[[], object], limit: float = 10.0, step: float = 0.01) -> bool:
    """Poll ``condition`` until it is true or ``limit`` seconds pass; whether it became true."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


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


def read_stats(port: int, timeout: float = 5.0) -> bytes:
    """One stats document from 127.0.0.1:``port``, read until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)
