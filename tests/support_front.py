"""Helpers for the front's own tests (a helper module, not a test module): a real
`gantry front` process, a raw upstream that records what it receives, and /proc readers."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.process import REPO, free_port


class Front:
    """A `gantry front -c FILE` process (FRONT_PORT in the config becomes its port)."""

    def __init__(self, config: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.port = free_port()
        self.path = workdir / "front.toml"
        self.path.write_text(config.replace("FRONT_PORT", str(self.port)))
        self.log = workdir / "front.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log.open("ab")
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), self.env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gantry", "front", "-c", str(self.path)],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gantry front exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gantry front did not listen: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def start_front(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> Front:
    """A started front whose [front] table listens on FRONT_PORT, then ``body``."""
    front = Front('[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n' + body, tmp_path, env)
    front.start()
    return front


class RawUpstream:
    """A real listening socket that records each request head and answers it with
    ``respond(head)`` (bytes), on a thread; connections close after each answer."""

    def __init__(self, respond: Callable[[bytes], bytes]) -> None:
        self.respond = respond
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stopping and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        piece = conn.recv(65536)
                        if not piece:
                            break
                        data += piece
                    self.received.append(data)
                    conn.sendall(self.respond(data))
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.listener.close()


def fields_of(head: bytes) -> list[tuple[str, str]]:
    """The (lower-case name, value) fields of a raw HTTP head."""
    out = []
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out.append((name.strip().lower(), value.strip()))
    return out


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length body from ``sock``: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise EOFError(data)
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for name, value in fields_of(head + b"\r\n\r\n"):
        if name == "content-length":
            length = int(value)
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            raise EOFError(head)
        body += piece
    assert len(body) == length, "more than one response's bytes"
    return head, body


def wait_until(condition: Callable[[], bool], limit: float, what: str) -> None:
    """Poll ``condition`` until true; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
