"""HTTP/1.1 request parsing on top of httptools (llhttp), sans-I/O.

The parser is fed bytes and calls a sink with a request head, body pieces and the
end of each message. Everything ambiguous is refused with a ``ProtocolError``
that carries the status to answer with; after an error the stream cannot be
trusted and the connection must be closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httptools

__all__ = [
    "HTTPLimits",
    "ProtocolError",
    "RequestHead",
    "RequestParser",
    "RequestSink",
]


class ProtocolError(Exception):
    """A request the server must refuse; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """Size limits checked while reading, before anything is buffered past them."""

    #: request target length (the URL as sent); longer gives 414
    max_request_line: int = 8190
    #: one header field, name plus value; longer gives 431
    max_field_size: int = 8190
    #: number of header fields; more gives 431
    max_fields: int = 100
    #: the whole head (request line and fields); larger gives 431
    max_head_size: int = 65536
    #: request body; larger gives 413
    max_body_size: int = 1024 * 1024 * 1024


class RequestHead:
    """One parsed request head: method, target, version and the header fields in order."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "keep_alive",
        "expect_continue",
        "content_length",
        "chunked",
        "upgrade",
    )

    def __init__(self) -> None:
        self.method: str = ""
        self.target: bytes = b""
        self.path: bytes = b""
        self.query: bytes = b""
        self.version: str = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive: bool = True
        self.expect_continue: bool = False
        self.content_length: int | None = None
        self.chunked: bool = False
        self.upgrade: bool = False

    @property
    def has_body(self) -> bool:
        """Whether body bytes follow the head."""
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} HTTP/{self.version}>"


class RequestSink(Protocol):
    """What the parser calls as a request goes by."""

    def request_head(self, head: RequestHead) -> None:
        """A complete head; body pieces (if any) follow."""

    def request_body(self, data: bytes) -> None:
        """A piece of the decoded body."""

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """The message is complete; ``trailers`` are the chunked trailer fields, if any."""


# Fields that may never come in a trailer section (RFC 9110 6.5.1): framing,
# routing and control data must be in the head.
_FORBIDDEN_TRAILERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"trailer",
        b"expect",
        b"te",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"authorization",
        b"cache-control",
        b"max-forwards",
        b"proxy-authorization",
        b"range",
        b"set-cookie",
    }
)

_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _status_for_llhttp_error(message: str) -> tuple[int, str]:
    lowered = message.lower()
    if "version" in lowered:
        return 505 if "major" in lowered else 400, message
    if "transfer-encoding" in lowered and "content-length" not in lowered:
        return 501, message
    return 400, message


class RequestParser:
    """Feeds bytes to llhttp and hands whole heads, body pieces and ends to a sink."""

    __slots__ = (
        "_sink",
        "_limits",
        "_parser",
        "_head",
        "_url",
        "_in_head",
        "_head_bytes",
        "_field_count",
        "_host_count",
        "_te",
        "_body_bytes",
        "_trailers",
        "_error",
        "_dead",
    )

    def __init__(self, sink: RequestSink, limits: HTTPLimits | None = None) -> None:
        self._sink = sink
        self._limits = limits or HTTPLimits()
        self._parser = httptools.HttpRequestParser(self)
        self._head = RequestHead()
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        self._field_count = 0
        self._host_count = 0
        self._te: bytes | None = None
        self._body_bytes = 0
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._error: ProtocolError | None = None
        self._dead = False

    @property
    def in_head(self) -> bool:
        """True while a request head is being received (or none has started)."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raise ``ProtocolError`` on anything the server must refuse."""
        if self._dead:
            raise ProtocolError(400, "data after a refused request")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # WSGI cannot take over the connection: serve the request as plain
            # HTTP and close afterwards, since llhttp stops parsing here.
            self._head.upgrade = True
            self._dead = True
            return
        except httptools.HttpParserCallbackError as exc:
            self._dead = True
            if self._error is not None:
                raise self._error from None
            raise ProtocolError(500, f"parser callback failed: {exc}") from exc
        except httptools.HttpParserError as exc:
            self._dead = True
            if self._error is not None:
                raise self._error from None
            status, reason = _status_for_llhttp_error(str(exc))
            raise ProtocolError(status, reason) from None
        if self._in_head:
            # llhttp buffers a partial field without calling back: bound it here.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head_size:
                self._dead = True
                if not self._field_count and len(self._url) >= self._limits.max_request_line:
                    raise ProtocolError(414, "request line too long")
                raise ProtocolError(431, "request head too large")

    def _fail(self, status: int, reason: str) -> None:
        self._error = ProtocolError(status, reason)
        raise self._error

    # llhttp callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head = RequestHead()
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        self._field_count = 0
        self._host_count = 0
        self._te = None
        self._body_bytes = 0
        self._trailers = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        if len(name) + len(value) > limits.max_field_size:
            self._fail(431, "header field too large")
        if not self._in_head:
            self._add_trailer(name, value)
            return
        self._field_count += 1
        if self._field_count > limits.max_fields:
            self._fail(431, "too many header fields")
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > limits.max_head_size:
            self._fail(431, "request head too large")
        self._head.headers.append((name, value))
        first = name[0] | 0x20
        if first == 0x68 and len(name) == 4 and name.lower() == b"host":  # 'h'
            self._host_count += 1
        elif first == 0x74 and name.lower() == b"transfer-encoding":  # 't'
            self._te = value if self._te is None else self._te + b"," + value

    def _add_trailer(self, name: bytes, value: bytes) -> None:
        if name.lower() in _FORBIDDEN_TRAILERS:
            self._fail(400, f"field not allowed in trailers: {name.decode('latin-1')}")
        if self._trailers is None:
            self._trailers = []
        self._trailers.append((name, value))
        if len(self._trailers) > self._limits.max_fields:
            self._fail(431, "too many trailer fields")

    def on_headers_complete(self) -> None:
        parser = self._parser
        head = self._head
        version = parser.get_http_version()
        if not version.startswith("1."):
            self._fail(505, f"HTTP version {version} not supported")
        head.version = version
        head.method = method = parser.get_method().decode("ascii")
        head.keep_alive = parser.should_keep_alive()
        self._parse_target(method)
        if version != "1.0" and self._host_count != 1:
            self._fail(400, "HTTP/1.1 request needs exactly one Host field")
        if self._host_count > 1:
            self._fail(400, "more than one Host field")
        content_length = None
        expect = None
        for name, value in head.headers:
            lname = name.lower()
            if lname == b"content-length":
                if content_length is not None:
                    self._fail(400, "more than one Content-Length")
                if not value.isdigit():
                    self._fail(400, "invalid Content-Length")
                content_length = int(value)
            elif lname == b"expect":
                expect = value
        if self._te is not None:
            self._check_transfer_encoding(self._te, version)
            if content_length is not None:
                self._fail(400, "both Transfer-Encoding and Content-Length")
            head.chunked = True
        elif content_length is not None:
            if content_length > self._limits.max_body_size:
                self._fail(413, "request body too large")
            head.content_length = content_length
        if expect is not None:
            if expect.lower() != b"100-continue":
                self._fail(417, "unsupported expectation")
            # A 1.0 client cannot handle an interim response (RFC 9110 10.1.1).
            head.expect_continue = version != "1.0" and head.has_body
        self._in_head = False
        self._sink.request_head(head)

    def _check_transfer_encoding(self, te: bytes, version: str) -> None:
        if version == "1.0":
            # RFC 9112 6.1: a 1.0 message with Transfer-Encoding has faulty framing.
            self._fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip().lower() for c in te.split(b",")]
        for coding in codings:
            if not coding or not _TCHARS.issuperset(coding):
                self._fail(400, "invalid Transfer-Encoding")
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            if any(c != b"chunked" for c in codings):
                self._fail(501, "unsupported transfer coding")
            self._fail(400, "chunked must be applied exactly once, last")
        if len(codings) > 1:
            self._fail(501, "unsupported transfer coding")

    def _parse_target(self, method: str) -> None:
        head = self._head
        target = self._url
        head.target = target
        if target[:1] == b"/":
            path = target
        elif target == b"*":
            if method != "OPTIONS":
                self._fail(400, "asterisk-form target outside OPTIONS")
            path = target
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            # absolute-form (RFC 9112 3.2.2): keep the path and query only.
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            question = rest.find(b"?")
            if slash < 0 or (0 <= question < slash):
                path = b"/" + (rest[question:] if question >= 0 else b"")
            else:
                path = rest[slash:]
        else:
            if method == "CONNECT":
                self._fail(405, "CONNECT is not supported")
            self._fail(400, "invalid request target")
        hash_at = path.find(b"#")
        if hash_at >= 0:
            self._fail(400, "fragment in request target")
        path, _, query = path.partition(b"?")
        head.path = path
        head.query = query

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_size:
            self._fail(413, "request body too large")
        self._sink.request_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._sink.request_end(self._trailers)
