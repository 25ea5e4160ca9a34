"""A reload that re-executes the process (a lone `gantry front`, the master of `gantry
serve --preload`) leaves a window while the new image imports, before it has a SIGHUP
handler. A second SIGHUP sent then (systemd's `reload` twice, an impatient operator) met
SIGHUP's default action and killed the server. It is now held across the exec and taken
as one more reload once the new image is ready. Real processes; the second signal is sent
as soon as /proc shows the new image (its environment names the inherited sockets)."""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.process import Front, GantryServer, wait_for

LONE_FRONT = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/"
root = "ROOT"
"""

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]
"""


def _reexecuted(pid: int) -> bool:
    """The process runs its new image: execve gave it an environment with LISTEN_FDS."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return b"LISTEN_FDS=" in environ.read()
    except OSError:
        return False


def _second_sighup_during_reexec(pid: int, log_text: Callable[[], str]) -> None:
    os.kill(pid, signal.SIGHUP)
    assert wait_for(lambda: _reexecuted(pid), 30, interval=0.002), log_text()
    os.kill(pid, signal.SIGHUP)  # the new image is importing: no handler of its own yet


def test_lone_front_survives_a_sighup_during_its_reexec(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("front\n")
    front = Front(LONE_FRONT.replace("ROOT", str(root)), tmp_path)
    front.start()
    try:
        assert front.process is not None
        _second_sighup_during_reexec(front.process.pid, front.log_text)
        # the held signal is a second reload of the new image: it checks and re-executes
        assert wait_for(lambda: front.log_text().count("SIGHUP: checking the new code") == 2, 30), (
            front.log_text()
        )
        assert wait_for(lambda: front.log_text().count("front listening on") == 3, 30), (
            front.log_text()
        )
        assert front.process.poll() is None, front.log_text()
        response, body = front.request("GET", "/index.html")
        assert (response.status, body) == (200, b"front\n")
    finally:
        front.stop()


def test_preloading_master_survives_a_sighup_during_its_reexec(tmp_path: Path) -> None:
    (tmp_path / "held_app.py").write_text(APP)
    server = GantryServer(
        "held_app:app", "--chdir", str(tmp_path), "--workers", "2", "--preload",
        log_path=tmp_path / "serve.log",
    )  # fmt: skip
    server.start()
    try:
        assert server.process is not None
        _second_sighup_during_reexec(server.process.pid, server.log_text)
        # the new master takes the held signal once its loop has its handlers
        after = lambda: server.log_text().split("re-executing the master")[-1]  # noqa: E731
        assert wait_for(lambda: "SIGHUP" in after(), 30), server.log_text()
        assert server.process.poll() is None, server.log_text()
        assert wait_for(lambda: _get(server.port) == b"served", 30), server.log_text()
    finally:
        server.stop()


def _get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read()
    except OSError:
        return b""
    finally:
        conn.close()


SLOW_APP = """
import time

time.sleep(2.0)  # the port accepts all this while: the app is imported after the bind


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slow start"]
"""


@pytest.mark.parametrize("workers", [[], ["--workers", "2", "--preload"]], ids=["alone", "preload"])
def test_a_sighup_once_the_port_accepts_is_a_reload(tmp_path: Path, workers: list[str]) -> None:
    """The sockets are bound before the app is imported (and a master installs its
    handlers after preloading it): a SIGHUP sent as soon as the port accepts, as a deploy
    script waiting for the port would, met SIGHUP's default action and killed the server.
    It is held from the bind and taken as a reload once the handlers are in."""
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    server = GantryServer(
        "slow_app:app", "--chdir", str(tmp_path), *workers, log_path=tmp_path / "serve.log"
    )
    server.start()  # returns once the port accepts: the app is still importing
    try:
        assert server.process is not None
        assert "serving slow_app:app" not in server.log_text()  # still in the import
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_for(lambda: _get(server.port) == b"slow start", 30), server.log_text()
        assert server.process.poll() is None, server.log_text()
        assert wait_for(lambda: "SIGHUP" in server.log_text(), 30), server.log_text()
    finally:
        server.stop()
