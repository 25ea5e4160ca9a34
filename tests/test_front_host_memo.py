"""One memo of the Host a worker sees, not two: the parser's fast path checks a new Host
value once and keeps it with its text (FieldBlockMemo.host, .host_text); the front
routes by that same str object (its hash kept), where it kept a memo of its own in
front.answering before. Any other Host (an llhttp-read request, an HTTP/2 authority)
is read from the head, never taken from the memo, never put in it."""

from __future__ import annotations

import gantry.front.answering as answering
from gantry.front.answering import request_host
from gantry.protocol.http1 import FieldBlockMemo, RequestHead, RequestParser
from tests.corpus import RecordingSink


def _head(host: bytes | None) -> RequestHead:
    head = RequestHead()
    head.headers = [(b"Accept", b"*/*")]
    if host is not None:
        head.headers.append((b"host", host))
    return head


def test_the_front_keeps_no_host_memo_of_its_own() -> None:
    assert not hasattr(answering, "_HOST_MEMO") and not hasattr(answering, "_HostMemo")


def test_the_parsers_host_is_routed_by_as_one_str() -> None:
    memo = FieldBlockMemo()
    sink = RecordingSink()
    parser = RequestParser(sink, memo=memo)
    parser.feed(b"GET / HTTP/1.1\r\nHost: example.test:8080\r\n\r\n")
    assert (memo.host, memo.host_text) == (b"example.test:8080", "example.test:8080")
    first = request_host(sink.requests[-1].head, memo)
    parser.feed(b"GET /b HTTP/1.1\r\nHost: example.test:8080\r\nAccept: */*\r\n\r\n")
    second = request_host(sink.requests[-1].head, memo)
    assert first == "example.test:8080" and first is second is memo.host_text
    # a new Host: checked, kept, its text with it
    parser.feed(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert (memo.host, memo.host_text) == (b"other.test", "other.test")
    assert request_host(sink.requests[-1].head, memo) is memo.host_text


def test_other_hosts_are_read_from_the_head_and_left_out_of_the_memo() -> None:
    memo = FieldBlockMemo()
    memo.host, memo.host_text = b"example.test", "example.test"
    assert request_host(_head(b"elsewhere.test"), memo) == "elsewhere.test"
    assert request_host(_head(b"caf\xe9.test"), memo) == "caf\xe9.test"  # latin-1
    assert (memo.host, memo.host_text) == (b"example.test", "example.test")
    assert request_host(_head(None), memo) is None
    # the memo's first value names no host a request can send as itself
    fresh = FieldBlockMemo()
    assert request_host(_head(b"\0"), fresh) == "\0"
    assert request_host(_head(b""), fresh) == ""
