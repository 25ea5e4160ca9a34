"""Helpers for the process-loop tests (test_process_*.py): silent clients, stats, load.

Waiting on a condition and a process's children are ``tests.process.wait_for`` and
``child_pids``."""

from __future__ import annotations

import socket
import time


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


class Load:
    """Client threads sending GETs to 127.0.0.1:``port`` until stopped, bounded in time and
    count; records every failure and the bodies seen."""

    def __init__(
        self, port: int, path: str = "/", threads: int = 3, max_seconds: float = 60.0
    ) -> None:
        import threading

        self.port = port
        self.path = path
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: set[bytes] = set()
        self.last_body = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _run(self) -> None:
        import http.client

        while not self._stop.is_set() and time.monotonic() < self._deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                        self.bodies.add(body)
                        self.last_body = body
                    else:
                        self.failures.append(f"{response.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            finally:
                conn.close()

    def count(self) -> int:
        """Requests answered 200 so far."""
        with self._lock:
            return self.ok
