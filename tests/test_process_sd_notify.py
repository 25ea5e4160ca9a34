"""sd_notify in every mode: READY=1 once serving, RELOADING=1 then READY=1 around a SIGHUP,
STOPPING=1 on SIGTERM, heard on a real unix datagram socket given as NOTIFY_SOCKET, from
``gantry serve`` alone and with a master, ``gantry front`` with one worker and with two,
and ``gantry up``. A process serving alone reloads by re-executing itself: new code (or,
for the front, the file read again), no refused connection, a broken edit keeps it
serving."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import (
    ClientLoad,
    GantryServer,
    GantryUp,
    free_port,
    start_gantry,
    try_get,
    wait_for,
)
from tests.support_up import demo_stack

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"VERSION"]
"""


class Notifications:
    """A datagram socket standing for systemd's: the messages in the order they came."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def _read(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return

    def wait(self, line: str, after: int = 0, limit: float = 20.0) -> int:
        """The index of the first message from ``after`` on with ``line``, waiting for it."""

        def found() -> int | None:
            self._read()
            for index in range(after, len(self.messages)):
                if line in self.messages[index].splitlines():
                    return index
            return None

        assert wait_for(lambda: found() is not None, limit), (line, self.messages)
        index = found()
        assert index is not None
        return index + 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    listener = Notifications(tmp_path / "notify.sock")
    yield listener
    listener.close()


def _cycle(notifications: Notifications, pid: int) -> None:
    """READY, then SIGHUP: RELOADING and READY again, then SIGTERM: STOPPING."""
    seen = notifications.wait("READY=1")
    os.kill(pid, signal.SIGHUP)
    seen = notifications.wait("RELOADING=1", seen)
    notifications.wait("READY=1", seen)


def _write(site: Path, version: str) -> None:
    path = site / "notified.py"
    path.write_text(APP.replace("VERSION", version))
    later = time.time() + 2
    os.utime(path, (later, later))


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_gantry_serve_notifies(
    tmp_path: Path, notifications: Notifications, workers: list[str]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _write(site, "v1")
    server = GantryServer(
        "notified:app", "--chdir", str(site), *workers,
        log_path=tmp_path / "gantry.log", env={"NOTIFY_SOCKET": notifications.path},
    )  # fmt: skip
    server.start()
    try:
        with ClientLoad(server.port) as load:
            assert wait_for(lambda: load.count() > 20, 10)
            _write(site, "v2")
            _cycle(notifications, server.pid)
            assert wait_for(lambda: load.last_body == b"v2", 10), server.log_text()
            # a broken edit: RELOADING, then READY with the failure; still serving v2
            (site / "notified.py").write_text("def app(:\n")
            seen = len(notifications.messages)
            os.kill(server.pid, signal.SIGHUP)
            seen = notifications.wait("RELOADING=1", seen)
            notifications.wait("READY=1", seen)
            assert "STATUS=reload failed" in notifications.messages[-1]
            counted = load.count()
            assert wait_for(lambda: load.count() > counted + 20, 10)
            assert load.last_body == b"v2"
        assert load.failures == [], load.failures[:5]
        server.stop()
        notifications.wait("STOPPING=1")
    finally:
        server.stop()


FRONT = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = WORKERS

[[front.server]]
default = true

[[front.server.location]]
path = "/"
alias = "STATIC/"
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_gantry_front_notifies(tmp_path: Path, notifications: Notifications, workers: int) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "a.txt").write_text("a")
    port = free_port()
    config = tmp_path / "front.toml"
    text = FRONT.replace("FRONT_PORT", str(port)).replace("WORKERS", str(workers))
    config.write_text(text.replace("STATIC", str(static)))
    log_path = tmp_path / "front.log"
    process = start_gantry(["front", "-c", str(config)], log_path, NOTIFY_SOCKET=notifications.path)
    try:
        _cycle(notifications, process.pid)
        assert process.poll() is None, log_path.read_text()
        if workers == 1:  # alone, it read the file again: a new location serves
            (static / "b").mkdir()
            (static / "b" / "b.txt").write_text("b")
            config.write_text(text.replace("STATIC", str(static / "b")))
            seen = len(notifications.messages)
            os.kill(process.pid, signal.SIGHUP)
            notifications.wait("READY=1", notifications.wait("RELOADING=1", seen))
            assert wait_for(lambda: _get(port, "/b.txt") == b"b", 10), log_path.read_text()
            config.write_text("[front]\nlisten = 1\n")  # a broken file: it keeps serving
            seen = len(notifications.messages)
            os.kill(process.pid, signal.SIGHUP)
            notifications.wait("READY=1", notifications.wait("RELOADING=1", seen))
            assert "STATUS=reload failed" in notifications.messages[-1]
            assert _get(port, "/b.txt") == b"b"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
        notifications.wait("STOPPING=1")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def _get(port: int, path: str) -> bytes | None:
    """The body of a 200 answer; None for any other status or no connection."""
    status, body = try_get(port, path)
    return body if status == 200 else None


def test_gantry_up_notifies(tmp_path: Path, notifications: Notifications) -> None:
    up = GantryUp(tmp_path, demo_stack(), env={"NOTIFY_SOCKET": notifications.path})
    up.start()
    try:
        _cycle(notifications, up.pid)
        up.stop()
        notifications.wait("STOPPING=1")
    finally:
        up.stop()
