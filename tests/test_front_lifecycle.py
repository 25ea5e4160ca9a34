"""gantry front's worker life: error pages read once at start, the graceful stop bounded
by [front] graceful_timeout, and the tasks it starts kept until they are done."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from gantry.front.proxy import spawn
from tests.process import REPO, GantryServer, free_port
from tests.support_front import start_front


def test_error_pages_are_read_once_at_start(tmp_path: Path) -> None:
    page = tmp_path / "404.html"
    page.write_text("<h1>first</h1>")
    front = start_front(
        tmp_path,
        f"""
error_pages = {{ "404" = "{page}" }}
[[front.server]]
[[front.server.location]]
path = "/"
root = "{tmp_path / "empty"}"
""",
    )
    try:
        response, body = front.request("GET", "/missing")
        assert (response.status, body) == (404, b"<h1>first</h1>")
        assert response.getheader("Content-Type") == "text/html; charset=utf-8"
        page.write_text("<h1>changed</h1>")  # an error response opens no file any more
        assert front.request("GET", "/missing")[1] == b"<h1>first</h1>"
        page.unlink()
        response, body = front.request("GET", "/missing")
        assert (response.status, body) == (404, b"<h1>first</h1>")
    finally:
        front.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_graceful_stop_follows_graceful_timeout(tmp_path: Path, workers: int) -> None:
    """A request still running when the front is told to stop is given graceful_timeout
    (here 1 s, not the 10 s it used to be), then the front exits."""
    app = GantryServer("tests.apps_contract:app", log_path=tmp_path / "app.log")
    app.start()
    front = start_front(
        tmp_path,
        f"""
workers = {workers}
graceful_timeout = 1.0
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{app.port}" }}]
""",
    )
    try:
        assert front.process is not None
        with front.connect(30) as sock:
            sock.sendall(b"GET /slow?20 HTTP/1.1\r\nHost: a\r\n\r\n")
            time.sleep(0.3)  # the request reaches the app (a fixed wait is harmless here)
            started = time.monotonic()
            front.process.terminate()
            front.process.wait(timeout=15)
            elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"the front took {elapsed:.1f} s to stop"
        assert elapsed >= 0.9, "the running request was not given its graceful time"
    finally:
        front.stop()
        app.stop(signal.SIGKILL)  # its request sleeps on the loop thread: no signal gets in


def _run_job(start: Callable[[Coroutine[Any, Any, None]], None]) -> bool:
    """Whether a job started by ``start`` finishes when, while it waits on a future that
    only it refers to, the cycle collector runs."""
    done: list[bool] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def job() -> None:
            future: asyncio.Future[None] = loop.create_future()
            ref = weakref.ref(future)
            loop.call_later(0.05, lambda: (f := ref()) is not None and f.set_result(None))
            await future
            done.append(True)

        start(job())
        await asyncio.sleep(0.01)
        gc.collect()
        wait = time.monotonic() + 1.0
        while not done and time.monotonic() < wait:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    return bool(done)


def test_tasks_are_kept_until_done() -> None:
    tasks: set[asyncio.Task[None]] = set()
    assert _run_job(lambda coro: spawn(tasks, coro))
    assert not tasks  # discarded once done


def test_a_task_nobody_keeps_can_vanish() -> None:
    """Why spawn exists (and that the test above can fail): a bare create_task, whose
    task only a future it waits on refers to, is collected mid-flight."""

    def bare(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.get_running_loop().create_task(coro)

    assert not _run_job(bare)


def test_run_front_takes_the_stack_graceful_timeout(tmp_path: Path) -> None:
    """What `gantry up` gives run_front ([stack] graceful_timeout) replaces [front]'s."""
    app = GantryServer("tests.apps_contract:app", log_path=tmp_path / "app.log")
    app.start()
    port = free_port()
    config = tmp_path / "front.toml"
    config.write_text(
        f"""
[front]
listen = ["127.0.0.1:{port}"]
graceful_timeout = 30.0
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{app.port}" }}]
"""
    )
    code = (
        "import sys; from gantry.config.front import load_front_config; "
        "from gantry.front.run import run_front; "
        f"sys.exit(run_front(load_front_config({str(config)!r}), graceful_timeout=1.0))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with (tmp_path / "front.log").open("ab") as log:
        front = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                assert time.monotonic() < deadline and front.poll() is None, "no front"
                time.sleep(0.05)
        with sock:
            sock.sendall(b"GET /slow?20 HTTP/1.1\r\nHost: a\r\n\r\n")
            time.sleep(0.3)  # the request reaches the app (a fixed wait is harmless here)
            started = time.monotonic()
            front.terminate()
            front.wait(timeout=15)
        assert time.monotonic() - started < 5.0
    finally:
        if front.poll() is None:
            front.kill()
            front.wait(timeout=5)
        app.stop(signal.SIGKILL)
