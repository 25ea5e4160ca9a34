"""Workers run as an unprivileged user: the master binds as root (a port below 1024 here),
then each worker switches to the configured user and group before it runs app code.
Run as root with user nobody (skipped otherwise)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import (
    REPO,
    GantryServer,
    child_pids,
    gantry_env,
    http_get,
    needs_readable_source,
    start_gantry,
    try_get,
    wait_for,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")

NOBODY = pwd.getpwnam("nobody")


APP = """
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


@pytest.fixture
def site() -> Iterator[Path]:
    """A directory any user can read (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="gantry-privileges-"))
    path.chmod(0o755)
    (path / "whoami.py").write_text(APP)
    (path / "whoami.py").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _privileged_port() -> int:
    """A free port below 1024: only root may bind it."""
    for port in range(1000, 900, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024")


def _ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of ``pid`` (all four of each must agree)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    uids, gids = {int(v) for v in fields["Uid"]}, {int(v) for v in fields["Gid"]}
    assert len(uids) == 1 and len(gids) == 1, (uids, gids)
    return uids.pop(), gids.pop()


def _get(port: int) -> int:
    """The PID of the worker that answered (whoami:app)."""
    status, body = http_get(port, "/", headers={"Connection": "close"})
    assert status == 200
    return int(body)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_gantry_serve_workers_run_as_nobody(site: Path, tmp_path: Path, workers: list[str]) -> None:
    port = _privileged_port()
    server = GantryServer(
        "whoami:app", "--chdir", str(site), "--user", "nobody", *workers,
        port=port, log_path=tmp_path / "gantry.log",
    )  # fmt: skip
    server.start()
    try:
        if workers:
            assert wait_for(lambda: len(child_pids(server.pid)) == 2, 10), server.log_text()
            assert _ids(server.pid) == (0, 0)  # the master keeps root
        worker = _get(port)
        assert worker in child_pids(server.pid) if workers else worker == server.pid
        assert _ids(worker) == (NOBODY.pw_uid, NOBODY.pw_gid), server.log_text()
        if workers:
            for pid in child_pids(server.pid):
                assert _ids(pid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    finally:
        server.stop()


@needs_readable_source
def test_gantry_front_workers_run_as_nobody(site: Path, tmp_path: Path) -> None:
    port = _privileged_port()
    config = tmp_path / "front.toml"
    config.write_text(
        f'[front]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\nuser = "nobody"\n'
        f'[[front.server]]\ndefault = true\n[[front.server.location]]\npath = "/"\n'
        f'alias = "{site}/"\n'
    )
    log_path = tmp_path / "front.log"
    process = start_gantry(["front", "-c", str(config)], log_path)
    try:
        assert wait_for(lambda: len(child_pids(process.pid)) == 2, 15), log_path.read_text()

        assert wait_for(lambda: try_get(port, "/whoami.py")[0] == 200, 10), log_path.read_text()
        assert _ids(process.pid) == (0, 0)
        for pid in child_pids(process.pid):
            assert _ids(pid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_an_unknown_user_is_a_config_error(site: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "serve", "whoami:app", "--chdir", str(site),
         "--http", "127.0.0.1:0", "--user", "no-such-user"],
        cwd=REPO, env=gantry_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "serve.user: no user 'no-such-user'" in result.stderr, result.stderr


def test_running_as_root_without_a_user_is_warned(site: Path, tmp_path: Path) -> None:
    server = GantryServer("whoami:app", "--chdir", str(site), log_path=tmp_path / "gantry.log")
    server.start()
    try:
        assert "the workers run as root" in server.log_text()
    finally:
        server.stop()


@needs_readable_source
def test_gantry_up_front_and_pool_workers_run_as_nobody(site: Path, tmp_path: Path) -> None:
    """The front's workers, as nobody, still reach the pool's socket in the runtime
    directory (shared with the front's group only)."""
    from tests.process import GantryUp

    config = f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1
user = "nobody"

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "whoami"

[[app]]
name = "whoami"
module = "whoami:app"
chdir = "{site}"
workers = 2
user = "nobody"
"""
    up = GantryUp(tmp_path, config)
    up.start()
    try:

        def worker() -> int | None:
            try:
                return _get(up.port)
            except (OSError, AssertionError, ValueError):
                return None

        assert wait_for(lambda: worker() is not None, 20), up.log_text()
        pid = worker()
        assert pid is not None
        assert _ids(pid) == (NOBODY.pw_uid, NOBODY.pw_gid)
        assert _ids(up.pid) == (0, 0)
        workers = {w for master in child_pids(up.pid) for w in child_pids(master)}
        assert len(workers) == 3  # the front's one and the pool's two
        for worker_pid in workers:
            assert _ids(worker_pid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    finally:
        up.stop()
