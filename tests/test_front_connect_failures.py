"""Connect failures against what nginx 1.22 answers in the same case (checked by hand
with proxy_connect_timeout 1s): a TCP upstream whose listen queue is full hangs the
connect, 504 after connect_timeout, every time; a unix socket whose queue is full answers
EAGAIN, 502 at once; and a pool of a single server is never marked unavailable
(ngx_http_upstream_module: "If there is only a single server in a group, max_fails,
fail_timeout and slow_start parameters are ignored")."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.process import Front, GantryServer, free_port


def _fill_tcp_backlog(stack: ExitStack) -> int:
    """A listening TCP socket nobody accepts on, its queue full: a new connect hangs
    (Linux drops the SYN). Returns its port."""
    listener = stack.enter_context(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    for _ in range(16):
        client = stack.enter_context(socket.socket())
        client.setblocking(False)
        client.connect_ex(listener.getsockname())
        _, writable, _ = select.select([], [client], [], 0.3)
        if not writable:
            return int(listener.getsockname()[1])  # this one hangs: the queue is full
    pytest.fail("could not fill a TCP listen queue of 0 with 16 connections")


def _fill_unix_backlog(stack: ExitStack, path: Path) -> None:
    """A listening unix socket nobody accepts on, its queue full: connect() fails with
    EAGAIN on a non-blocking socket."""
    listener = stack.enter_context(socket.socket(socket.AF_UNIX))
    listener.bind(str(path))
    listener.listen(0)
    for _ in range(16):
        client = stack.enter_context(socket.socket(socket.AF_UNIX))
        client.setblocking(False)
        try:
            client.connect(str(path))
        except BlockingIOError:
            return
    pytest.fail("could not fill a unix listen queue of 0 with 16 connections")


@pytest.fixture
def front_factory() -> Iterator[list[Front]]:
    """Fronts a test starts, each stopped by its PID afterwards."""
    fronts: list[Front] = []
    yield fronts
    for front in fronts:
        front.stop()


def _front(tmp_path: Path, fronts: list[Front], address: str) -> Front:
    """A front proxying everything to one server at ``address``, connect_timeout = 1."""
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "stuck"
[front.upstream.stuck]
connect_timeout = 1
read_timeout = 10
servers = [{{ address = "{address}" }}]
""",
        tmp_path,
    )
    fronts.append(front)
    front.start()
    return front


def test_tcp_connect_that_hangs_gives_504_after_connect_timeout(
    tmp_path: Path, front_factory: list[Front]
) -> None:
    """nginx: "upstream timed out (110: Connection timed out) while connecting to
    upstream", 504. connect_timeout = 1: the answer comes after 0.9 to 3 s."""
    with ExitStack() as stack:
        port = _fill_tcp_backlog(stack)
        front = _front(tmp_path, front_factory, f"127.0.0.1:{port}")
        started = time.monotonic()
        response, _ = front.request("GET", "/")
        elapsed = time.monotonic() - started
        assert response.status == 504, front.log.read_text()
        assert 0.9 <= elapsed <= 3.0, elapsed
        assert "timed out" in front.log.read_text()


def test_tcp_connect_that_hangs_gives_504_again_on_the_next_request(
    tmp_path: Path, front_factory: list[Front]
) -> None:
    """nginx tries its only server again: a second request also waits connect_timeout
    and gets 504 (0.9 to 3 s), not an immediate 502."""
    with ExitStack() as stack:
        port = _fill_tcp_backlog(stack)
        front = _front(tmp_path, front_factory, f"127.0.0.1:{port}")
        assert front.request("GET", "/")[0].status == 504
        started = time.monotonic()
        response, _ = front.request("GET", "/")
        elapsed = time.monotonic() - started
        assert response.status == 504, front.log.read_text()
        assert 0.9 <= elapsed <= 3.0, elapsed


def test_single_server_back_after_a_refusal_is_used_at_once(
    tmp_path: Path, front_factory: list[Front]
) -> None:
    """A lone backend refuses one request (502, as nginx), comes back on its port, and
    the next request reaches it (nginx: 200 at once, not after fail_timeout)."""
    backend = GantryServer(
        "tests.apps_upstream:app", log_path=tmp_path / "backend.log", port=free_port()
    )
    front = _front(tmp_path, front_factory, f"127.0.0.1:{backend.port}")
    try:
        assert front.request("GET", "/who")[0].status == 502  # refused: nothing listens
        backend.start()
        response, _ = front.request("GET", "/who")
        assert response.status == 200, front.log.read_text()
    finally:
        backend.stop()


def test_unix_socket_with_a_full_queue_gives_502_at_once(
    front_factory: list[Front], short_tmp: Path
) -> None:
    """nginx: "connect() to unix:... failed (11: Resource temporarily unavailable) while
    connecting to upstream", 502 without waiting for connect_timeout (under 0.9 s here)."""
    workdir = short_tmp  # short: unix socket paths are limited
    sock = workdir / "full.sock"
    with ExitStack() as stack:
        _fill_unix_backlog(stack, sock)
        front = _front(workdir, front_factory, f"unix:{sock}")
        started = time.monotonic()
        response, _ = front.request("GET", "/")
        elapsed = time.monotonic() - started
        assert response.status == 502, front.log.read_text()
        assert elapsed < 0.9, elapsed


def test_refused_unix_connect_goes_on_to_the_next_server(tmp_path: Path, short_tmp: Path) -> None:
    """The first attempt on a unix socket connects without a Task (proxy.py
    _connect_unix): a socket that is not there sends the request on to the next server,
    the error log names it, and the client never sees the failure."""
    workdir = short_tmp  # short: unix socket paths are limited
    missing, sock = workdir / "missing.sock", workdir / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), "--workers", "1",
        log_path=tmp_path / "app.log", http=False,
    )  # fmt: skip
    app.start(wait_for=str(sock))
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "two"
[front.upstream.two]
protocol = "uwsgi"
servers = [{{ address = "unix:{missing}" }}, {{ address = "unix:{sock}" }}]
""",
        tmp_path,
    )
    front.start()
    try:
        for _ in range(6):  # round robin: the missing one comes first at least once
            response, body = front.request("GET", "/hello")
            assert (response.status, body) == (200, b"Hello World!")
    finally:
        front.stop()
        app.stop()
    log = front.log.read_text()
    assert f"upstream unix:{missing}: cannot connect" in log, log
