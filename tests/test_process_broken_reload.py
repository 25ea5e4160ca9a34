"""A reload whose new code does not import keeps the old workers serving (uWSGI and
gunicorn do the same): logged with the traceback, shown in the stats, and a later SIGHUP
with fixed code applies. Under load, no request fails. Real ``gantry serve`` and
``gantry up`` processes; the app is a file the test edits."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.process import ClientLoad, GantryServer, GantryUp, child_pids, free_port, wait_for

APP = """
VERSION = b"{version}"


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [VERSION]
"""
BROKEN = "def app(:\n"


def _write_app(site: Path, text: str) -> None:
    path = site / "versioned.py"
    path.write_text(text)
    # a new mtime for the import system's cache even within one second
    later = time.time() + 2
    os.utime(path, (later, later))


def _stats(address: str) -> dict[str, object]:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(address)
    else:
        sock = socket.create_connection(("127.0.0.1", int(address.rpartition(":")[2])), 5)
    with sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    document: dict[str, object] = json.loads(data)
    return document


@pytest.mark.parametrize("preload", [False, True])
def test_gantry_serve_keeps_serving_through_a_broken_reload(tmp_path: Path, preload: bool) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _write_app(site, APP.format(version="v1"))
    stats = str(tmp_path / "stats.sock")
    server = GantryServer(
        "versioned:app", "--chdir", str(site), "--workers", "2", "--stats", stats,
        *(["--preload"] if preload else []),
        log_path=tmp_path / "gantry.log",
    )  # fmt: skip
    server.start()
    try:
        assert wait_for(lambda: len(child_pids(server.pid)) == 2, 10), server.log_text()
        with ClientLoad(server.port) as load:
            assert wait_for(lambda: load.count() > 20, 10)
            _write_app(site, BROKEN)
            os.kill(server.pid, signal.SIGHUP)
            assert wait_for(lambda: "reload abandoned" in server.log_text(), 15), server.log_text()
            counted = load.count()
            assert wait_for(lambda: load.count() > counted + 20, 10)
            assert load.bodies == {b"v1"}
            error = _stats(stats)["reload_error"]
            assert isinstance(error, str) and "SyntaxError" in error
            assert "Traceback" in server.log_text()
            _write_app(site, APP.format(version="v2"))
            os.kill(server.pid, signal.SIGHUP)
            assert wait_for(lambda: load.last_body == b"v2", 20), server.log_text()
            assert wait_for(lambda: _stats(stats)["reload_error"] == "", 10)
        assert load.failures == [], load.failures[:5]
        assert server.process is not None and server.process.poll() is None
    finally:
        server.stop()


def test_gantry_serve_stops_when_the_app_cannot_load_at_first(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _write_app(site, BROKEN)
    server = GantryServer(
        "versioned:app", "--chdir", str(site), "--workers", "2",
        log_path=tmp_path / "gantry.log",
    )  # fmt: skip
    try:
        server.start()  # it may listen for a moment: the master binds before its workers fail
    except RuntimeError:
        pass
    assert server.process is not None
    assert server.process.wait(timeout=15) == 3
    assert "SyntaxError" in server.log_text() and "stopping" in server.log_text()


STACK = """
[stack]
stats = "STATS"
graceful_timeout = 5

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "versioned"

[[app]]
name = "versioned"
module = "versioned:app"
chdir = "SITE"
workers = 2
graceful_timeout = 5
PRELOAD
"""


@pytest.mark.parametrize("preload", [False, True])
def test_gantry_up_code_only_sighup_with_broken_code_keeps_the_stack(
    tmp_path: Path, preload: bool
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _write_app(site, APP.format(version="v1"))
    stats = str(tmp_path / "stack.stats")
    config = (
        STACK.replace("STATS", stats)
        .replace("SITE", str(site))
        .replace("PRELOAD", "preload = true" if preload else "")
    )
    up = GantryUp(tmp_path, config)
    up.start()
    try:
        assert wait_for(lambda: _pool_workers(stats) == 2, 20), up.log_text()
        with ClientLoad(up.port) as load:
            assert wait_for(lambda: load.count() > 20, 10)
            _write_app(site, BROKEN)
            os.kill(up.pid, signal.SIGHUP)
            assert wait_for(lambda: "its reload failed" in up.log_text(), 20), up.log_text()
            counted = load.count()
            assert wait_for(lambda: load.count() > counted + 20, 10)
            assert load.bodies == {b"v1"}
            pool = _pool(stats)
            assert "SyntaxError" in str(pool.get("reload_error")), json.dumps(pool)
            _write_app(site, APP.format(version="v2"))
            os.kill(up.pid, signal.SIGHUP)
            assert wait_for(lambda: load.last_body == b"v2", 20), up.log_text()
            assert wait_for(lambda: "reload_error" not in _pool(stats), 5), _pool(stats)
        errors = [line for line in up.log_text().splitlines() if "ERROR" in line]
        assert load.failures == [], (load.failures[:5], errors[-20:])
        assert up.process is not None and up.process.poll() is None, up.log_text()
        assert "stopping the stack" not in up.log_text()
    finally:
        up.stop()


def _pool(stats: str) -> dict[str, object]:
    pools = _stats(stats)["pools"]
    assert isinstance(pools, list)
    return next(p for p in pools if p["name"] == "versioned")


def _pool_workers(stats: str) -> int:
    try:
        workers = _stats(stats)["workers"]
    except (OSError, ValueError):
        return 0
    assert isinstance(workers, list)
    return sum(1 for w in workers if w["pool"] == "versioned")


def test_gantry_serve_ini_without_lazy_apps_reloads_new_code(tmp_path: Path) -> None:
    """uWSGI loads the app in the master unless lazy-apps: a reload must still serve the
    code as edited (it re-executes the master, as uWSGI does)."""
    site = tmp_path / "site"
    site.mkdir()
    _write_app(site, APP.format(version="v1"))
    port = free_port()
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(
        f"[uwsgi]\nmodule = versioned:app\nchdir = {site}\nmaster = true\nprocesses = 2\n"
        f"http-socket = 127.0.0.1:{port}\n"
    )
    server = GantryServer(
        "--ini", str(ini), port=port, http=False, log_path=tmp_path / "gantry.log"
    )
    server.start()
    try:
        assert wait_for(lambda: len(child_pids(server.pid)) == 2, 10), server.log_text()
        with ClientLoad(server.port) as load:
            assert wait_for(lambda: load.count() > 20, 10)
            assert load.last_body == b"v1"
            _write_app(site, APP.format(version="v2"))
            os.kill(server.pid, signal.SIGHUP)
            assert wait_for(lambda: load.last_body == b"v2", 20), server.log_text()
            assert wait_for(lambda: "reload done" in server.log_text(), 10)
            counted = load.count()
            assert wait_for(lambda: load.count() > counted + 20, 10)
            assert load.last_body == b"v2"
        assert load.failures == [], load.failures[:5]
    finally:
        server.stop()
