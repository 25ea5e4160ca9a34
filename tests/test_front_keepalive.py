"""Kept uwsgi connections between gantry front and gantry serve (gantry's own packet, or
GANTRY_KEEPALIVE=1 in a standard one)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.uwsgi import (
    GANTRY_MODIFIER2,
    encode_packet,
    parse_gantry_packet,
    parse_packet,
)
from tests.process import Front, GantryServer


class CountingUwsgiServer:
    """A uwsgi peer on a unix socket that counts connections and answers framed responses
    while the front asks to keep the connection (a real socket, to see what the front does).
    ``flags``: per packet, b"gantry" for gantry's own packet, else its GANTRY_KEEPALIVE."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.accepted = 0
        self.flags: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        conn.settimeout(5)
        with conn:
            for _ in range(1000):
                gantry = buffer[3:4] == bytes((GANTRY_MODIFIER2,))
                parsed = parse_gantry_packet(buffer) if gantry else parse_packet(buffer)
                if parsed is None:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                    continue
                used = parsed[-1]
                if gantry:
                    fields = parsed[0]
                    assert isinstance(fields, list)
                    environ = dict(zip(fields[::2], fields[1::2], strict=True))
                    assert environ["PATH_INFO"] == "/x" and environ["REQUEST_METHOD"] == "GET"
                    flag = b"gantry"
                else:
                    flag = dict(parsed[1]).get(b"GANTRY_KEEPALIVE", b"")  # type: ignore[arg-type]
                buffer = buffer[used:]
                self.flags.append(flag)
                kept = flag in (b"1", b"gantry")
                body = b"kept" if kept else b"closing"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
                if not kept:
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "app"

[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
gantry_keepalive = {keep}
"""


@pytest.fixture()
def peer(tmp_path: Path) -> Iterator[CountingUwsgiServer]:
    server = CountingUwsgiServer(str(tmp_path / "peer.sock"))
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("keep", [True, False])
def test_front_reuses_kept_connections_only_when_asked(
    tmp_path: Path, peer: CountingUwsgiServer, keep: bool
) -> None:
    front = Front(CONFIG.format(sock=peer.path, keep=str(keep).lower()), tmp_path)
    front.start()
    try:
        for _ in range(10):
            response, body = front.request("GET", "/x")
            assert response.status == 200
            assert body == (b"kept" if keep else b"closing")
    finally:
        front.stop()
    if keep:
        assert peer.accepted == 1 and peer.flags == [b"gantry"] * 10
    else:
        assert peer.accepted == 10 and peer.flags == [b""] * 10


def test_kept_connections_to_gantry_serve_under_reload(tmp_path: Path) -> None:
    """Many requests over kept connections while the pool reloads (SIGHUP to its master):
    the front retries a kept connection the pool closed on a new one; none fails."""
    sock = tmp_path / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), "--workers", "2",
        log_path=tmp_path / "app.log", http=False,
    )  # fmt: skip
    app.start(wait_for=str(sock))
    front = Front(CONFIG.format(sock=sock, keep="true"), tmp_path)
    front.start()
    failures: list[str] = []
    served = 0
    try:
        reload_at = time.monotonic() + 0.5
        end = reload_at + 3.0
        for _ in range(20_000):  # bounded; about 3.5 s
            now = time.monotonic()
            if now > end:
                break
            if reload_at and now >= reload_at:
                reload_at = 0.0
                assert app.process is not None
                app.process.send_signal(signal.SIGHUP)  # new workers; the old ones finish
            response, body = front.request("GET", "/hello")
            served += 1
            if (response.status, body) != (200, b"Hello World!"):
                failures.append(f"{response.status} {body[:60]!r}")
        assert "reload" in app.log_text().lower(), app.log_text()[-2000:]
    finally:
        front.stop()
        app.stop()
    assert served > 100 and failures == []


TWO_WAYS = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[[front.server]]
server_name = ["kept.test"]
[[front.server.location]]
path = "/"
proxy = "kept"

[[front.server]]
default = true
[[front.server.location]]
path = "/"
proxy = "plain"

[front.upstream.kept]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
gantry_keepalive = true

[front.upstream.plain]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
"""

# (method, path, header lines, body): responses that take the short path (whole, with a
# length), and every kind that must not (streamed, bodyless, hidden fields, errors).
EXCHANGES = [
    ("GET", "/hello", "", ""),
    ("GET", "/hello", "Connection: close\r\n", ""),
    ("HEAD", "/hello", "", ""),
    ("GET", "/own-headers", "", ""),
    ("GET", "/stream", "", ""),
    ("GET", "/not-modified", "", ""),
    ("GET", "/missing", "", ""),
    ("GET", "/raise", "", ""),
    ("POST", "/echo", "Content-Length: 5\r\n", "hello"),
]


def _exchange(port: int, host: str, exchange: tuple[str, str, str, str], version: str) -> bytes:
    """One request on its own connection; the raw response, Date's value blanked."""
    import re

    method, path, lines, body = exchange
    request = f"{method} {path} HTTP/{version}\r\nHost: {host}\r\n{lines}\r\n{body}"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _complete(data, method):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    data = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", data)
    head, sep, body = data.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:  # chunk boundaries are the reads': decode
        pieces = []
        while body:
            size, _, rest = body.partition(b"\r\n")
            pieces.append(rest[: int(size, 16)])
            body = rest[int(size, 16) + 2 :]
        body = b"(dechunked)" + b"".join(pieces)
    return head + sep + body


def _complete(data: bytes, method: str) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if method == "HEAD" or head.split(b" ")[1] in (b"304", b"204"):
        return True
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"0\r\n\r\n")


def test_kept_path_answers_exactly_as_the_standard_path(tmp_path: Path) -> None:
    """gantry serve behind gantry front over gantry's own packet (whole responses skip the
    parser) and over the standard one: byte-identical answers, hidden fields dropped."""
    sock = tmp_path / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock),
        log_path=tmp_path / "app.log", http=False,
    )  # fmt: skip
    app.start(wait_for=str(sock))
    front = Front(TWO_WAYS.format(sock=sock), tmp_path)
    front.start()
    try:
        for exchange in EXCHANGES:
            method, path, lines, _ = exchange
            for version in ("1.1", "1.0"):
                kept = _exchange(front.port, "kept.test", exchange, version)
                plain = _exchange(front.port, "other.test", exchange, version)
                assert kept == plain, (method, path, version)
                assert kept.startswith(b"HTTP/1.1 "), kept
                head = kept.partition(b"\r\n\r\n")[0]
                assert head.count(b"\r\nServer: ") == 1 and b"Server: gantry" in head
                assert head.count(b"\r\nDate: ") == 1
                if path == "/own-headers":
                    assert b"app/1" not in head and head.count(b"X-Kept: ") == 2
                    assert kept.endswith(b"\r\n\r\nmine")
                if path == "/hello" and method == "GET":
                    assert kept.endswith(b"Hello World!")
                    keep = version == "1.1" and "close" not in lines
                    assert (b"Connection: close" in head) != keep
    finally:
        front.stop()
        app.stop()


@pytest.mark.parametrize(
    ("response", "short"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh", False),  # the rest is coming
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi!", False),  # bytes past the end
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", False),  # retries decided there
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nserver: app\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", False),
        # from an upstream other than gantry serve, only heads the parser would pass on
        # byte for byte
        (b"HTTP/1.1 200 OK\r\nContent-Length:2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX-A: a \r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX-A: a\t\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX-A:  a\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK \r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX-A: a\t b\r\nX-B: c\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 200 A\r\nX-A: \xe9\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Accel-Redirect: /x\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nDATE: x\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi", False),  # the parser's spelling
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 19 + b"2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nX-Date: 1\r\nContent-Length: 1\r\nX-Server: 2\r\n\r\nh", True),
        (b"HTTP/1.1 499 Odd\r\nContent-Length: 0\r\nSet-Cookie: a=b; c\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", False),  # no body yet
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", False),  # the head is cut
    ],
)
def test_which_responses_skip_the_parser(response: bytes, short: bool) -> None:
    """The short path takes only a whole, length-framed response with nothing to hide."""
    import asyncio

    from gantry.front.upstream import UpstreamConnection, UpstreamResponse

    class Seen(UpstreamResponse):
        whole_args: tuple[int, bytes, bytes] | None = None

        def whole(self, status: int, head: bytes, body: bytes) -> None:
            self.whole_args = (status, head, body)

    loop = asyncio.new_event_loop()
    try:
        conn = UpstreamConnection(loop, "unix:/nowhere")
        seen = Seen()
        conn.receiver = seen
        assert conn._whole(response) is short
        if short:
            head, _, body = response.partition(b"\r\n\r\n")
            assert seen.whole_args == (int(response[9:12]), head + b"\r\n", body)
            assert conn.receiver is None
    finally:
        loop.close()


class ScriptedUwsgiPeer(CountingUwsgiServer):
    """A uwsgi upstream answering each packet with ``response``, in one write, or head
    and body apart (then the front's parser reads it), and closing."""

    def __init__(self, path: str, response: bytes, split: bool) -> None:
        self.response, self.split = response, split
        super().__init__(path)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buffer = b""
            while parse_packet(buffer) is None:
                buffer += conn.recv(65536)
            head, _, body = self.response.partition(b"\r\n\r\n")
            # the front may close once the response is whole (an empty body)
            with contextlib.suppress(OSError):
                if self.split:
                    conn.sendall(head + b"\r\n\r\n")
                    time.sleep(0.05)
                    conn.sendall(body)
                else:
                    conn.sendall(self.response)


UPSTREAM_ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nX-Many: 1, 2\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 Fine\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: theirs\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Type:text/plain\r\nContent-Length: 2\r\n\r\nok",
]


@pytest.mark.parametrize("answer", UPSTREAM_ANSWERS)
def test_whole_answer_from_any_upstream_as_through_the_parser(
    tmp_path: Path, answer: bytes
) -> None:
    """An upstream (here a scripted uwsgi peer) answering in one write (the short path
    when its head is plain) and in two (the parser): the client gets the same bytes."""
    seen = []
    for split in (False, True):
        work = tmp_path / f"split-{split}"
        work.mkdir()
        sock = str(work / "peer.sock")
        peer = ScriptedUwsgiPeer(sock, answer, split)
        front = Front(CONFIG.format(sock=sock, keep="false"), work)
        front.start()
        try:
            seen.append(_exchange(front.port, "example.test", ("GET", "/x", "", ""), "1.1"))
        finally:
            front.stop()
            peer.close()
    whole, parsed = seen
    assert whole == parsed
    head = whole.partition(b"\r\n\r\n")[0]
    assert head.count(b"\r\nServer: ") == 1 and b"Server: gantry" in head
    assert whole.endswith(answer.partition(b"\r\n\r\n")[2] or b"\r\n\r\n")


def test_a_finished_upstream_connection_is_freed_without_the_cycle_collector(
    tmp_path: Path,
) -> None:
    """One connection per request to uWSGI-like upstreams: a closed UpstreamConnection must
    not sit in a reference cycle (parser <-> bound methods, transport <-> protocol) until
    the cycle collector runs. A real socket, a real event loop, the collector off."""
    import asyncio
    import gc

    from gantry.front.upstream import UpstreamConnection, UpstreamResponse, open_upstream

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    peer = ScriptedUwsgiPeer(str(tmp_path / "peer.sock"), answer, split=True)

    class Done(UpstreamResponse):
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.finished = loop.create_future()

        def end(self, reusable: bool) -> None:
            self.finished.set_result(True)

    def alive() -> int:
        # counted, not weakly referenced: a weak reference to a protocol compiled by
        # mypyc is not cleared when it dies (see gantry.compiled)
        return sum(isinstance(o, UpstreamConnection) for o in gc.get_objects())

    async def one_request() -> None:
        loop = asyncio.get_running_loop()
        conn = await open_upstream(loop, f"unix:{peer.path}", 5.0)
        done = Done(loop)
        conn.send(done, [encode_packet([(b"PATH_INFO", b"/")])], 5.0, head_request=False)
        await done.finished
        conn.abort()
        await asyncio.sleep(0.05)  # connection_lost runs
        assert conn.closed
        assert alive() == before + 1

    gc.collect()
    before = alive()
    gc.disable()
    try:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(one_request())
            loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.close()
        assert alive() == before
    finally:
        gc.enable()
        peer.close()
