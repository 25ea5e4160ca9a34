"""HTTP/1.1 request parsing on top of httptools (llhttp), sans-I/O.

The parser is fed bytes and calls a sink with a request head, body pieces and the
end of each message. Everything ambiguous is refused with a ``ProtocolError``
that carries the status to answer with; after an error the stream cannot be
trusted and the connection must be closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

import httptools
from mypy_extensions import mypyc_attr

from gantry.protocol.chunked import (
    CHUNKED_HEAD,
    DISCARD,
    FORBIDDEN_TRAILERS,
    ChunkedBodyFollows,
    ChunkedFraming,
    chunked_body_start,
)

__all__ = [
    "FieldBlockMemo",
    "HTTPLimits",
    "ProtocolError",
    "RequestHead",
    "RequestParser",
    "RequestSink",
    "VaryingField",
    "valid_host",
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

    # Class-level defaults: a head sets only what differs (this is per request).
    method: str = ""
    target: bytes = b""
    path: bytes = b""
    query: bytes = b""
    version: str = "1.1"
    keep_alive: bool = True
    expect_continue: bool = False
    content_length: int | None = None
    chunked: bool = False
    upgrade: bool = False
    #: an absolute-form target's host[:port], which replaces the Host field
    #: (RFC 9112 3.2.2); empty for the other forms
    authority: bytes = b""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    @property
    def has_body(self) -> bool:
        """Whether body bytes follow the head."""
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} HTTP/{self.version}>"


#: the parser's head between requests (never changed: llhttp's callbacks and the fast
#: path each begin a head of their own)
_NO_HEAD: Final = RequestHead()


class RequestSink(Protocol):
    """What the parser calls as a request goes by."""

    def request_head(self, head: RequestHead) -> None:
        """A complete head; body pieces (if any) follow."""

    def request_body(self, data: bytes) -> None:
        """A piece of the decoded body."""

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """The message is complete; ``trailers`` are the chunked trailer fields, if any."""


_TCHARS: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
}


#: the longest method token considered for 501; a longer run is refused as garbage
_MAX_METHOD: Final = 64

# A plain request that llhttp would parse to the same head, with nothing for it to decide:
# GET or HEAD, an origin-form target of RFC 3986 path and query characters (no fragment),
# HTTP/1.0 or 1.1, fields "name: value" of a token name, one space, and a value of visible
# ASCII with spaces or tabs inside (nothing to trim, no obs-fold, no obs-text, no control
# byte). Which fields are there is checked in _simple; anything else goes to llhttp.
_SIMPLE: Final = re.compile(
    rb"(GET|HEAD) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*) HTTP/1\.([01])\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]++: [!-~]++(?:[ \t]++[!-~]++)*+\r\n)++)\r\n"
)
#: what a plain request asks, besides a GET over HTTP/1.1 (FieldBlockMemo.kind)
_KIND_HEAD: Final = 1
_KIND_1_0: Final = 2
#: the fields a plain request is read for: a Host, one Connection (keep-alive or close),
#: and none that asks llhttp for a body's framing, an upgrade or an expectation
_WATCHED: Final = re.compile(
    rb"\n(?:host|connection|content-length|content-type|transfer-encoding|expect|upgrade"
    rb"|proxy-connection):"
)
#: a Host value (RFC 9110 7.2, RFC 3986 3.2.2): a reg-name (unreserved, sub-delims,
#: pct-encoded) or an IP literal in brackets, and an optional port; ".." is refused
#: besides (nginx does too): the host names a directory in some setups
_HOST_VALUE: Final = re.compile(
    rb"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
    rb"|\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\])"
    rb"(?::[0-9]*)?"
)
_HOST_ONLY: Final = [b"\nhost:"]


#: the common Host: a name or IPv4 address of plain characters and a port (fast to match)
_HOST_PLAIN: Final = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=]*+(?::[0-9]*+)?+")


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a valid Host field value (or absolute-form authority)."""
    if _HOST_PLAIN.fullmatch(value) is None and _HOST_VALUE.fullmatch(value) is None:
        return False
    return b".." not in value


def _status_for_llhttp_error(message: str) -> tuple[int, str]:
    # llhttp's Transfer-Encoding errors are framing errors (chunked not final):
    # RFC 9112 6.3 asks for 400; unknown codings are refused with 501 by us.
    return 400, message


def _split_origin_form(head: RequestHead, target: bytes) -> None:
    """``head``'s target, path and query from an origin-form target ("/path?query")."""
    head.target = target
    question = target.find(b"?")
    if question < 0:
        head.path = target
    else:
        head.path = target[:question]
        head.query = target[question + 1 :]


class VaryingField:
    """A request the fast path saw twice with one field's value changed (a proxy's
    X-Forwarded-For, a request id): everything around that value, as bytes to compare
    a next request with, and the fields with the value's place to fill. Made whole and
    never changed (a memo shares it)."""

    __slots__ = ("line", "before", "after", "index", "name", "fields", "option")

    def __init__(
        self,
        line: bytes,
        fields: list[tuple[bytes, bytes]],
        index: int,
        option: int,
    ) -> None:
        #: the request line it came with (the memo's line, kind and split target serve
        #: it while the memo's line is this one)
        self.line = line
        name = fields[index][0]
        #: the request up to the value (line, the fields before, "Name: "), and after it
        #: (CRLF, the fields after, the blank line)
        self.before = line + b"".join([n + b": " + v + b"\r\n" for n, v in fields[:index]])
        self.before += name + b": "
        self.after = b"\r\n" + b"".join([n + b": " + v + b"\r\n" for n, v in fields[index + 1 :]])
        self.after += b"\r\n"
        self.index = index
        self.name = name
        self.fields = fields  # never changed: heads get copies
        self.option = option


#: a field value the fast path takes (as _SIMPLE's): visible ASCII, spaces or tabs inside
_FIELD_VALUE: Final = re.compile(rb"[!-~]++(?:[ \t]++[!-~]++)*+")
#: fields whose value _read_block reads (a change of theirs is never a varying value)
_READ_FIELDS: Final = frozenset((b"host", b"connection"))


class FieldBlockMemo:
    """What the fast path read last: a field block, its fields and its Connection option
    (0 none, 1 keep-alive, 2 close), the last Host found valid (and its text: the front
    routes by it, as one str object that keeps its hash), and the request line that
    came with the block, what it asks (_KIND_* bits) and its target, path and query split;
    and, once one field's value changed between two requests of the same line, the rest
    of them (``varying``: a proxy's requests differ by X-Forwarded-For alone). A keep-alive
    client sends the same block and line again and again, and so does each new connection
    of clients of one kind: parsers with the same limits may share one (a worker's
    connections do). Every part is compared before it is used, never trusted."""

    __slots__ = (
        "block", "fields", "option", "host", "host_text", "line", "kind", "target", "path",
        "query", "varying",
    )  # fmt: skip

    def __init__(self) -> None:
        self.block = b""
        self.fields: list[tuple[bytes, bytes]] = []  # never changed: heads get copies
        self.option = 0
        self.host = b"\0"
        self.host_text = "\0"  # always host decoded as latin-1
        self.line = b""
        self.kind = 0
        # the line's target, path and query: the same objects again for the same line (no
        # slices; a bytes object keeps its hash for the route lookup)
        self.target = b""
        self.path = b""
        self.query = b""
        self.varying: VaryingField | None = None


@mypyc_attr(allow_interpreted_subclasses=True)  # tests watch it through a subclass
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
        "_fields_bytes",
        "_field_count",
        "_host_count",
        "_te",
        "_content_length",
        "_expect",
        "_body_bytes",
        "_trailers",
        "_error",
        "_dead",
        "_start_chunk",
        "_connection_seen",
        "_content_type_seen",
        "_memo",
        "_boundary",
        "_completed",
        "_method_start",
        "_pending_method",
        "_chunked",
        "_cut_head",
        "_cut_tail",
        "_cut_received",
        "_simple_limit",
        "_whole",
    )

    def __init__(
        self,
        sink: RequestSink,
        limits: HTTPLimits | None = None,
        memo: FieldBlockMemo | None = None,
    ) -> None:
        self._sink = sink
        self._limits = limits or HTTPLimits()
        # llhttp only once a request needs it (a body, an odd field, a cut head): the fast
        # path takes the plain GETs of most keep-alive clients, and an idle connection
        # then holds no llhttp state (about 900 bytes with its bound callbacks)
        self._parser: httptools.HttpRequestParser | None = None
        self._head = _NO_HEAD
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        self._fields_bytes = 0
        self._field_count = 0
        self._host_count = 0
        self._te: bytes | None = None
        self._content_length: bytes | None = None
        self._expect: bytes | None = None
        self._body_bytes = 0
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._error: ProtocolError | None = None
        self._dead = False
        self._start_chunk: bytes | None = None
        self._connection_seen = False
        self._content_type_seen = False
        # what the fast path read last (shared by the connections of a worker: clients of
        # one kind send the same fields and line on each new connection too)
        self._memo = memo if memo is not None else FieldBlockMemo()
        # True between messages: the next byte fed starts a new request line
        self._boundary = True
        self._completed = 0
        # The bytes of a request line whose method has not ended yet (it spans feeds),
        # and an unknown method still waiting for its SP: 501 and 400 differ by it.
        self._method_start: bytes | None = None
        self._pending_method: bytes | None = None
        # Set while a chunked body is read: its size lines go through _feed_chunked.
        self._chunked: ChunkedFraming | None = None
        # Where the last llhttp call stopped inside a message: its head, the last
        # bytes of a cut head, or the body bytes received (used by _chunked_body_start).
        self._cut_head: RequestHead | None = None
        self._cut_tail = b""
        self._cut_received: int | None = None
        # A whole request at most this long cannot exceed a limit but the field count,
        # which _simple checks (each field counts 4 bytes past its name and value).
        limits = self._limits
        self._simple_limit = min(
            limits.max_request_line,
            limits.max_field_size,
            limits.max_head_size - limits.max_fields,
        )
        # the bytes of the request being handed when one feed held it whole (the fast
        # path), while the sink has it: b"" otherwise
        self._whole = b""

    def _new_llhttp(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # Accept any one-digit version so HTTP/1.2 is served as 1.1 and HTTP/2.0
        # or 3.0 get 505 from us (RFC 9110 6.2) rather than llhttp's 400.
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def close(self) -> None:
        """The connection is gone: let go of llhttp (it holds this parser's bound
        methods) and of the sink (which holds this parser), so that reference counting
        frees all three; anything fed after this is refused."""
        self._dead = True
        self._pending_method = None
        self._sink = DISCARD
        self._parser = None

    @property
    def at_boundary(self) -> bool:
        """True between messages: no byte of a next request has arrived yet."""
        return self._boundary

    @property
    def whole_request(self) -> bytes:
        """While the sink is handed a request that came whole in one feed, and alone:
        that feed's bytes (a connection may answer the same bytes again as it did this
        time); b"" for any other."""
        return self._whole

    @property
    def in_head(self) -> bool:
        """True while a request head is being received (or none has started)."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raise ``ProtocolError`` on anything the server must refuse."""
        if self._boundary and len(data) <= self._simple_limit and not self._dead:
            # One whole plain request, as most keep-alive clients send: no llhttp.
            memo = self._memo
            line, block = memo.line, memo.block
            if (
                len(data) == len(line) + len(block) + 2
                and line
                and data.startswith(line)
                and data.startswith(block, len(line))
                and data.endswith(b"\r\n")
            ):
                # the last request taken on this path again, byte for byte
                self._hand(memo.kind, line, True, list(memo.fields), memo.option, data)
                return
            varying = memo.varying
            if varying is not None and varying.line == line:
                before, after = varying.before, varying.after
                if (
                    len(data) > len(before) + len(after)
                    and data.startswith(before)
                    and data.endswith(after)
                ):
                    value = data[len(before) : len(data) - len(after)]
                    if _FIELD_VALUE.fullmatch(value) is not None:
                        # the same request but for that one value (checked as _SIMPLE
                        # would: no CR or LF in it, so no field hides in it)
                        fields = list(varying.fields)
                        fields[varying.index] = (varying.name, value)
                        self._hand(memo.kind, line, True, fields, varying.option, data)
                        return
            match = _SIMPLE.fullmatch(data)
            if match is not None and self._simple(match):
                return
        if self._pending_method is not None:
            self._refuse_method(self._pending_method + data)
            return
        if self._dead:
            raise ProtocolError(400, "data after a refused request")
        if self._chunked is not None:
            # The rest after the chunked message, if any, starts a new request.
            data = self._feed_chunked(data)
            if not data:
                return
        # One pass per stretch between chunked bodies (a loop, not recursion:
        # a feed may hold many pipelined chunked requests).
        while True:
            at_message_start = self._boundary
            start = data if at_message_start else self._method_start
            if start is not None and not at_message_start:
                start += data
            # httptools' version and method getters cost more than reading the
            # request line again; llhttp has validated it by the time we look.
            self._start_chunk = data if at_message_start else None
            completed = self._completed
            parser = self._parser
            if parser is None:
                parser = self._parser = self._new_llhttp()
            try:
                parser.feed_data(data)
            except httptools.HttpParserInvalidMethodError:
                self._dead = True
                if start is None or self._completed != completed:
                    # The method began after another message in this feed: where is unknown.
                    raise ProtocolError(400, "invalid method") from None
                self._refuse_method(start)
                return
            except httptools.HttpParserUpgrade:
                # WSGI cannot take over the connection: serve the request as plain
                # HTTP and close afterwards, since llhttp stops parsing here.
                self._head.upgrade = True
                self._dead = True
                return
            except httptools.HttpParserError as exc:
                # on_headers_complete sets _chunked (None until then) as it stops llhttp.
                if self._chunked is None:
                    raise self._refusal(exc) from None
                self._method_start = None
                data = self._start_chunked_body(data, at_message_start, self._completed - completed)
                if not data:
                    return
                continue
            if (
                not self._boundary
                and self._in_head
                and start is not None
                and len(start) <= _MAX_METHOD
                and b" " not in start
            ):
                # A request line cut inside its method keeps its start for the next feed.
                self._method_start = start
            elif self._method_start is not None:
                self._method_start = None
            if not self._boundary:
                self._cut_head = self._head
                if not self._in_head:
                    self._cut_received = self._body_bytes
                    return
                self._cut_received = None
                self._cut_tail = (self._cut_tail + data[-3:])[-3:]
                # llhttp buffers a partial field without calling back: bound it here.
                # A head that began inside this chunk after another message ended
                # is counted from the next chunk on (its share here is unknown).
                if self._completed == completed:
                    self._head_bytes += len(data)
                if self._head_bytes > self._limits.max_head_size:
                    self._dead = True
                    if not self._field_count and len(self._url) >= self._limits.max_request_line:
                        raise ProtocolError(414, "request line too long")
                    raise ProtocolError(431, "request head too large")
            return

    def _simple(self, match: re.Match[bytes]) -> bool:
        """Hand the sink the request ``_SIMPLE`` matched, as llhttp's callbacks would;
        False (nothing done) when its fields need llhttp or our checks: not one Host, a
        body's framing, Expect, Upgrade, a Connection other than one keep-alive or close,
        too many fields."""
        block = match[4]
        memo = self._memo
        line = match.string[: match.start(4)]
        if block != memo.block:
            before = memo.fields
            if self._read_block(block) < 0:
                return False
            if line == memo.line and before:
                self._learn_varying(line, before)
        kind = (_KIND_HEAD if match[1] == b"HEAD" else 0) | (_KIND_1_0 if match[3] == b"0" else 0)
        self._hand(kind, line, False, list(memo.fields), memo.option, match.string)
        return True

    def _learn_varying(self, line: bytes, before: list[tuple[bytes, bytes]]) -> None:
        """The memo's block changed under the same request ``line``: when one field's
        value alone changed (the same names in the same order, not a field _read_block
        reads), the memo keeps the request around it (FieldBlockMemo.varying)."""
        memo = self._memo
        fields = memo.fields
        if len(fields) != len(before):
            return
        index = -1
        for n, (name, value) in enumerate(fields):
            old_name, old_value = before[n]
            if name != old_name:
                return
            if value != old_value:
                if index >= 0:
                    return  # two fields changed: not one varying value
                index = n
        if index < 0 or fields[index][0].lower() in _READ_FIELDS:
            return
        memo.varying = VaryingField(line, fields, index, memo.option)

    def _hand(
        self,
        kind: int,
        line: bytes,
        repeat: bool,
        fields: list[tuple[bytes, bytes]],
        option: int,
        whole: bytes,
    ) -> None:
        """Hand the sink a plain request: ``line`` its request line (CRLF-ended), ``kind``
        what it asks (_KIND_* bits), ``fields`` its fields (a list of its own: the head
        is the handlers' to change) and ``option`` its Connection's (see _read_block);
        ``repeat``: the line is the last one handed, whose target the memo holds split;
        ``whole``: the feed that held it (whole_request)."""
        memo = self._memo
        keep_alive = not kind & _KIND_1_0
        if option:
            keep_alive = option == 1
        head = self._head = RequestHead()
        head.headers = fields
        head.method = "HEAD" if kind & _KIND_HEAD else "GET"
        if kind & _KIND_1_0:
            head.version = "1.0"
        if not keep_alive:
            head.keep_alive = False
        if repeat:
            head.target = memo.target
            head.path = memo.path
            head.query = memo.query
        else:
            # between "GET " or "HEAD " and " HTTP/1.x\r\n"
            _split_origin_form(head, line[5:-11] if kind & _KIND_HEAD else line[4:-11])
            # the line and its split go in together (another parser may share the memo)
            memo.line, memo.kind = line, kind
            memo.target, memo.path, memo.query = head.target, head.path, head.query
        self._completed += 1
        self._whole = whole
        try:
            self._sink.request_head(head)
            self._sink.request_end(None)
        except Exception as exc:  # as llhttp reports a failed callback
            self._dead = True
            self._whole = b""
            raise ProtocolError(500, f"parser callback failed: {exc}") from exc
        self._whole = b""
        # the sink has it: an idle connection does not keep the last request's head here
        self._head = _NO_HEAD

    def _read_block(self, block: bytes) -> int:
        """Read a fast-path field block into the memo: its Connection option
        (0 none, 1 keep-alive, 2 close), or -1 if llhttp must read it (see _simple)."""
        lowered = b"\n" + block.lower()
        watched = _WATCHED.findall(lowered)
        option = 0
        if watched != _HOST_ONLY:
            if sorted(watched) != [b"\nconnection:", b"\nhost:"]:
                return -1
            value = block[block.lower().index(b"connection: ") + 12 :]
            value = value[: value.index(b"\r\n")].lower()
            if value == b"keep-alive":
                option = 1
            elif value == b"close":
                option = 2
            else:
                return -1
        host_at = lowered.index(b"\nhost: ") + 6  # in block (lowered has one byte more)
        host = block[host_at : block.index(b"\r", host_at)]
        memo = self._memo
        if host != memo.host:
            # clients send the same Host request after request: checked once
            if not valid_host(host):
                return -1  # llhttp's path refuses it
            memo.host = host
            memo.host_text = host.decode("latin-1")
        lines = block.split(b"\r\n")
        lines.pop()
        if len(lines) > self._limits.max_fields:
            return -1
        fields: list[tuple[bytes, bytes]] = []
        for line in lines:
            name, _, value = line.partition(b": ")
            fields.append((name, value))
        memo.block = block
        memo.fields = fields
        memo.option = option
        return option

    def _refusal(self, exc: httptools.HttpParserError) -> ProtocolError:
        """The refusal for an llhttp error; the connection is done."""
        self._dead = True
        if self._error is not None:
            return self._error
        if isinstance(exc, httptools.HttpParserCallbackError):
            return ProtocolError(500, f"parser callback failed: {exc}")
        status, reason = _status_for_llhttp_error(str(exc))
        return ProtocolError(status, reason)

    def _refuse_chunk(self, reason: str) -> None:
        self._dead = True
        raise ProtocolError(400, reason)

    # chunked bodies ----------------------------------------------------------

    def _start_chunked_body(self, data: bytes, at_message_start: bool, completed: int) -> bytes:
        """llhttp stopped after a chunked head in ``data``: read its body from here on.

        Returns the bytes after the end of the chunked message (empty if none yet).

        llhttp cannot be resumed, so a fresh parser is put at the start of a chunked
        body by feeding it a stand-in head with the sink muted.
        """
        cut_length = None
        if not at_message_start:
            # This call began inside a message cut by the previous one.
            assert self._cut_head is not None
            cut_length = self._cut_head.content_length or 0
        offset = chunked_body_start(
            data,
            completed,
            cut_length=cut_length,
            cut_tail=self._cut_tail,
            cut_received=self._cut_received,
        )
        if offset < 0:
            self._refuse_chunk("chunked body start not found")
        head, sink = self._head, self._sink
        self._sink = DISCARD
        self._start_chunk = None
        parser = self._parser = self._new_llhttp()
        try:
            parser.feed_data(CHUNKED_HEAD)
        finally:
            self._head, self._sink = head, sink
        return self._feed_chunked(data[offset:])

    def _feed_chunked(self, data: bytes) -> bytes:
        """Feed chunked-body bytes to llhttp with each chunk-size line checked and bared.

        Returns what follows the end of the message in ``data``: a new request.
        """
        framing = self._chunked
        assert framing is not None
        out, rest, refusal = framing.scan(data)
        if framing.trailer_size > self._limits.max_head_size:
            # llhttp would hold an unfinished trailer field whole: bound the section
            # as a head is bounded.
            self._dead = True
            raise ProtocolError(431, "trailer section too large")
        self._execute(out)
        if refusal is not None:
            self._refuse_chunk(refusal)
        if rest is None:
            return b""
        self._chunked = None
        if not self._boundary:
            self._refuse_chunk("chunked message did not end after its trailer section")
        return rest

    def _execute(self, pieces: list[bytes]) -> None:
        """Feed ``pieces`` of a chunked body (with bare size lines) to llhttp."""
        if not pieces:
            return
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        parser = self._parser
        assert parser is not None  # a chunked body is read by the parser that began it
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise self._refusal(exc) from None

    def _refuse_method(self, start: bytes) -> None:
        """Refuse a method llhttp does not know: 501 for a token (RFC 9110 9.1), else 400.

        The verdict waits for the SP that ends the token when it has not arrived yet.
        """
        space = start.find(b" ")
        token = start if space < 0 else start[:space]
        if space == 0 or not _TCHARS.issuperset(token) or len(token) > _MAX_METHOD:
            self._pending_method = None
            raise ProtocolError(400, "invalid method")
        if space < 0:
            self._pending_method = token
            return
        self._pending_method = None
        raise ProtocolError(501, f"method {token.decode('ascii')} not implemented")

    def _fail(self, status: int, reason: str) -> None:
        self._error = ProtocolError(status, reason)
        raise self._error

    # llhttp callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self._boundary = False
        self._head = RequestHead()
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        self._fields_bytes = 0
        self._field_count = 0
        self._host_count = 0
        self._te = self._content_length = self._expect = None
        self._connection_seen = False
        self._content_type_seen = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        if value and value[-1] in (0x20, 0x09):
            # llhttp strips leading OWS only; RFC 9110 5.5 excludes trailing OWS too.
            value = value.rstrip(b" \t")
        size = len(name) + len(value)
        if size > limits.max_field_size:
            self._fail(431, "header field too large")
        if not self._in_head:
            self._add_trailer(name, value)
            return
        self._field_count += 1
        if self._field_count > limits.max_fields:
            self._fail(431, "too many header fields")
        self._fields_bytes += size + 4
        if self._fields_bytes > limits.max_head_size:
            self._fail(431, "request head too large")
        self._head.headers.append((name, value))
        first = name[0] | 0x20
        # Dispatch on the first letter so most fields cost one comparison.
        if first == 0x68:  # h
            if len(name) == 4 and name.lower() == b"host":
                self._host_count += 1
                if not valid_host(value):
                    self._fail(400, "invalid Host")
        elif first == 0x74:  # t
            if name.lower() == b"transfer-encoding":
                self._te = value if self._te is None else self._te + b"," + value
        elif first == 0x63:  # c
            if len(name) == 14 and name.lower() == b"content-length":
                if self._content_length is not None:
                    self._fail(400, "more than one Content-Length")
                self._content_length = value
            elif len(name) == 10:
                self._connection_seen = True  # "connection": llhttp decides keep-alive
            elif len(name) == 12 and name.lower() == b"content-type":
                # serve read the last and the front the first: refuse, as gunicorn does
                if self._content_type_seen:
                    self._fail(400, "more than one Content-Type")
                self._content_type_seen = True
        elif first == 0x65:  # e
            if len(name) == 6 and name.lower() == b"expect":
                self._expect = value

    def _add_trailer(self, name: bytes, value: bytes) -> None:
        if name.lower() in FORBIDDEN_TRAILERS:
            self._fail(400, f"field not allowed in trailers: {name.decode('latin-1')}")
        if self._trailers is None:
            self._trailers = []
        self._trailers.append((name, value))
        if len(self._trailers) > self._limits.max_fields:
            self._fail(431, "too many trailer fields")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # llhttp is calling
        head = self._head
        version = method = None
        chunk = self._start_chunk
        if chunk is not None:
            self._start_chunk = None
            line_end = chunk.find(b"\r\n")
            if line_end > 9 and chunk.startswith(b" HTTP/1.", line_end - 9):
                minor = chunk[line_end - 1]
                version = "1.1" if minor == 0x31 else "1.0" if minor == 0x30 else None
                method = _METHODS.get(chunk[: chunk.find(b" ")])
        if version is None:
            version = parser.get_http_version()
            if not version.startswith("1."):
                self._fail(505, f"HTTP version {version} not supported")
            if version != "1.0":
                version = "1.1"  # a higher 1.x minor is served as 1.1 (RFC 9110 6.2)
        head.version = version
        if method is None:
            method = parser.get_method().decode("ascii")
        head.method = method
        if version == "1.1" and not self._connection_seen:
            pass  # persistent by default (RFC 9112 9.3); the class default is True
        else:
            head.keep_alive = parser.should_keep_alive()
        target = self._url
        # 35 is "#": an int, as `bytes in bytes` first tries its operand as an int (and
        # raises and clears a TypeError each time)
        if target[:1] == b"/" and 35 not in target:
            _split_origin_form(head, target)  # by far the most common form
        else:
            head.target = target
            self._parse_target(method)
        if self._host_count != 1 and (version != "1.0" or self._host_count > 1):
            self._fail(400, "an HTTP/1.1 request needs exactly one Host field")
        if parser.should_upgrade():
            # said with the head, not only when llhttp stops after the request: the
            # front passes a WebSocket upgrade on, and no request follows it here
            head.upgrade = True
        if self._te is not None or self._content_length is not None or self._expect is not None:
            self._decide_framing(head, version)
            self._in_head = False
            self._sink.request_head(head)
            if head.chunked and self._chunked is None:
                # Chunk-size lines need checks llhttp cannot make: stop it here.
                self._chunked = ChunkedFraming()
                raise ChunkedBodyFollows
            return
        self._in_head = False
        self._sink.request_head(head)

    def _decide_framing(self, head: RequestHead, version: str) -> None:
        """The one place a request body's framing is chosen (RFC 9112 6.3)."""
        content_length = None
        if self._content_length is not None:
            if not self._content_length.isdigit():
                self._fail(400, "invalid Content-Length")
            content_length = int(self._content_length)
        if self._te is not None:
            self._check_transfer_encoding(self._te, version)
            if content_length is not None:
                self._fail(400, "both Transfer-Encoding and Content-Length")
            head.chunked = True
            self._body_bytes = 0
            self._trailers = None
        elif content_length is not None:
            if content_length > self._limits.max_body_size:
                self._fail(413, "request body too large")
            head.content_length = content_length
            self._body_bytes = 0
        parser = self._parser
        if head.has_body and parser is not None and parser.should_upgrade():
            # llhttp stops at the head of an Upgrade request, so its body would be
            # lost; WSGI cannot switch protocols anyway.
            self._fail(400, "Upgrade request with a body is not supported")
        expect = self._expect
        if expect is not None:
            if expect.lower() != b"100-continue":
                self._fail(417, "unsupported expectation")
            # A 1.0 client cannot handle an interim response (RFC 9110 10.1.1).
            head.expect_continue = version != "1.0" and head.has_body

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
        if target[:1] == b"/":
            path = target
        elif target == b"*":
            if method != "OPTIONS":
                self._fail(400, "asterisk-form target outside OPTIONS")
            path = target
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            # absolute-form (RFC 9112 3.2.2): the path and query, and the authority,
            # which stands for the Host field.
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            question = rest.find(b"?")
            if slash < 0 or (0 <= question < slash):
                path = b"/" + (rest[question:] if question >= 0 else b"")
                authority = rest if question < 0 else rest[:question]
            else:
                path = rest[slash:]
                authority = rest[:slash]
            authority = authority.rpartition(b"@")[2]  # userinfo is not part of the host
            if not authority or not valid_host(authority):
                self._fail(400, "invalid authority in the request target")
            head.authority = authority
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
        self._boundary = True
        self._completed += 1
        self._in_head = True
        self._head_bytes = 0
        trailers = self._trailers
        self._trailers = None
        self._sink.request_end(trailers)
