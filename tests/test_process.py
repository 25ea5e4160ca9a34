"""The master and its workers, as real processes under bounded load loops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import (
    REPO,
    ClientLoad,
    GantryServer,
    free_port,
    http_get,
    try_get,
    wait_until_read,
)
from tests.process import child_pids as _workers
from tests.process import ready_workers as _ready_workers
from tests.process import wait_for as _wait

APP = "apps_process:app"


def _pid_load(port: int, threads: int) -> ClientLoad:
    """GET /pid from ``threads`` threads, half on kept connections, for 20 s at most."""
    return ClientLoad(port, "/pid", threads, keep_alive=True, limit=20.0)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the app module that a test may edit (the reload test does)."""
    directory = tmp_path / "site"
    directory.mkdir()
    shutil.copy(REPO / "tests" / "apps_process.py", directory / "apps_process.py")
    return directory


def _master(site: Path, tmp_path: Path, *args: str) -> GantryServer:
    server = GantryServer(
        APP,
        "--chdir",
        str(site),
        "--pidfile",
        str(tmp_path / "master.pid"),
        *args,
        log_path=tmp_path / "gantry.log",
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    server.start()
    return server


@pytest.fixture
def two_workers(site: Path, tmp_path: Path) -> Iterator[GantryServer]:
    server = _master(site, tmp_path, "--workers", "2", "--graceful-timeout", "5")
    try:
        _ready_workers(server.pid, 2)
        yield server
    finally:
        server.stop()


def test_pidfile_names_the_master(two_workers: GantryServer, tmp_path: Path) -> None:
    assert (tmp_path / "master.pid").read_text().strip() == str(two_workers.pid)


def test_killed_worker_is_replaced_quickly(two_workers: GantryServer) -> None:
    before = _workers(two_workers.pid)
    victim = sorted(before)[0]
    with _pid_load(two_workers.port, 4) as load:
        load.wait_for(200)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        assert _wait(lambda: len(_workers(two_workers.pid) - before) == 1, 5.0)
        replaced_in = time.monotonic() - killed_at
        load.wait_for(200)
    assert replaced_in < 1.0, replaced_in
    # only the requests the killed worker was serving may fail: a handful at most
    assert len(load.failures) <= load.threads, load.failures


def test_sighup_reloads_with_zero_failures_and_new_code(
    two_workers: GantryServer, site: Path
) -> None:
    before = _workers(two_workers.pid)
    module = site / "apps_process.py"
    module.write_text(module.read_text().replace('VERSION = "v1"', 'VERSION = "v2-reloaded"'))
    with _pid_load(two_workers.port, 6) as load:
        load.wait_for(300)
        os.kill(two_workers.pid, signal.SIGHUP)
        assert _wait(lambda: not (_workers(two_workers.pid) & before), 15.0)
        load.wait_for(300)
    assert load.failures == []
    assert len(_workers(two_workers.pid)) == 2
    assert http_get(two_workers.port, "/version")[1] == b"v2-reloaded"


def test_ttin_ttou_scale_with_zero_failures(two_workers: GantryServer) -> None:
    with _pid_load(two_workers.port, 4) as load:
        load.wait_for(200)
        os.kill(two_workers.pid, signal.SIGTTIN)
        assert _wait(lambda: len(_workers(two_workers.pid)) == 3)
        load.wait_for(200)
        # one at a time: a second identical signal sent before the first is handled merges
        os.kill(two_workers.pid, signal.SIGTTOU)
        assert _wait(lambda: len(_workers(two_workers.pid)) == 2)
        os.kill(two_workers.pid, signal.SIGTTOU)
        assert _wait(lambda: len(_workers(two_workers.pid)) == 1)
        load.wait_for(200)
    assert load.failures == []


def test_harakiri_kills_and_replaces_a_stuck_worker(site: Path, tmp_path: Path) -> None:
    server = _master(site, tmp_path, "--workers", "1", "--harakiri", "1")
    try:
        (before,) = _ready_workers(server.pid, 1)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /sleep?30 HTTP/1.1\r\nHost: t\r\n\r\n")
            started = time.monotonic()
            assert sock.recv(100) == b""  # the worker died under the request
        assert time.monotonic() - started < 5
        assert _wait(lambda: len(_workers(server.pid) - {before}) == 1)
        log = server.log_text()
        assert "HARAKIRI" in log and "GET /sleep?30" in log and str(before) in log
        assert http_get(server.port, "/pid")[0] == 200
    finally:
        server.stop()


def test_max_requests_recycles_the_worker(site: Path, tmp_path: Path) -> None:
    server = _master(site, tmp_path, "--workers", "1", "--max-requests", "20")
    try:
        pids = set()
        for _ in range(60):
            pids.add(http_get(server.port, "/pid", headers={"Connection": "close"})[1])
        assert len(pids) >= 2, pids
        assert "max-requests" in server.log_text()
    finally:
        server.stop()


def test_reload_on_rss_recycles_the_worker(site: Path, tmp_path: Path) -> None:
    server = _master(site, tmp_path, "--workers", "1", "--reload-on-rss", "60")
    try:
        (first,) = _ready_workers(server.pid, 1)
        for _ in range(4):  # +80 MiB
            http_get(server.port, "/hoard", headers={"Connection": "close"}, timeout=10)
        assert _wait(lambda: first not in _workers(server.pid) and _workers(server.pid), 10)
        assert "reload-on-rss" in server.log_text()
    finally:
        server.stop()


def test_graceful_stop_finishes_the_slow_request(site: Path, tmp_path: Path) -> None:
    server = _master(site, tmp_path, "--workers", "1", "--graceful-timeout", "10")
    try:
        _ready_workers(server.pid, 1)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /sleep?1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until_read(sock)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slept")
        assert server.process.wait(timeout=10) == 0
        assert not (tmp_path / "master.pid").exists()
    finally:
        server.stop()


def test_fast_stop_does_not_wait(site: Path, tmp_path: Path) -> None:
    server = _master(site, tmp_path, "--workers", "2")
    try:
        _ready_workers(server.pid, 2)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /sleep?20 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until_read(sock)
        started = time.monotonic()
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=10)
        assert time.monotonic() - started < 4
        sock.close()
    finally:
        server.stop()


def test_broken_app_fails_fast_without_fork_loop(tmp_path: Path, site: Path) -> None:
    (site / "broken.py").write_text("raise ImportError('this app is broken on purpose')\n")
    port = free_port()
    started = time.monotonic()
    result = GantryServer(
        "broken:app", "--chdir", str(site), "--workers", "2", log_path=tmp_path / "log", port=port
    )
    assert result.command
    import subprocess

    completed = subprocess.run(
        result.command, cwd=REPO, env=result.env, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 3
    assert time.monotonic() - started < 10
    assert "broken on purpose" in completed.stderr
    assert completed.stderr.count("spawned worker") <= 4


def test_preload_broken_app_fails_before_forking(tmp_path: Path, site: Path) -> None:
    (site / "broken.py").write_text("raise ImportError('broken before fork')\n")
    import subprocess

    server = GantryServer(
        "broken:app", "--chdir", str(site), "--workers", "2", "--preload", log_path=tmp_path / "l"
    )
    completed = subprocess.run(
        server.command, cwd=REPO, env=server.env, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 3
    assert "broken before fork" in completed.stderr and "spawned worker" not in completed.stderr


def test_sd_notify_ready_and_stopping(site: Path, tmp_path: Path, short_tmp: Path) -> None:
    directory = short_tmp
    path = str(directory / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(10)
        server = GantryServer(
            APP,
            "--chdir",
            str(site),
            "--workers",
            "1",
            log_path=tmp_path / "log",
            env={"NOTIFY_SOCKET": path},
        )
        server.start()
        try:
            assert b"READY=1" in listener.recv(4096)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            assert b"STOPPING=1" in listener.recv(4096)
        finally:
            server.stop()


def test_sigusr1_reopens_the_access_log(site: Path, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = _master(site, tmp_path, "--workers", "1", "--access-log", str(log))
    try:
        _ready_workers(server.pid, 1)

        def get(path: str) -> None:
            http_get(server.port, path, headers={"Connection": "close"})

        get("/before-rotation")
        assert _wait(lambda: log.exists() and "/before-rotation" in log.read_text())
        log.rename(tmp_path / "access.log.1")  # what logrotate does
        os.kill(server.pid, signal.SIGUSR1)
        assert _wait(lambda: "log files reopened" in server.log_text())
        get("/after-rotation")
        assert _wait(lambda: log.exists() and "/after-rotation" in log.read_text())
        assert "/after-rotation" not in (tmp_path / "access.log.1").read_text()
    finally:
        server.stop()


def test_systemd_socket_activation(site: Path, tmp_path: Path) -> None:
    """A socket passed as fd 3 with LISTEN_FDS/LISTEN_PID is used instead of binding anew."""
    import subprocess

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # A tiny launcher puts the socket at fd 3 and sets the variables for its own PID,
    # which exec keeps: what systemd does for a socket-activated service.
    launcher = (
        "import os, sys\n"
        f"os.dup2({fd}, 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'gantry', *sys.argv[1:]])\n"
    )
    args = ["serve", APP, "--chdir", str(site), "--http", f"127.0.0.1:{port}", "--workers", "1"]
    log = (tmp_path / "log").open("wb")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, *args],
        pass_fds=(fd,),
        stdout=log,
        stderr=log,
        env=env,
        cwd=REPO,
    )
    listener.close()  # only the server holds it now
    try:
        answers = _wait(lambda: try_get(port, "/pid", timeout=2)[0] == 200, 15)
        assert answers, (tmp_path / "log").read_text()
        assert "using the inherited socket" in (tmp_path / "log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
