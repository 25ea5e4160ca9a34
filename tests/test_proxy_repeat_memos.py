"""The proxy's memos of what repeats from one request to the next (a keep-alive client, an
app that answers alike): the client's request, the upstream's whole-response head, the
uwsgi packet's vars but the connection's own, and the head sent to the client. Each memo
is checked to be used, and never to give an answer other than the one worked out afresh."""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import time
from collections.abc import Iterator

import pytest

from gantry.front import upstream, upstream_request
from gantry.front.upstream import UpstreamConnection, UpstreamError, UpstreamResponse
from gantry.front.upstream_request import connection_vars, uwsgi_packet
from gantry.protocol.http1 import FieldBlockMemo, ProtocolError, RequestHead, RequestParser
from gantry.protocol.uwsgi import parse_packet
from tests.process import Launcher, poll, read_all, recv_until, responses
from tests.support_front import start_uwsgi, uwsgi_front_config

# --- the upstream's head ---------------------------------------------------------------

PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
#: another head, so that a test can start from a memo that does not hold PLAIN
OTHER = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"


class Recorder(UpstreamResponse):
    """What the connection told its receiver, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        self.events.append(("head", status, reason, list(headers), framed))

    def body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def end(self, reusable: bool) -> None:
        self.events.append(("end", reusable))

    def whole(self, status: int, head: bytes, body: bytes) -> None:
        self.events.append(("whole", status, head, body))

    def failed(self, error: UpstreamError) -> None:
        self.events.append(("failed", error.status, error.kind))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def relay(loop: asyncio.AbstractEventLoop, *reads: bytes) -> Recorder:
    """``reads`` from a new connection's upstream, as the proxy's request sees them."""
    conn = UpstreamConnection(loop, "unix:/nowhere", set())
    receiver = Recorder()
    conn.send(receiver, [b"request"], 60.0, False, short_path=True)
    for data in reads:
        conn.data_received(data)
    return receiver


def test_a_repeated_head_is_read_once(loop: asyncio.AbstractEventLoop) -> None:
    relay(loop, OTHER)
    first = relay(loop, PLAIN + b"abcde").events
    second = relay(loop, PLAIN + b"vwxyz").events
    assert first == [("whole", 200, PLAIN[:-2], b"abcde")]
    assert second == [("whole", 200, PLAIN[:-2], b"vwxyz")]
    # the second head is the memo's own object, not a slice of the second read
    assert second[0][2] is first[0][2]


@pytest.mark.parametrize(
    "data",
    [
        PLAIN + b"abcdef",  # more than the head says: not whole
        PLAIN + b"abcd",  # less: the rest would follow in another read
        PLAIN + b"abcdeHTTP/1.1 200 OK\r\n",  # bytes after it
        PLAIN.replace(b"200 OK", b"201 Created") + b"abcde",
        PLAIN.replace(b"200 OK", b"502 Bad Gateway") + b"abcde",  # the slow path retries
        PLAIN.replace(b"Length: 5", b"Length: 50") + b"abcde" * 10,
        PLAIN[:-2] + b"X-Odd: \x01\r\n\r\nabcde",  # a control byte in a value: 502
        PLAIN[:-2] + b"Content-Length: 5\r\n\r\nabcde",  # twice
        PLAIN[:-2] + b" folded\r\n\r\nabcde",  # obs-fold
        PLAIN[:-2] + b"Connection: close\r\n\r\nabcde",  # a field the proxy drops
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0") + b"abcde",
    ],
)
def test_a_response_like_the_memo_gets_the_answer_it_gets_afresh(
    loop: asyncio.AbstractEventLoop, data: bytes
) -> None:
    relay(loop, OTHER)
    cold = relay(loop, data).events
    relay(loop, PLAIN + b"abcde")
    assert upstream._HEAD_MEMO.head == PLAIN  # warm: the memo holds the head it resembles
    warm = relay(loop, data).events
    assert warm == cold


def test_a_head_cut_across_reads_is_parsed(loop: asyncio.AbstractEventLoop) -> None:
    relay(loop, PLAIN + b"abcde")
    events = relay(loop, PLAIN[:20], PLAIN[20:] + b"abcde").events
    assert events[0][:2] == ("head", 200)
    assert events[1:] == [("body", b"abcde"), ("end", True)]


# --- the uwsgi packet ------------------------------------------------------------------------


def request(target: bytes = b"/page?a=1", **changes: object) -> RequestHead:
    head = RequestHead()
    head.method = "GET"
    head.target = target
    head.path, _, head.query = target.partition(b"?")
    head.headers = [(b"Host", b"example.com"), (b"Accept", b"*/*")]
    for name, value in changes.items():
        setattr(head, name, value)
    return head


def packet_vars(packet: bytes) -> dict[str, str]:
    parsed = parse_packet(packet)
    assert parsed is not None and parsed[2] == len(packet)
    return {key.decode(): value.decode() for key, value in parsed[1]}


def test_the_vars_but_the_connections_are_made_once_for_every_connection() -> None:
    head = request()
    one = connection_vars("127.0.0.1", "40001", "80")
    two = connection_vars("127.0.0.1", "40002", "80")
    first = uwsgi_packet(one, head, "/page", "", 0, False)
    before = upstream_request._PACKET_MEMO.before
    second = uwsgi_packet(two, request(), "/page", "", 0, False)
    assert upstream_request._PACKET_MEMO.before is before
    first_vars, second_vars = packet_vars(first), packet_vars(second)
    assert (first_vars.pop("REMOTE_PORT"), second_vars.pop("REMOTE_PORT")) == ("40001", "40002")
    assert first_vars == second_vars
    assert first_vars["REQUEST_URI"] == "/page?a=1"
    assert first_vars["QUERY_STRING"] == "a=1"
    assert first_vars["HTTP_HOST"] == "example.com"


VARIANTS: dict[str, tuple[RequestHead, str, str, int, bool]] = {
    "target": (request(b"/page?a=2"), "/page", "", 0, False),
    "query only": (request(b"/page?a=1", query=b"b=2"), "/page", "", 0, False),
    "method": (request(method="HEAD"), "/page", "", 0, False),
    "version": (request(version="1.0"), "/page", "", 0, False),
    "path": (request(), "/other", "", 0, False),
    "script_name": (request(), "/page", "/pa", 0, False),
    "body length": (request(method="POST"), "/page", "", 10, False),
    "keepalive": (request(), "/page", "", 0, True),
    "fields": (request(headers=[(b"Host", b"example.org")]), "/page", "", 0, False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_packet_memo_follows_every_input(variant: str) -> None:
    fixed = connection_vars("127.0.0.1", "40001", "80")
    head, path, script_name, length, keepalive = VARIANTS[variant]
    upstream_request._PACKET_MEMO.body_length = -1  # cold
    cold = uwsgi_packet(fixed, head, path, script_name, length, keepalive)
    base = uwsgi_packet(fixed, request(), "/page", "", 0, False)
    assert base != cold
    warm = uwsgi_packet(fixed, head, path, script_name, length, keepalive)
    assert warm == cold
    assert uwsgi_packet(fixed, request(), "/page", "", 0, False) == base


# --- through the front, to real uWSGI -------------------------------------------------------


@pytest.fixture
def front_port(launch: Launcher) -> int:
    """A front proxying everything to uWSGI (tests.apps_repeat) over a unix socket."""
    sock = start_uwsgi(launch, "tests.apps_repeat:app")
    return launch.front(uwsgi_front_config(f"unix:{sock}")).port


def ask(sock: socket.socket, target: str, fields: str = "", version: str = "1.1") -> bytes:
    """One request on ``sock`` and its whole response (Content-Length framed)."""
    sock.sendall(f"GET {target} HTTP/{version}\r\nHost: t\r\n{fields}\r\n".encode())

    def whole(data: bytes) -> bool:
        head, blank, body = data.partition(b"\r\n\r\n")
        if not blank:
            return False
        length = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:")]
        return len(body) >= int(length[0].split(b":")[1])

    return recv_until(sock, whole)


def fields_of(response: bytes) -> dict[str, str]:
    lines = response.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines)


def test_repeated_answers_through_the_front(front_port: int) -> None:
    with socket.create_connection(("127.0.0.1", front_port), timeout=10) as sock:
        for size in (5, 5, 5, 7, 5, 7, 7):
            response = ask(sock, f"/body?claim={size}")
            assert responses(response) == [(200, b"x" * size)]
            assert fields_of(response)["Content-Length"] == str(size)
            assert "Connection" not in fields_of(response)
        # the same head from the app, but the connection's own fields differ
        ask(sock, "/body?claim=5")
        old = ask(sock, "/body?claim=5", "Connection: keep-alive\r\n", "1.0")
        assert fields_of(old)["Connection"] == "keep-alive"
        assert responses(old) == [(200, b"xxxxx")]
        last = ask(sock, "/body?claim=5", "Connection: close\r\n")
        assert fields_of(last)["Connection"] == "close"
        assert responses(last) == [(200, b"xxxxx")]
        assert read_all(sock) == b""  # closed after it


def other_date(sock: socket.socket, date: str) -> str | None:
    """The Date of the answer to another request, if it is not ``date``."""
    now = fields_of(ask(sock, "/body?claim=5"))["Date"]
    return now if now != date else None


def test_the_date_of_a_repeated_answer_is_todays(front_port: int) -> None:
    with socket.create_connection(("127.0.0.1", front_port), timeout=10) as sock:
        first = fields_of(ask(sock, "/body?claim=5"))["Date"]
        date = poll(lambda: other_date(sock, first), limit=5)
        assert date is not None  # the memo's head did not keep the old Date
        sent = email.utils.parsedate_to_datetime(date).timestamp()
        assert abs(sent - time.time()) < 2


@pytest.mark.parametrize("send", [10, 3])
def test_an_app_sending_more_or_less_than_its_head_says_warm_or_cold(
    front_port: int, send: int
) -> None:
    answers = []
    for warm_up in ("/body?claim=7", "/body?claim=5"):  # cold, then warm
        with socket.create_connection(("127.0.0.1", front_port), timeout=10) as sock:
            ask(sock, warm_up)
            sock.sendall(f"GET /body?claim=5&send={send} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            answers.append(re.sub(rb"Date: [^\r]*\r\n", b"", read_all(sock, 3)))
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 200 OK\r\n")


# --- the client's request ---------------------------------------------------------------------

BASE = b"GET /hello HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"


class Sink:
    """What the parser hands on, as comparable tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def request_head(self, head: RequestHead) -> None:
        self.events.append((
            "head", head.method, head.target, head.path, head.query, head.version,
            head.keep_alive, head.content_length, head.chunked, list(head.headers),
        ))  # fmt: skip

    def request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.events.append(("end", trailers))


def parsed(*feeds: bytes) -> tuple[list[tuple[object, ...]], int | None]:
    """What a new parser hands on for ``feeds``, and the status it refused with (if it did)."""
    sink = Sink()
    parser = RequestParser(sink)
    try:
        for data in feeds:
            parser.feed(data)
    except ProtocolError as exc:
        return sink.events, exc.status
    return sink.events, None


def test_a_repeated_request_is_read_once() -> None:
    sink = Sink()
    memo = FieldBlockMemo()
    parser = RequestParser(sink, None, memo)
    parser.feed(BASE)
    line = memo.line
    assert line == b"GET /hello HTTP/1.1\r\n"
    parser.feed(BASE)
    parser.feed(BASE)
    assert memo.line is line  # taken by the memo, not matched again
    assert sink.events == parsed(BASE)[0] * 3


def test_parsers_sharing_a_memo_each_get_their_own_target() -> None:
    """A worker's connections share one memo: a line remembered from one is taken by
    another only when it is the same line, and its split target goes with it."""
    memo = FieldBlockMemo()
    sinks = [HeadKeeper(), HeadKeeper()]
    parsers = [RequestParser(sink, None, memo) for sink in sinks]
    other = BASE.replace(b"/hello", b"/other?x=1")
    for _ in range(3):
        parsers[0].feed(BASE)
        parsers[1].feed(other)
    assert [(h.target, h.path, h.query) for h in sinks[0].heads] == [
        (b"/hello", b"/hello", b"")
    ] * 3
    assert [(h.target, h.path, h.query) for h in sinks[1].heads] == [
        (b"/other?x=1", b"/other", b"x=1")
    ] * 3
    parsers[1].feed(other)
    parsers[0].feed(other)  # the other line, now the memo's: taken from it
    assert sinks[0].heads[-1].target == b"/other?x=1" and sinks[0].heads[-1].query == b"x=1"


class HeadKeeper(Sink):
    """A sink that keeps the heads themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[RequestHead] = []

    def request_head(self, head: RequestHead) -> None:
        super().request_head(head)
        self.heads.append(head)


def test_a_repeated_request_reuses_its_split_target() -> None:
    sink = HeadKeeper()
    parser = RequestParser(sink)
    asked = b"GET /page?a=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    for data in (asked, asked, asked.replace(b"a=1", b"a=2"), asked):
        parser.feed(data)
    first, second, other, last = sink.heads
    assert (second.target, second.path, second.query) == (b"/page?a=1", b"/page", b"a=1")
    # the same objects (their hashes kept), not new slices of the new bytes
    assert second.path is first.path and second.query is first.query
    assert (other.target, other.path, other.query) == (b"/page?a=2", b"/page", b"a=2")
    assert other.query is not first.query
    assert (last.target, last.query) == (b"/page?a=1", b"a=1")
    # each head is its own: a handler changing one changes no other
    second.path = b"/changed"
    parser.feed(asked)
    assert sink.heads[-1].path == b"/page"


@pytest.mark.parametrize(
    "data",
    [
        BASE.replace(b"/hello", b"/hellp"),  # another target, the same length
        BASE.replace(b"GET /hello", b"GET /hel?o"),  # a query, the same length
        BASE.replace(b"GET", b"HEAD"),
        BASE.replace(b"1.1", b"1.0"),
        BASE.replace(b"1.1", b"1.2"),
        BASE.replace(b"example.com", b"example.org"),
        BASE.replace(b"example.com", b"exa..le.com"),  # a bad Host: refused
        BASE[:-2] + b"Connection: close\r\n\r\n",
        BASE + BASE,  # pipelined
        BASE[:-4] + b"\r\nXY",  # no blank line: cut short
        BASE[:-2] + b"XY",
        BASE[:-2] + b"Content-Length: 2\r\n\r\nab",
        b"POST /hello HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n",  # the head not over
    ],
)
def test_a_request_like_the_last_gets_the_answer_it_gets_afresh(data: bytes) -> None:
    first = parsed(BASE)[0]
    warm = parsed(BASE, data)
    assert warm[0][: len(first)] == first
    assert (warm[0][len(first) :], warm[1]) == parsed(data)
