"""The proxy's upstream connections on their own sockets (no asyncio Transport), against
real peers: scripted uwsgi servers on unix and TCP sockets that stay silent, reset, hang
up or read slowly, and real uWSGI streaming 200 MiB to a slow client."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gantry.protocol.uwsgi import parse_packet
from tests.process import Launcher, descendant_pids
from tests.support_front import proc_status_kib, start_uwsgi, uwsgi_front_config

Handler = Callable[[socket.socket], None]


class ScriptedPeer:
    """A uwsgi peer on a real socket (unix, or TCP on 127.0.0.1) that runs ``handler`` on
    each connection in a thread of its own; ``closed`` is set when a handler is done."""

    def __init__(self, handler: Handler, unix_path: str | None = None) -> None:
        self.handler = handler
        if unix_path is not None:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(unix_path)
            self.address = f"unix:{unix_path}"
        else:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.closed = threading.Event()
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            self.handler(conn)
        self.closed.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for conn in self.connections:
            conn.close()


def read_packet(conn: socket.socket) -> dict[bytes, bytes]:
    """The uwsgi packet's vars (the body, if any, is left unread)."""
    buffer = b""
    while (parsed := parse_packet(buffer)) is None:
        piece = conn.recv(65536)
        if not piece:
            raise EOFError(buffer)
        buffer += piece
    return dict(parsed[1])


def front_config(address: str, extra: str = "") -> str:
    return uwsgi_front_config(address, extra, workers=1)


@pytest.fixture(params=["unix", "tcp"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def peers(short_tmp: Path) -> Iterator[Callable[[Handler, str], ScriptedPeer]]:
    """Makes scripted peers (closed at the end)."""
    made: list[ScriptedPeer] = []

    def make(handler: Handler, family: str) -> ScriptedPeer:
        path = str(short_tmp / f"peer{len(made)}.sock") if family == "unix" else None
        peer = ScriptedPeer(handler, path)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def _hello(conn: socket.socket) -> None:
    read_packet(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")


def test_an_upstream_that_never_answers_is_a_504_at_the_read_timeout(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer], family: str
) -> None:
    """Accepted, request read, never answered: 504 once read_timeout passes (not before),
    and the worker goes on answering."""
    silent = threading.Event()

    def never_answer(conn: socket.socket) -> None:
        read_packet(conn)
        silent.wait(30)

    peer = peers(never_answer, family)
    try:
        front = launch.front(front_config(peer.address, 'read_timeout = "1s"'))
        started = time.monotonic()
        response, _ = front.request("GET", "/")
        elapsed = time.monotonic() - started
        assert response.status == 504
        assert 0.9 <= elapsed < 4.0, elapsed
        peer.handler = _hello
        response, body = front.request("GET", "/")
        assert (response.status, body) == (200, b"hello")
    finally:
        silent.set()


def test_an_upstream_reset_before_its_head_is_a_502(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer], family: str
) -> None:
    """A reset before the head is whole (a unix peer closing with the request unread,
    a TCP peer with SO_LINGER 0): 502, and the next request is served."""

    def reset(conn: socket.socket) -> None:
        conn.recv(2)  # most of the request stays unread: the close resets
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    peer = peers(reset, family)
    front = launch.front(front_config(peer.address))
    response, _ = front.request("GET", "/")
    assert response.status == 502
    assert "upstream" in front.log.read_text()
    peer.handler = _hello
    response, body = front.request("GET", "/")
    assert (response.status, body) == (200, b"hello")


def test_an_upstream_reset_mid_body_closes_the_client_early(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer], family: str
) -> None:
    """The head went out: the client sees the connection close before Content-Length
    bytes came, never a body made whole."""

    def reset_mid_body(conn: socket.socket) -> None:
        conn.recv(2)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        time.sleep(0.2)  # the head and the first bytes reach the client first
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    peer = peers(reset_mid_body, family)
    front = launch.front(front_config(peer.address))
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        received = b""
        while piece := client.recv(65536):
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"a" * 1000


def _cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def test_an_upstream_gone_while_the_client_is_behind_costs_no_cpu(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer]
) -> None:
    """The upstream writes a close-delimited answer until the front stops taking it (its
    client reads nothing), then hangs up: that hang-up must not wake the worker again
    and again while the client is behind. Then the client gets every byte written."""
    sent: list[bytes] = []
    stalled = threading.Event()

    def write_until_stalled_and_hang_up(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        conn.setblocking(False)
        piece = os.urandom(65536)
        deadline = time.monotonic() + 30
        while not stalled.is_set() and time.monotonic() < deadline:
            try:
                sent.append(piece[: conn.send(piece)])
            except BlockingIOError:
                # the front reads nothing more for a while: it has stopped reading
                _, writable, _ = select.select([], [conn], [], 0.5)
                if not writable:
                    stalled.set()
        conn.shutdown(socket.SHUT_RDWR)

    peer = peers(write_until_stalled_and_hang_up, "unix")
    front = launch.front(front_config(peer.address))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the front soon waits
    client.settimeout(30)
    try:
        client.connect(("127.0.0.1", front.port))
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert peer.closed.wait(40), "the upstream is still writing"
        assert stalled.is_set(), "the front never stopped reading its upstream"
        pids = {front.pid, *descendant_pids(front.pid)}
        before = _cpu_seconds(pids)
        time.sleep(1.0)
        spent = _cpu_seconds(pids) - before
        assert spent < 0.3, f"the worker spun for {spent:.2f}s of CPU while the client waited"
        received = b""
        while piece := client.recv(1 << 20):
            received += piece
    finally:
        client.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"chunked" not in head.lower()  # an HTTP/1.0 client: the close ends the body
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(sent)).digest()


def test_a_slow_client_of_real_uwsgi_keeps_the_worker_small(launch: Launcher) -> None:
    """Real uWSGI streams 200 MiB (/big-stream) to a client that reads nothing for a
    second, then reads it all: the worker's peak memory grows by less than 16 MiB."""
    sock = start_uwsgi(launch, "tests.apps_contract:app")
    front = launch.front(front_config(f"unix:{sock}"))
    response, body = front.request("GET", "/hello")
    assert (response.status, body) == (200, b"Hello World!")
    worker = max({front.pid, *descendant_pids(front.pid)})  # one process, or its worker
    peak_before = proc_status_kib(worker, "VmHWM")
    with socket.create_connection(("127.0.0.1", front.port), timeout=30) as client:
        client.sendall(b"GET /big-stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        time.sleep(1.0)
        assert proc_status_kib(worker, "VmRSS") - peak_before < 16 * 1024
        received = 0
        head = b""
        deadline = time.monotonic() + 120
        while (piece := client.recv(1 << 20)) and time.monotonic() < deadline:
            if not head:
                head, _, piece = piece.partition(b"\r\n\r\n")
            received += len(piece)
    assert head.startswith(b"HTTP/1.1 200 ")
    # chunked toward the client: the body bytes and their chunk framing
    assert received >= 200 * 1024 * 1024
    grown = proc_status_kib(worker, "VmHWM") - peak_before
    assert grown < 16 * 1024, f"the worker's peak grew by {grown} KiB"


def test_a_large_body_to_a_slow_reading_upstream_arrives_whole(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer], family: str
) -> None:
    """8 MiB posted to an upstream that reads in small sips at first: the front's outbox
    waits on the socket (no byte lost or reordered), the digest matches."""
    body = os.urandom(8 * 1024 * 1024)
    digests: list[str] = []

    def sip_then_drink(conn: socket.socket) -> None:
        env = read_packet_and_rest(conn)
        length = int(env[0][b"CONTENT_LENGTH"])
        got = bytearray(env[1])
        for _ in range(20):  # slowly: the front's writes meet a full socket
            got += conn.recv(4096)
            time.sleep(0.01)
        while len(got) < length:
            piece = conn.recv(1 << 20)
            if not piece:
                break
            got += piece
        digests.append(hashlib.sha256(got).hexdigest())
        answer = digests[-1].encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)

    peer = peers(sip_then_drink, family)
    front = launch.front(front_config(peer.address, 'send_timeout = "10s"'))
    response, answer = front.request("POST", "/", body)
    assert response.status == 200
    assert answer.decode() == hashlib.sha256(body).hexdigest()


def read_packet_and_rest(conn: socket.socket) -> tuple[dict[bytes, bytes], bytes]:
    """The packet's vars and the body bytes read with it."""
    buffer = b""
    while (parsed := parse_packet(buffer)) is None:
        piece = conn.recv(65536)
        if not piece:
            raise EOFError(buffer)
        buffer += piece
    return dict(parsed[1]), buffer[parsed[2] :]


def test_an_upstream_that_never_reads_the_body_is_a_504_at_the_send_timeout(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer]
) -> None:
    """4 MiB to an upstream that takes the connection and reads nothing: 504 once
    send_timeout passes."""
    stall = threading.Event()

    def never_read(conn: socket.socket) -> None:
        stall.wait(30)

    peer = peers(never_read, "unix")
    try:
        front = launch.front(front_config(peer.address, 'send_timeout = "1s"'))
        started = time.monotonic()
        response, _ = front.request("POST", "/", os.urandom(4 * 1024 * 1024))
        assert response.status == 504
        assert time.monotonic() - started < 10
    finally:
        stall.set()


def test_a_tcp_upstream_named_by_host_name(
    launch: Launcher, peers: Callable[[Handler, str], ScriptedPeer]
) -> None:
    """ "localhost:PORT" is resolved (the connect tries each address in turn)."""
    peer = peers(_hello, "tcp")
    port = peer.address.rpartition(":")[2]
    front = launch.front(front_config(f"localhost:{port}"))
    for _ in range(3):
        response, body = front.request("GET", "/")
        assert (response.status, body) == (200, b"hello")
