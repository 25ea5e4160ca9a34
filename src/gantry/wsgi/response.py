"""The response side of PEP 3333: ``start_response``, framing and ``wsgi.file_wrapper``."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, Final

from gantry.http.head import HeadDefaults

__all__ = ["FileWrapper", "Response", "ResponseError", "HeadDefaults", "NO_BODY_STATUSES"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# Statuses that never carry a body (RFC 9110 6.4.1).
NO_BODY_STATUSES: Final = frozenset({204, 304})

# Hop-by-hop fields belong to the connection, which the server manages itself.
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
)

_STATUS_LINES: Final[dict[str, bytes]] = {}
_STATUS_CODES: Final[dict[str, int]] = {}

# Encoded header lines by (name, value): apps send the same few fields again
# and again, so each is checked and encoded once. Bounded in count and size.
_HEADER_LINES: Final[dict[tuple[str, str], bytes | int]] = {}
_HEADER_CACHE_MAX: Final = 4096
_HEADER_CACHE_VALUE_MAX: Final = 256


def _status_line(status: str) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if "\r" in status or "\n" in status:
            raise ResponseError("CR or LF in status")
        try:
            line = f"HTTP/1.1 {status}\r\n".encode("latin-1")
        except UnicodeEncodeError:
            raise ResponseError("status must be latin-1") from None
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[status] = line
    return line


_LENGTH_LINES: Final[dict[int, bytes]] = {}


def _length_line(length: int) -> bytes:
    line = _LENGTH_LINES.get(length)
    if line is None:
        line = b"Content-Length: %d\r\n" % length
        if len(_LENGTH_LINES) < _HEADER_CACHE_MAX:
            _LENGTH_LINES[length] = line
    return line


def _content_length(pair: tuple[str, str]) -> int:
    """The app's Content-Length as a number (remembered for the next identical field)."""
    value = pair[1]
    if not value.isdigit() or not value.isascii():
        raise ResponseError(f"invalid Content-Length {value!r}")
    length = int(value)
    if len(_HEADER_LINES) < _HEADER_CACHE_MAX:
        _HEADER_LINES[pair] = length
    return length


def _header_line(pair: tuple[str, str]) -> bytes:
    """``name: value`` CRLF, refusing CR/LF (response splitting) and non-latin-1 text."""
    name, value = pair
    if type(name) is not str or type(value) is not str:
        raise ResponseError(f"header {pair!r} is not a pair of strings")
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise ResponseError(f"invalid response header {name!r}")
    try:
        line = f"{name}: {value}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise ResponseError("response headers must be latin-1") from None
    if len(value) <= _HEADER_CACHE_VALUE_MAX and len(_HEADER_LINES) < _HEADER_CACHE_MAX:
        _HEADER_LINES[(name, value)] = line
    return line


class ResponseError(Exception):
    """The application broke the WSGI contract (bad status, headers, or lengths)."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks; sent with sendfile when a real file."""

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.blksize
        while True:
            data = read(size)
            if not data:
                return
            yield data

    def fileno(self) -> int | None:
        """The OS file descriptor when the file is a regular file, else None."""
        try:
            fd = self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
        except OSError:
            return None
        return fd

    def close(self) -> None:
        """Close the file, as PEP 3333 asks of the wrapper's ``close``."""
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class Response:
    """State of one WSGI response: what ``start_response`` was given and how it is framed."""

    # Class-level defaults: one response per request, so set only what differs.
    status: str | None = None
    status_code = 0
    #: set by start_response and read only after it (mypyc keeps no mutable class default)
    headers: list[tuple[str, str]]
    headers_sent = False
    content_length: int | None = None
    chunked = False
    bytes_sent = 0
    #: the app produced more bytes than its Content-Length: the rest was dropped
    truncated = False
    #: uwsgi mode: no Date/Server; the connection closes after unless the peer asked
    raw = False
    reuse_asked = False
    #: whether body bytes may follow the head (set by start_response)
    body_allowed = False

    def __init__(
        self,
        write: Callable[[bytes], None],
        keep_alive: bool,
        head_only: bool,
        http10: bool,
        raw: bool = False,
    ) -> None:
        #: the ``write()`` callable handed to the app
        self.write = write
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.http10 = http10
        if raw:
            self.raw = True
            #: a uwsgi peer asked to keep the connection (GANTRY_KEEPALIVE): frame the body
            #: and say Connection: close when it cannot be kept
            self.reuse_asked = keep_alive

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise ResponseError("start_response called twice without exc_info")
        code = _STATUS_CODES.get(status)
        if code is None:
            if type(status) is not str or len(status) < 4 or status[3] != " ":
                raise ResponseError(f"invalid status {status!r}")
            if not status[:3].isdigit() or not "100" <= status[:3] <= "599":
                raise ResponseError(f"invalid status {status!r}")
            code = int(status[:3])
            if len(_STATUS_CODES) < 256:
                _STATUS_CODES[status] = code
        self.status_code = code
        self.status = status
        self.body_allowed = not self.head_only and code >= 200 and code not in NO_BODY_STATUSES
        self.headers = headers
        return self.write

    def encode_head(self, defaults: HeadDefaults, body_length: int | None) -> bytes:
        """Serialise the head and decide the framing.

        ``body_length`` is the whole body's size when the server already holds
        all of it, else None (the body streams).
        """
        status = self.status
        if status is None:
            raise ResponseError("the application did not call start_response")
        code = self.status_code
        lines: list[bytes] = [_status_line(status)]
        append = lines.append
        known = _HEADER_LINES
        content_length: int | None = None
        for pair in self.headers:
            try:
                line = known.get(pair)
            except TypeError:
                line = None
            if line is not None:
                if isinstance(line, int):
                    content_length = line  # a Content-Length seen before
                else:
                    append(line)
                continue
            name, value = pair
            lname = name.lower()
            if lname == "content-length":
                content_length = _content_length(pair)
            elif lname in _HOP_BY_HOP:
                if lname == "connection" and value.lower() == "close":
                    self.keep_alive = False
            else:
                append(_header_line(pair))
        if content_length is not None:
            if code >= 200 and (code not in NO_BODY_STATUSES or code == 304):
                append(_length_line(content_length))
            self.content_length = content_length
        elif code < 200 or code in NO_BODY_STATUSES:
            pass
        elif body_length is not None:
            append(_length_line(body_length))
        elif (self.raw and not self.keep_alive) or self.head_only or self.http10:
            # No length and no chunked coding: the end of the body is the close.
            # (For HEAD, the length of a body never produced is unknown.)
            self.keep_alive = False
        else:
            self.chunked = True
            append(b"Transfer-Encoding: chunked\r\n")
        if self.raw:
            if self.reuse_asked and not self.keep_alive:
                append(b"Connection: close\r\n")
            append(b"\r\n")
        else:
            if not self.keep_alive:
                append(b"Connection: close\r\n")
            elif self.http10:
                append(b"Connection: keep-alive\r\n")
            append(defaults.lines)
        self.headers_sent = True
        return b"".join(lines)

    def frame(self, data: bytes) -> bytes:
        """Wire bytes for one body piece from the app, per the framing chosen in the head."""
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ResponseError(f"the application produced {type(data).__name__}, not bytes")
            data = bytes(data)
        if not data or not self.body_allowed:
            return b""
        limit = self.content_length
        if limit is not None:
            remaining = limit - self.bytes_sent
            if len(data) > remaining:
                # More than announced: never let it reach the next response.
                data = data[:remaining]
                self.truncated = True
                self.keep_alive = False
            self.bytes_sent += len(data)
            return data
        self.bytes_sent += len(data)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def end(self) -> bytes:
        """Wire bytes that end the body; marks the connection for closing if the body fell short."""
        if self.chunked:
            return b"0\r\n\r\n"
        limit = self.content_length
        if limit is not None and self.bytes_sent < limit and self.body_allowed:
            self.keep_alive = False
        return b""


def error_response(status: str, defaults: HeadDefaults | None, raw: bool = False) -> bytes:
    """A short plain-text response the server sends on its own behalf; the connection closes."""
    body = status.encode("latin-1") + b"\n"
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode("latin-1")
    if defaults is not None and not raw:
        return head + defaults.lines + body
    return head + b"\r\n" + body


def close_result(result: Any) -> None:
    """Call the app result's ``close`` if it has one (PEP 3333: always, once)."""
    close = getattr(result, "close", None)
    if close is not None:
        close()
