"""The fixtures' promise: what a test starts is stopped by PID and its folder removed,
also when the test fails or a server never comes up."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.process import Launcher, child_pids, short_tempdir, wait_for


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_everything_started_is_stopped_when_the_test_fails() -> None:
    with short_tempdir() as workdir:
        with pytest.raises(RuntimeError, match="the test failed"), Launcher(workdir) as launch:
            server = launch.serve("tests.apps_process:app", "--workers", "2")
            up = launch.up()  # the demo stack: a supervisor, a front and a pool
            assert wait_for(lambda: len(child_pids(server.pid)) == 2, 10)
            assert wait_for(lambda: len(child_pids(up.pid)) == 2, 10)
            started = {server.pid, up.pid} | child_pids(server.pid) | child_pids(up.pid)
            for pool in child_pids(up.pid):
                started |= child_pids(pool)
            raise RuntimeError("the test failed")
        assert [pid for pid in started if _running(pid)] == []
    assert not workdir.exists()


def test_a_server_that_never_listens_is_stopped_and_reported() -> None:
    tag = f"never-listens-{uuid.uuid4().hex}"  # finds this test's process in /proc
    argv = [sys.executable, "-c", f"import time; time.sleep(60)  # {tag}"]
    with short_tempdir() as workdir, Launcher(workdir) as launch:
        with pytest.raises(RuntimeError, match="did not listen"):
            launch.program(argv, workdir / "never.sock", "sleeper", limit=0.5)
    left = [
        proc.name
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit() and tag in " ".join(_cmdline(proc)) and _running(int(proc.name))
    ]
    assert left == []


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []
