"""A client that half-closes after its requests (issue 19 #18), against a real ``gantry serve``.

``shutdown(SHUT_WR)`` after the requests says "no more requests", not "stop
answering": the worker finishes every answer asked for, then closes (as gunicorn
and uWSGI do). Measured before: 1 MiB of a 50 MiB streamed answer and no final
chunk; one answer of three pipelined.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.process import GantryServer, Launcher, free_port, read_until_closed, responses
from tests.support_appsrv import get, hostile_server, uwsgi_get

MIB = 50


@pytest.fixture(scope="module")
def server(module_launch: Launcher) -> tuple[GantryServer, int]:
    """One ``gantry serve`` with an HTTP and a uwsgi socket; it and the uwsgi port."""
    return hostile_server(module_launch, name="half-close")


def _send_and_half_close(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    result = read_until_closed(sock, wait=60)
    assert result.closed, "the server should close once it has answered"
    return result.data


def test_streamed_answer_completes_after_half_close(server: tuple[GantryServer, int]) -> None:
    """GET of a 50 MiB chunked stream, then SHUT_WR: all of it and the final chunk."""
    process, _ = server
    with process.connect(timeout=60) as sock:
        data = _send_and_half_close(sock, get(f"/stream/{MIB}"))
    got = responses(data)  # asserts the final chunk is there
    assert [status for status, _ in got] == [200]
    assert len(got[0][1]) == MIB << 20


def test_pipelined_requests_all_answered_after_half_close(
    server: tuple[GantryServer, int],
) -> None:
    """Three pipelined GETs, then SHUT_WR: three answers in order, then the close."""
    process, _ = server
    with process.connect() as sock:
        data = _send_and_half_close(sock, b"".join(get(f"/size/100?{i}") for i in range(3)))
    got = responses(data)
    assert [(status, body[:12]) for status, body in got] == [
        (200, b"/size/100?%d\n" % i) for i in range(3)
    ]


def test_uwsgi_answer_completes_after_half_close(server: tuple[GantryServer, int]) -> None:
    """A uwsgi packet for a 50 MiB stream, then SHUT_WR: the whole raw answer."""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        data = _send_and_half_close(sock, uwsgi_get(b"/stream/%d" % MIB, keep=False))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == MIB << 20


def test_kept_uwsgi_packets_all_answered_after_half_close(
    server: tuple[GantryServer, int],
) -> None:
    """Three packets on a kept uwsgi connection, then SHUT_WR: three answers, then the close."""
    _, port = server
    payload = b"".join(uwsgi_get(b"/size/100?%d" % i, keep=True) for i in range(3))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = _send_and_half_close(sock, payload)
    got = responses(data)
    assert [(status, body[:12]) for status, body in got] == [
        (200, b"/size/100?%d\n" % i) for i in range(3)
    ]


# the reference: gunicorn does the same ----------------------------------------------------


@pytest.fixture(scope="module")
def gunicorn(module_launch: Launcher) -> int:
    """gunicorn (sync worker) on the same app, stopped after the module; its port."""
    binary = Path(sys.executable).with_name("gunicorn")
    if not binary.exists():
        pytest.skip("gunicorn is not installed beside this Python")
    port = free_port()
    module_launch.program(
        [str(binary), "-b", f"127.0.0.1:{port}", "-w", "1", "tests.apps_hostile:app"],
        ("127.0.0.1", port), "gunicorn", limit=15,
    )  # fmt: skip
    return port


def test_gunicorn_finishes_a_stream_after_half_close(gunicorn: int) -> None:
    """What the gantry test above asks, as gunicorn does it."""
    with socket.create_connection(("127.0.0.1", gunicorn), timeout=60) as sock:
        data = _send_and_half_close(sock, get(f"/stream/{MIB}"))
    got = responses(data)
    assert [status for status, _ in got] == [200]
    assert len(got[0][1]) == MIB << 20
