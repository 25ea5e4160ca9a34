"""The parser's fast path reads a keep-alive client's repeated field block once: the
requests after the first must come out exactly as if each were read afresh."""

from __future__ import annotations

from gantry.protocol.http1 import HTTPLimits, ProtocolError, RequestParser
from tests.corpus import RecordingSink


def feed_all(parser: RequestParser, *requests: bytes) -> None:
    for data in requests:
        parser.feed(data)


def test_a_repeated_block_gives_equal_fields_in_lists_of_their_own() -> None:
    sink = RecordingSink()
    parser = RequestParser(sink)
    block = b"Host: example.com\r\nAccept: */*\r\nX-Y: a b\r\n"
    feed_all(
        parser,
        b"GET /a HTTP/1.1\r\n" + block + b"\r\n",
        b"HEAD /b?q HTTP/1.1\r\n" + block + b"\r\n",
    )
    first, second = (r.head for r in sink.requests)
    assert first.headers == second.headers == [
        (b"Host", b"example.com"), (b"Accept", b"*/*"), (b"X-Y", b"a b")
    ]  # fmt: skip
    first.headers.append((b"X-Added", b"by a handler"))
    assert len(second.headers) == 3  # a handler changing one head leaves the next alone
    assert (second.method, second.path, second.query) == ("HEAD", b"/b", b"q")


def test_the_connection_option_of_a_repeated_block_still_counts() -> None:
    sink = RecordingSink()
    parser = RequestParser(sink)
    block = b"Host: h\r\nConnection: close\r\n"
    feed_all(
        parser, b"GET / HTTP/1.1\r\n" + block + b"\r\n", b"GET / HTTP/1.1\r\n" + block + b"\r\n"
    )
    assert [r.head.keep_alive for r in sink.requests] == [False, False]
    sink = RecordingSink()
    parser = RequestParser(sink)
    block = b"Host: h\r\nConnection: keep-alive\r\n"
    feed_all(
        parser, b"GET / HTTP/1.0\r\n" + block + b"\r\n", b"GET / HTTP/1.0\r\n" + block + b"\r\n"
    )
    assert [r.head.keep_alive for r in sink.requests] == [True, True]


def test_a_block_refused_by_the_fast_path_is_never_remembered() -> None:
    # Too many fields for the limit: llhttp's path refuses it each time, not only the first
    sink = RecordingSink()
    parser = RequestParser(sink, HTTPLimits(max_fields=2))
    block = b"Host: h\r\nA: 1\r\nB: 2\r\n"
    try:
        feed_all(parser, b"GET / HTTP/1.1\r\n" + block + b"\r\n")
    except ProtocolError as exc:
        assert exc.status == 431
    else:
        raise AssertionError("three fields passed a limit of two")
    assert not sink.requests
