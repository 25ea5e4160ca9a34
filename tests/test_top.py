"""`gantry top` as uwsgitop users expect it: q quits, a stack's requests counted once,
and worker numbers as the log gives them."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys

from tests.process import REPO, Launcher, free_port, try_get, wait_for
from tests.support_process import read_pty
from tests.support_up import demo_stack


def test_q_quits_the_live_view(launch: Launcher) -> None:
    """uwsgitop's habit: pressing q ends the view at once, with status 0."""
    stats_port = free_port()
    server = launch.serve("gantry.demo:app", "--workers", "1", "--stats", f"127.0.0.1:{stats_port}")
    pid, fd = pty.fork()
    if pid == 0:  # the child: gantry top on the pseudo-terminal
        os.chdir(REPO)
        os.execvpe(
            sys.executable,
            [sys.executable, "-m", "gantry", "top", "--interval", "5", f"127.0.0.1:{stats_port}"],
            server.env,
        )
    try:
        shown = read_pty(fd, 15.0, until=b"WID")
        assert b"WID" in shown, shown.decode(errors="replace")
        os.write(fd, b"q")
        status: list[int] = []

        def ended() -> bool:
            read_pty(fd, 0.05, until=b"\x00")  # keep the pty drained
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(code)
            return bool(done)

        assert wait_for(ended, 3.0), "gantry top did not quit on q"
        assert os.waitstatus_to_exitcode(status[0]) == 0
    finally:
        if not status:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_a_stack_counts_each_request_once_and_numbers_workers_by_pool(launch: Launcher) -> None:
    stats = launch.workdir / "stack.stats"
    up = launch.up(demo_stack(workers=2, stack=f'stats = "{stats}"'))
    assert wait_for(lambda: try_get(up.port, "/hello")[0] == 200), up.log_text()
    for _ in range(9):
        assert try_get(up.port, "/hello")[0] == 200
    from gantry.stats.top import fetch

    def front_requests() -> int:
        doc = fetch(str(stats))
        return sum(w["requests"] for w in doc["workers"] if w["pool"] == "front")

    # counters reach shared memory about once a second
    assert wait_for(lambda: front_requests() >= 10, 10)
    top = subprocess.run(
        [sys.executable, "-m", "gantry", "top", "--once", str(stats)],
        capture_output=True, text=True, timeout=20, cwd=REPO, env=up.env,
    )  # fmt: skip
    assert top.returncode == 0, top.stderr
    header = top.stdout.splitlines()[0]
    total = int(re.search(r"(\d+) requests", header).group(1))  # type: ignore[union-attr]
    assert total == front_requests(), header  # not front + pool
    # the log says "worker 1" and "worker 2" of the pool hello, "worker 1" of the front
    rows = [line.split() for line in top.stdout.splitlines() if line.startswith(("front", "hello"))]
    assert {(row[0], row[1]) for row in rows} == {("front", "1"), ("hello", "1"), ("hello", "2")}
    assert "spawned worker 2" in up.log_text()
