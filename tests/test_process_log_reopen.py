"""SIGUSR1 is logrotate's signal: every process reopens its log files and does nothing
else (no worker dies, a request in flight completes). logrotate's pattern: move the
files, then SIGUSR1. Real ``gantry up``, ``gantry front`` and ``gantry serve``."""

from __future__ import annotations

import http.client
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.process import (
    REPO,
    GantryServer,
    GantryUp,
    child_pids,
    descendant_pids,
    free_port,
    start_gantry,
    wait_for,
)

STACK = """
[stack]
graceful_timeout = 5

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2
access_log = "WORKDIR/front-access.log"

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "slow"

[[app]]
name = "slow"
module = "tests.apps_process:app"
chdir = "REPO"
workers = 2
graceful_timeout = 5
access_log = "WORKDIR/app-access.log"
error_log = "WORKDIR/app-error.log"
"""


def _get(port: int, path: str, sent: threading.Event | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        if sent is not None:
            sent.set()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class InFlight:
    """One slow request on a thread: ``sent`` once it is on the wire, its status once it
    completes."""

    def __init__(self, port: int, path: str) -> None:
        self.result: tuple[int, bytes] | BaseException | None = None
        self.sent = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self.thread.start()

    def _run(self, port: int, path: str) -> None:
        try:
            self.result = _get(port, path, self.sent)
        except BaseException as exc:  # reported by the test
            self.result = exc

    def status(self) -> object:
        self.thread.join(timeout=15)
        return self.result[0] if isinstance(self.result, tuple) else self.result


def _rotate(*paths: Path) -> None:
    for path in paths:
        path.rename(path.with_name(path.name + ".1"))


def test_gantry_up_sigusr1_reopens_every_log_and_kills_nothing(tmp_path: Path) -> None:
    config = STACK.replace("WORKDIR", str(tmp_path)).replace("REPO", str(REPO))
    up = GantryUp(tmp_path, config)
    up.start()
    try:
        front_log, app_log = tmp_path / "front-access.log", tmp_path / "app-access.log"
        error_log = tmp_path / "app-error.log"
        assert wait_for(lambda: len(descendant_pids(up.pid)) == 6, 20), up.log_text()
        assert wait_for(lambda: _get(up.port, "/version")[0] == 200, 10)
        assert wait_for(lambda: front_log.exists() and app_log.exists(), 5)
        processes = descendant_pids(up.pid)
        slow = InFlight(up.port, "/sleep?1.5")
        assert slow.sent.wait(5)
        _rotate(front_log, app_log, error_log)
        os.kill(up.pid, signal.SIGUSR1)
        assert slow.status() == 200
        assert wait_for(lambda: error_log.exists(), 5), up.log_text()
        assert _get(up.port, "/after-rotation")[0] == 200
        assert wait_for(lambda: _has(front_log, "/after-rotation"), 5), up.log_text()
        assert wait_for(lambda: _has(app_log, "/after-rotation"), 5), up.log_text()
        assert not _has(front_log.with_name("front-access.log.1"), "/after-rotation")
        assert not _has(app_log.with_name("app-access.log.1"), "/after-rotation")
        assert "log files reopened" in error_log.read_text()
        text = up.log_text()
        assert "SIGUSR1" not in text.replace("SIGUSR1: the master", ""), text
        assert "died" not in text and "again" not in text, text
        assert descendant_pids(up.pid) == processes
    finally:
        up.stop()


def _has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


FRONT = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = WORKERS
access_log = "WORKDIR/access.log"

[[front.server]]
default = true

[[front.server.location]]
path = "/"
alias = "WORKDIR/static/"
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_gantry_front_sigusr1_reopens_the_access_log(tmp_path: Path, workers: int) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "index.html").write_text("hello")
    port = free_port()
    config = tmp_path / "front.toml"
    config.write_text(
        FRONT.replace("FRONT_PORT", str(port))
        .replace("WORKERS", str(workers))
        .replace("WORKDIR", str(tmp_path))
    )
    log_path = tmp_path / "front.log"
    process = start_gantry(["front", "-c", str(config)], log_path)
    try:
        access = tmp_path / "access.log"
        assert wait_for(lambda: _answers(port), 15), log_path.read_text()
        processes = {process.pid, *descendant_pids(process.pid)}
        assert wait_for(lambda: _has(access, "/index.html"), 5)
        _rotate(access)
        os.kill(process.pid, signal.SIGUSR1)
        assert wait_for(lambda: "log files reopened" in log_path.read_text(), 5)
        assert _get(port, "/index.html?after")[0] == 200
        assert wait_for(lambda: _has(access, "/index.html?after"), 5), log_path.read_text()
        assert process.poll() is None, log_path.read_text()
        assert {process.pid, *descendant_pids(process.pid)} == processes
        assert "died" not in log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def _answers(port: int) -> bool:
    try:
        return _get(port, "/index.html")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_gantry_serve_sigusr1_reopens_both_logs(tmp_path: Path, workers: list[str]) -> None:
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    server = GantryServer(
        "tests.apps_process:app", *workers,
        "--access-log", str(access), "--error-log", str(errors),
        log_path=tmp_path / "gantry.log",
    )  # fmt: skip
    server.start()
    try:
        if workers:
            assert wait_for(lambda: len(child_pids(server.pid)) == 2, 10), server.log_text()
        processes = {server.pid, *descendant_pids(server.pid)}
        assert _get(server.port, "/before")[0] == 200
        assert wait_for(lambda: _has(access, "/before"), 5)
        slow = InFlight(server.port, "/sleep?1")
        assert slow.sent.wait(5)
        _rotate(access, errors)
        os.kill(server.pid, signal.SIGUSR1)
        assert slow.status() == 200
        assert wait_for(lambda: _has(errors, "log files reopened"), 5), server.log_text()
        assert _get(server.port, "/after")[0] == 200
        assert wait_for(lambda: _has(access, "/after"), 5)
        assert {server.pid, *descendant_pids(server.pid)} == processes
        if workers:  # the master's own log line went to the new file too
            assert _has(errors, "SIGUSR1: the master reopened its log")
    finally:
        server.stop()
