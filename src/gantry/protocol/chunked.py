"""Chunked request bodies (RFC 9112 7.1): the chunk-size line checks llhttp cannot make, sans-I/O.

llhttp refuses BWS around ';' and '=' in chunk extensions (RFC 9112 7.1.1 allows it;
RFC 9110 5.6.3 says a recipient MUST parse and remove it) and accepts an empty
chunk-ext-name. So ``RequestParser`` stops llhttp after a chunked head
(:class:`ChunkedBodyFollows`), finds where the body begins (:func:`chunked_body_start`),
seeds a fresh llhttp at a chunked body (:data:`CHUNKED_HEAD`, fed with the sink muted
by :data:`DISCARD`) and passes the body through :meth:`ChunkedFraming.scan`, which
checks each chunk-size line and hands llhttp the bare size. llhttp still checks
chunk data CRLFs, trailers and everything after.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CHUNKED_HEAD",
    "DISCARD",
    "FORBIDDEN_TRAILERS",
    "ChunkedBodyFollows",
    "ChunkedFraming",
    "chunked_body_start",
    "head_end",
]

# chunk = chunk-size [ chunk-ext ] CRLF (RFC 9112 7.1, 7.1.1), with BWS only around
# ';' and '=': llhttp refuses that BWS, so chunk-size lines are checked here and
# llhttp is fed the bare size.
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_EXT: Final = (
    rb"[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED_STRING + rb"))?"
)
_CHUNK_SIZE_LINE: Final = re.compile(rb"0*([0-9A-Fa-f]{1,16})(?:" + _CHUNK_EXT + rb")*\r\n")
#: a chunk-size line longer than this (extensions included) is refused
MAX_CHUNK_LINE: Final = 4096
#: what a fresh llhttp parser is fed to put it where a chunked body begins
CHUNKED_HEAD: Final = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
# Content-Length of a head llhttp has already accepted (one field, digits; no folding)
_CONTENT_LENGTH_FIELD: Final = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)


#: Fields that may never come in a trailer section (RFC 9110 6.5.1): framing,
#: routing and control data must be in the head.
FORBIDDEN_TRAILERS: Final = frozenset(
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


class ChunkedBodyFollows(Exception):
    """Raised from on_headers_complete to stop llhttp where a chunked body begins."""


class _DiscardSink:
    """Swallows the callbacks of the stand-in head fed to a fresh llhttp parser."""

    def request_head(self, head: object) -> None:
        """Drop it."""

    def request_body(self, data: bytes) -> None:
        """Drop it."""

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """Drop it."""


#: the sink in place while :data:`CHUNKED_HEAD` is fed
DISCARD: Final = _DiscardSink()


class ChunkedFraming:
    """How far a chunked body has come: inside a size line, chunk data, or the trailers."""

    __slots__ = ("line", "remaining", "trailer_tail", "trailer_size")

    def __init__(self) -> None:
        #: the start of a chunk-size line cut by a feed
        self.line = b""
        #: chunk-data bytes plus its CRLF still to come
        self.remaining = 0
        #: once in the trailer section, its last bytes fed (to find CRLF CRLF across feeds)
        self.trailer_tail: bytes | None = None
        #: bytes of the trailer section seen so far (the parser bounds it: llhttp
        #: holds a field until its end)
        self.trailer_size = 0

    def scan(self, data: bytes) -> tuple[list[bytes], bytes | None, str | None]:
        """Check the chunk-size lines in ``data`` and bare them for llhttp.

        Returns the pieces to feed llhttp, the bytes after the end of the message
        (``None`` while it has not ended), and the reason to refuse the body (then
        the pieces are what came before the bad line).
        """
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            if self.trailer_tail is not None:
                # Trailer fields go to llhttp as they are; only the empty line that
                # ends them is looked for here.
                segment = data[pos:] if pos else data
                stop = head_end(segment, tail=self.trailer_tail)
                if stop < 0:
                    out.append(segment)
                    self.trailer_tail = (self.trailer_tail + segment)[-3:]
                    self.trailer_size += len(segment)
                    break
                self.trailer_size += stop
                out.append(segment[:stop])
                return out, segment[stop:], None
            if self.remaining:
                take = min(self.remaining, end - pos)
                out.append(data[pos : pos + take])
                self.remaining -= take
                pos += take
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self.line += data[pos:]
                if len(self.line) > MAX_CHUNK_LINE:
                    return out, None, "chunk-size line too long"
                break
            line = self.line + data[pos : newline + 1]
            self.line = b""
            pos = newline + 1
            match = _CHUNK_SIZE_LINE.fullmatch(line) if len(line) <= MAX_CHUNK_LINE else None
            if match is None:
                if len(line) > MAX_CHUNK_LINE:
                    return out, None, "chunk-size line too long"
                return out, None, "invalid chunk-size line"
            size = int(match[1], 16)
            out.append(b"%x\r\n" % size)
            if size:
                self.remaining = size + 2
            else:
                self.trailer_tail = b"\r\n"
        return out, None, None


def head_end(data: bytes, start: int = 0, tail: bytes = b"") -> int:
    """Offset in ``data`` just past the CRLF CRLF that ends a head llhttp accepted, or -1.

    ``tail`` is the end of the same head's bytes fed before ``data`` (then ``start`` is 0).
    """
    # llhttp (strict) allows no bare CR or LF in a head, so its first empty line ends it.
    if tail:
        found = (tail + data).find(b"\r\n\r\n")
        return found if found < 0 else found + 4 - len(tail)
    found = data.find(b"\r\n\r\n", start)
    return found if found < 0 else found + 4


def chunked_body_start(
    data: bytes,
    completed: int,
    *,
    cut_length: int | None,
    cut_tail: bytes,
    cut_received: int | None,
) -> int:
    """Where in ``data`` the body of the chunked head llhttp just stopped at begins, or -1.

    ``completed`` messages ended in ``data`` before it; none of them was chunked
    (that would have stopped llhttp), so each ends after its head and its
    Content-Length bytes. llhttp has accepted every head up to here. When ``data``
    began inside a message cut by the previous feed, ``cut_length`` is that message's
    Content-Length (0 if none) and ``cut_tail`` the last bytes of its head, or
    ``cut_received`` the body bytes it had received; ``cut_length`` is None otherwise.
    -1 means llhttp accepted a head that is not there: trust nothing.
    """
    pos = 0
    if cut_length is not None:
        if cut_received is None:
            pos = head_end(data, tail=cut_tail)
            if pos < 0:
                return -1
            if not completed:
                return pos
            pos += cut_length
        else:
            pos = cut_length - cut_received
        completed -= 1
    while True:
        # llhttp skips empty lines before a request line.
        while data[pos : pos + 1] in (b"\r", b"\n"):
            pos += 1
        end = head_end(data, pos)
        if end < 0:
            return -1
        if not completed:
            return end
        field = _CONTENT_LENGTH_FIELD.search(data, pos, end)
        pos = end + (int(field[1]) if field is not None else 0)
        completed -= 1
