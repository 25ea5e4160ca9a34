"""The WSGI bridge without a server: environ, start_response, framing, input buffering."""

from __future__ import annotations

import sys

import pytest

from gantry.protocol.http1 import RequestHead, RequestParser
from gantry.wsgi.environ import EnvironTemplate, decode_path, header_environ_key
from gantry.wsgi.input import BodyBuffer
from gantry.wsgi.response import HeadDefaults, Response, ResponseError, error_response


class _Collect:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def request_body(self, data: bytes) -> None:
        pass

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        pass


def _head(raw: bytes) -> RequestHead:
    sink = _Collect()
    RequestParser(sink).feed(raw)
    return sink.heads[0]


def _environ(raw: bytes, mount: str = "") -> dict[str, object]:
    template = EnvironTemplate("127.0.0.1", "8000", mount_prefix=mount)
    return template.from_http(_head(raw), template.for_peer("10.1.2.3", "5555"))


def test_environ_required_keys() -> None:
    env = _environ(b"GET /a%20b/caf%C3%A9?x=1&y=%2F HTTP/1.1\r\nHost: h\r\n\r\n")
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/a b/café".encode().decode("latin-1")
    assert env["QUERY_STRING"] == "x=1&y=%2F"
    assert env["SCRIPT_NAME"] == ""
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == "8000"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "10.1.2.3"
    assert env["REMOTE_PORT"] == "5555"
    assert env["HTTP_HOST"] == "h"
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] is True
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env


def test_environ_repeated_headers_joined() -> None:
    env = _environ(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nX-Multi: b\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n\r\n"
    )
    assert env["HTTP_X_MULTI"] == "a, b"
    assert env["HTTP_COOKIE"] == "a=1; b=2"


def test_underscore_header_cannot_pose_as_dash_header() -> None:
    env = _environ(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"
    )
    assert env["HTTP_X_FORWARDED_FOR"] == "1.1.1.1"
    assert header_environ_key(b"X_Forwarded_For") is None


def test_content_headers_have_no_http_prefix() -> None:
    env = _environ(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    )
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["CONTENT_LENGTH"] == "0"
    assert "HTTP_CONTENT_TYPE" not in env


@pytest.mark.parametrize(
    ("path", "script", "info"),
    [("/app/x", "/app", "/x"), ("/app", "/app", ""), ("/application", "", "/application")],
)
def test_mount_prefix(path: str, script: str, info: str) -> None:
    env = _environ(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode(), mount="/app")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script, info)


def test_decode_path_is_latin1_of_decoded_bytes() -> None:
    assert decode_path(b"/a%2Fb") == "/a/b"
    assert decode_path(b"/%FF") == "/\xff"


def _response(**kw: bool) -> Response:
    args = {"keep_alive": True, "head_only": False, "http10": False} | kw
    return Response(lambda data: None, **args)


def test_known_body_gets_content_length() -> None:
    r = _response()
    r.start_response("200 OK", [("Content-Type", "text/plain")])
    head = r.encode_head(HeadDefaults(), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 5\r\n" in head and b"Transfer-Encoding" not in head
    assert b"Date: " in head and b"Server: gantry" in head


def test_streamed_body_is_chunked_on_11_and_close_delimited_on_10() -> None:
    r = _response()
    r.start_response("200 OK", [])
    assert b"Transfer-Encoding: chunked" in r.encode_head(HeadDefaults(), None)
    assert r.frame(b"abc") == b"3\r\nabc\r\n" and r.end() == b"0\r\n\r\n"
    r10 = _response(http10=True)
    r10.start_response("200 OK", [])
    head = r10.encode_head(HeadDefaults(), None)
    assert b"chunked" not in head and b"Connection: close" in head and not r10.keep_alive


def test_app_content_length_enforced() -> None:
    r = _response()
    r.start_response("200 OK", [("Content-Length", "3")])
    r.encode_head(HeadDefaults(), None)
    assert r.frame(b"abcdef") == b"abc"
    assert r.truncated and not r.keep_alive
    short = _response()
    short.start_response("200 OK", [("Content-Length", "10")])
    short.encode_head(HeadDefaults(), None)
    short.frame(b"abc")
    short.end()
    assert not short.keep_alive


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(status: str) -> None:
    r = _response()
    r.start_response(status, [])
    head = r.encode_head(HeadDefaults(), None)
    assert b"chunked" not in head and r.frame(b"x") == b""


def test_head_request_sends_no_body() -> None:
    r = _response(head_only=True)
    r.start_response("200 OK", [("Content-Length", "5")])
    assert b"Content-Length: 5" in r.encode_head(HeadDefaults(), None)
    assert r.frame(b"hello") == b""


def test_response_splitting_refused() -> None:
    r = _response()
    r.start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: x=1")])
    with pytest.raises(ResponseError):
        r.encode_head(HeadDefaults(), 0)


def test_start_response_twice_needs_exc_info() -> None:
    r = _response()
    r.start_response("200 OK", [])
    with pytest.raises(ResponseError):
        r.start_response("500 Oops", [])
    try:
        raise ValueError("x")
    except ValueError:
        r.start_response("500 Oops", [], sys.exc_info())  # type: ignore[arg-type]
    assert r.status_code == 500


def test_start_response_with_exc_info_after_head_reraises() -> None:
    r = _response()
    r.start_response("200 OK", [])
    r.encode_head(HeadDefaults(), None)
    try:
        raise ValueError("late")
    except ValueError:
        with pytest.raises(ValueError, match="late"):
            r.start_response("500 Oops", [], sys.exc_info())  # type: ignore[arg-type]


def test_body_buffer_spools_past_threshold() -> None:
    buf = BodyBuffer(spool_threshold=10)
    buf.append(b"12345")
    assert buf.to_input().read() == b"12345"
    big = BodyBuffer(spool_threshold=10)
    for _ in range(5):
        big.append(b"abcdef")
    stream = big.to_input()
    assert hasattr(stream, "fileno") and big.size == 30
    assert stream.read() == b"abcdef" * 5
    big.discard()


def test_error_response_is_complete_and_closes() -> None:
    raw = error_response("400 Bad Request", HeadDefaults())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in head and b"Date: " in head
    assert body == b"400 Bad Request\n"
    assert f"Content-Length: {len(body)}".encode() in head
    bare = error_response("413 Content Too Large", None, raw=True)
    assert b"Date: " not in bare and bare.endswith(b"\r\n\r\n413 Content Too Large\n")
