"""The deployment examples in examples/deploy/ are valid for the tools that read them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process import (
    REPO,
    Launcher,
    free_port,
    gantry_env,
    stop_process,
    try_get,
    wait_for,
)
from tests.support_up import demo_stack

DEPLOY = REPO / "examples" / "deploy"
VENV_BIN = Path(sys.executable).parent


def _need(program: str, where: Path | None = None) -> str:
    found = shutil.which(program, path=str(where) if where else None)
    if found is None:
        message = f"{program} is not installed: the deployment example is not checked"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze reads the units as systemd would: no unknown key, no bad value,
    and the ExecStart program exists (pointed at this venv's gantry)."""
    analyze = _need("systemd-analyze")
    gantry = VENV_BIN / "gantry"
    assert gantry.exists(), gantry
    service = (DEPLOY / "gantry.service").read_text()
    assert "Type=notify" in service and "ExecReload=/bin/kill -HUP $MAINPID" in service
    (tmp_path / "gantry.service").write_text(
        service.replace("/srv/site/.venv/bin/gantry", str(gantry)).replace(
            "/srv/site", str(tmp_path)
        )
    )
    shutil.copy(DEPLOY / "gantry.socket", tmp_path / "gantry.socket")
    result = subprocess.run(
        [analyze, "verify", "--man=no", "./gantry.service", "./gantry.socket"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # an unknown key or a bad value is only a warning for systemd: refuse those too
    problems = [
        line for line in result.stderr.splitlines()
        if "gantry." in line and ("Unknown" in line or "ignoring" in line or "Failed" in line)
    ]  # fmt: skip
    assert not problems, result.stderr


def test_dockerfile_lints_clean() -> None:
    hadolint = (
        _need("hadolint", VENV_BIN) if (VENV_BIN / "hadolint").exists() else _need("hadolint")
    )
    result = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'CMD ["gantry", "up"' in text and "STOPSIGNAL SIGTERM" in text


def _stack(run: Path, logs: Path) -> str:
    """The demo stack with a pidfile in ``run`` and the front's and app's logs in ``logs``,
    as the deploy examples lay them out."""
    return demo_stack(
        stack=f'pidfile = "{run}/gantry.pid"',
        front=f'access_log = "{logs}/access.log"',
        app=f'error_log = "{logs}/app.log"',
    )


def _hello(port: int) -> int:
    """The status of GET /hello, -1 if the body is not the demo's, 0 if it cannot connect."""
    status, body = try_get(port, "/hello", timeout=10)
    return status if status == 0 or body == b"Hello World!" else -1


def test_socket_activation_and_notify_as_the_unit_runs_them(launch: Launcher) -> None:
    """What gantry.socket + gantry.service do, without systemd as PID 1: the socket is
    bound by systemd's own launcher (systemd-socket-activate), gantry up takes it over and
    tells the notify socket READY=1, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM."""
    activate = _need("systemd-socket-activate")
    port = free_port()
    workdir = launch.workdir
    (workdir / "logs").mkdir()
    config = workdir / "gantry.toml"
    config.write_text(_stack(workdir, workdir / "logs").replace("FRONT_PORT", str(port)))
    notify_path = str(workdir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(30)
        # systemd-socket-activate listens before gantry runs; the first connection starts
        # gantry up, which must answer it on that socket.
        process = launch.program(
            [activate, "-l", f"127.0.0.1:{port}", "-E", "PYTHONPATH", "-E", "GANTRY_ALLOW_ROOT",
             "-E", f"NOTIFY_SOCKET={notify_path}",
             sys.executable, "-m", "gantry", "up", "-c", str(config)],
            ("127.0.0.1", port), "activate", env=gantry_env(), cwd=workdir,
        )  # fmt: skip
        log = workdir / "activate.log"
        assert _hello(port) == 200, log.read_text()
        messages = _datagrams(notify, "READY=1")
        assert "READY=1" in messages, (messages, log.read_text())
        assert "using the socket systemd passed" in log.read_text()
        os.kill(process.pid, signal.SIGHUP)  # ExecReload
        messages = _datagrams(notify, "READY=1")
        assert messages[0] == "RELOADING=1", messages
        assert _hello(port) == 200
        assert stop_process(process, timeout=30) == 0
        assert "STOPPING=1" in _datagrams(notify, "STOPPING=1")


def _datagrams(notify: socket.socket, until: str) -> list[str]:
    """The lines of the notify messages received until one holds ``until`` (30 s at most)."""
    received: list[str] = []
    while until not in received:
        try:
            received += notify.recv(4096).decode().splitlines()
        except TimeoutError:
            break
    return received


def _lines(path: Path) -> int:
    """Access-log lines of GET /hello in ``path``."""
    return path.read_text().count('"GET /hello HTTP/1.1"')


def test_logrotate_with_the_example_snippet(launch: Launcher) -> None:
    """The real logrotate runs the example (paths moved under a temporary folder) against
    a running stack: the old lines go to the rotated file, new lines to a new file, and
    no request fails and no worker dies on the way."""
    logrotate = (
        _need("logrotate", Path("/usr/sbin"))
        if Path("/usr/sbin/logrotate").exists()
        else _need("logrotate")
    )
    workdir = launch.workdir
    logs = workdir / "logs"
    logs.mkdir()
    snippet = (DEPLOY / "logrotate.conf").read_text()
    assert "/var/log/gantry/*.log" in snippet and "/run/gantry/gantry.pid" in snippet
    snippet = snippet.replace("/var/log/gantry", str(logs)).replace("/run/gantry", str(workdir))
    rotate_conf = workdir / "logrotate.conf"
    rotate_conf.write_text(snippet)
    rotate_conf.chmod(0o644)  # logrotate refuses a config others can write
    up = launch.up(_stack(workdir, logs))
    port = up.port
    assert wait_for(lambda: _hello(port) == 200, 30), up.log_text()
    for _ in range(5):
        assert _hello(port) == 200
    access = logs / "access.log"
    assert wait_for(lambda: access.exists() and _lines(access) >= 6, 10)
    before = _lines(access)  # the answers above, and any 502 of the pool's start
    result = subprocess.run(
        [logrotate, "--force", "--state", str(workdir / "state"), str(rotate_conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rotated = logs / "access.log.1"
    assert rotated.exists() and _lines(rotated) >= 6
    # SIGUSR1 reaches the front worker a moment after logrotate returns: requests until
    # one lands in a new access.log, and every line is in one of the two files
    sent = before + 3
    for _ in range(3):
        assert _hello(port) == 200

    def reopened() -> bool:
        nonlocal sent
        if access.exists() and _lines(access) > 0:
            return True
        assert _hello(port) == 200
        sent += 1
        return False

    assert wait_for(reopened, 10), up.log_text()
    assert wait_for(lambda: _lines(rotated) + _lines(access) == sent, 5), up.log_text()
    assert "died" not in up.log_text() and "killed by" not in up.log_text()
    assert up.process is not None and up.process.poll() is None
