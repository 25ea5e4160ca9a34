"""A client that pipelines and never reads (issue 19 #15) against a real ``gantry serve``.

The worker stops reading a connection while its unsent output is above the
transport's high-water mark and runs no more of its queued requests until the
output drains, so its memory stays bounded however much the client sends; once
the client reads, every answer comes, in order. On the HTTP socket and on a
kept uwsgi connection (the var GANTRY_KEEPALIVE=1, as Gantry's front sends it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.process import GantryServer, Launcher, free_port, read_until_closed, responses, rss_kib
from tests.support_appsrv import Sender, hostile_server, uwsgi_get, wait_stalled

REQUESTS = 20_000
RESPONSE = 4096  # bytes of body per answer: 80 MB in all, if the worker buffered them
PAD = b"p" * 960  # each request about 1 KiB: 20 MB of requests in all
GROWTH_LIMIT_KIB = 20 * 1024


@pytest.fixture(scope="module")
def server(module_launch: Launcher) -> tuple[GantryServer, int]:
    """One ``gantry serve`` (no master: its PID is the worker's) with HTTP and uwsgi
    sockets; it and the uwsgi port."""
    return hostile_server(module_launch, "--keepalive-timeout", "30", name="backpressure")


def _pipeline_without_reading(
    server: GantryServer, sock: socket.socket, payload: bytes
) -> tuple[int, bytes]:
    """Send ``payload`` without reading until the sending stalls; then read it all.
    Returns the worker's RSS growth (KiB) at the stall and everything read."""
    before = rss_kib(server.pid)
    sender = Sender(sock, payload)
    sender.start()
    wait_stalled(sender)
    grown = rss_kib(server.pid) - before
    result = read_until_closed(sock, wait=120)
    sender.join(timeout=10)
    assert sender.error is None, sender.error
    assert result.closed, "the last request asked for a close"
    return grown, result.data


def _http_payload() -> bytes:
    requests = [
        b"GET /size/%d?%d HTTP/1.1\r\nHost: a\r\nX-Pad: %s\r\n\r\n" % (RESPONSE, i, PAD)
        for i in range(REQUESTS - 1)
    ]
    requests.append(
        b"GET /size/%d?last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % RESPONSE
    )
    return b"".join(requests)


def _check_order(data: bytes, count: int, tag: Callable[[int], bytes]) -> None:
    got = responses(data)
    assert len(got) == count, f"{len(got)} answers of {count}"
    for i, (status, body) in enumerate(got[:-1]):
        assert status == 200 and body.startswith(tag(i)), (i, status, body[:40])
        assert len(body) == RESPONSE


def test_http_pipelining_without_reading_keeps_the_worker_bounded(
    server: tuple[GantryServer, int],
) -> None:
    """20 MB of pipelined GETs never read: RSS grows < 20 MB; then every answer in order."""
    process, _ = server
    with process.connect(timeout=120) as sock:
        grown, data = _pipeline_without_reading(process, sock, _http_payload())
    assert grown < GROWTH_LIMIT_KIB, f"RSS grew {grown} KiB"
    _check_order(data, REQUESTS, lambda i: b"/size/%d?%d\n" % (RESPONSE, i))


def _uwsgi_packet(i: int, keep: bool) -> bytes:
    uri = b"/size/%d?%d" % (RESPONSE, i)
    return uwsgi_get(uri, keep, (b"HTTP_HOST", b"a"), (b"HTTP_X_PAD", PAD[:900]))


def test_uwsgi_pipelining_without_reading_keeps_the_worker_bounded(
    server: tuple[GantryServer, int],
) -> None:
    """The same on a kept uwsgi connection: packets pipelined, answers never read."""
    count = REQUESTS
    payload = b"".join(_uwsgi_packet(i, keep=i < count - 1) for i in range(count))
    process, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        grown, data = _pipeline_without_reading(process, sock, payload)
    assert grown < GROWTH_LIMIT_KIB, f"RSS grew {grown} KiB"
    _check_order(data, count, lambda i: b"/size/%d?%d\n" % (RESPONSE, i))


KEEPALIVE = 2  # seconds; short, but a loaded machine may stall the loop for one


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def short_keepalive(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GantryServer]:
    """``gantry serve`` with a short keep-alive timeout, on either loop."""
    workdir = tmp_path_factory.mktemp("backpressure-keepalive")
    loop = ["--no-uvloop"] if request.param == "asyncio" else []
    uwsgi_port = free_port()
    process = GantryServer(
        "tests.apps_hostile:app",
        "--keepalive-timeout", str(KEEPALIVE),
        "--uwsgi-socket", f"127.0.0.1:{uwsgi_port}",
        *loop,
        log_path=workdir / "server.log",
    )  # fmt: skip
    process.uwsgi_port = uwsgi_port  # type: ignore[attr-defined]
    with process:
        yield process


def test_request_waiting_for_the_output_to_drain_is_not_timed_out(
    short_keepalive: GantryServer,
) -> None:
    """A request that arrives while the previous answer (32 MiB, unread) fills the
    output waits for it to drain: the keep-alive timeout must not close the
    connection under it. The client reads late; it gets both answers."""
    big = 32 << 20
    with short_keepalive.connect(timeout=30) as sock:
        sock.sendall(b"GET /size/%d?1 HTTP/1.1\r\nHost: a\r\n\r\n" % big)
        time.sleep(0.5)  # the first answer is handed over and the worker goes idle
        sock.sendall(b"GET /size/100?2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        # time passing is the subject: past the keep-alive timeout and its sweep
        time.sleep(KEEPALIVE + 2.5)
        result = read_until_closed(sock, wait=30)
    got = responses(result.data)
    assert [(status, len(body)) for status, body in got] == [(200, big), (200, 100)]


def test_uwsgi_packet_waiting_for_the_output_to_drain_is_not_timed_out(
    short_keepalive: GantryServer,
) -> None:
    """The same on a kept uwsgi connection: the next packet, read while the previous
    answer (32 MiB, unread) fills the output, is answered once the peer reads."""
    big = 32 << 20
    port = short_keepalive.uwsgi_port  # type: ignore[attr-defined]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(uwsgi_get(b"/size/%d?1" % big, keep=True))
        time.sleep(0.5)  # the first answer is handed over
        sock.sendall(uwsgi_get(b"/size/100?2", keep=False))
        # time passing is the subject: past the keep-alive timeout and its sweep
        time.sleep(KEEPALIVE + 2.5)
        result = read_until_closed(sock, wait=30)
    got = responses(result.data)
    assert [(status, len(body)) for status, body in got] == [(200, big), (200, 100)]


def test_uwsgi_paced_packets_never_read_keep_the_worker_bounded(
    server: tuple[GantryServer, int],
) -> None:
    """Packets sent one at a time, each after the previous answer was made (so none
    arrives during a response), answers never read: the worker runs no packet while
    its output is above the high-water mark, so RSS stays bounded (< 20 MB for
    200 answers of 256 KiB); then every answer comes, in order."""
    process, port = server
    count, size = 200, 256 << 10
    before = rss_kib(process.pid)
    grown = sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setblocking(False)
        for i in range(count):
            packet = uwsgi_get(b"/size/%d?%d" % (size, i), keep=i < count - 1)
            try:
                sock.send(packet)  # whole or not at all: the packet is small
            except BlockingIOError:
                break  # the worker stopped reading: that is the bound at work
            sent += 1
            # pacing, so each packet finds the previous answer made
            time.sleep(0.01)
            grown = max(grown, rss_kib(process.pid) - before)
        sock.setblocking(True)
        if sent < count:
            # the last packet asks for the close; the ones not sent are not awaited
            sock.sendall(uwsgi_get(b"/size/%d?last" % size, keep=False))
        result = read_until_closed(sock, wait=60)
    assert grown < GROWTH_LIMIT_KIB, f"RSS grew {grown} KiB"
    got = responses(result.data)
    assert [status for status, _ in got] == [200] * len(got)
    for i, (_, body) in enumerate(got[:-1]):
        assert body.startswith(b"/size/%d?%d\n" % (size, i)), (i, body[:40])
