"""Static files through an exchange: hot small files from memory, the rest from the
open-file cache, big bodies and every range set streamed from the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from gantry.config.front_model import Location, VirtualServer
from gantry.front.exchange import BodyStream, Exchange, FilePiece, Handler
from gantry.front.static import (
    FileAnswer,
    OpenFileCache,
    answer,
    content_type,
    expand_fallback,
    multipart_parts,
    resolve,
    try_files,
)
from gantry.http.body import BodyBuffer

__all__ = ["StaticHandler"]

# Files up to this size are read into memory and sent with the head in one write.
SMALL_FILE: Final = 256 * 1024
# Hot small files keep their whole response (but Date) in memory for this long
# before the file is looked at again: nginx stats and sendfiles on each request.
HOT_FILE_SECONDS: Final = 1.0
# Any file read into memory whole (SMALL_FILE) may be hot: a page compressed on the fly
# is then read from here, not stat'ed, looked up and read again for each request; the
# bodies held stay within HOT_BYTES (the bound 512 files of 64 KiB had before).
HOT_FILE_MAX: Final = SMALL_FILE
HOT_FILES: Final = 512
HOT_BYTES: Final = 32 * 1024 * 1024
# Requests with these fields take the full path (validators, ranges, encodings).
_CONDITIONAL: Final = frozenset(
    {b"range", b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since",
     b"if-range", b"accept-encoding"}
)  # fmt: skip
_OK: Final = b"HTTP/1.1 200 OK\r\n"


def _fell_back(location: Location, url_path: str, tried: str) -> bool:
    """Whether try_files answered with its last entry (a path, not a status)."""
    fallback = location.try_files[-1]
    return not fallback.startswith("=") and tried == expand_fallback(fallback, url_path, "")[0]


class StaticHandler(Handler):
    """A location with ``root`` or ``alias``: a file from disk. It holds one worker's
    open-file cache and hot small responses."""

    def __init__(self) -> None:
        self.files = OpenFileCache()
        #: (location id, path) -> (built at, status line and fields, body, whether it is
        #: the answer whatever Accept-Encoding says: no compressed sibling, no Vary)
        self.hot: dict[tuple[int, str], tuple[float, bytes, bytes, bool]] = {}
        #: the bytes of the bodies in ``hot``
        self.hot_bytes = 0
        #: the worker's clock (loop time), set once a second
        self.now = 0.0
        #: the epoch second of the Date field answers carry (Expires counts from it)
        self.date_second: float | None = None
        #: try_files' last entry naming a path another location answers: nginx's
        #: internal redirect (the worker's; False: served from this location)
        self.redirect: Callable[[Exchange, str, BodyBuffer | BodyStream | None], bool] | None = None

    def close(self) -> None:
        """Close every cached file."""
        self.files.close_all()

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return location is not None and bool(location.root or location.alias)

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        location = exchange.location
        if location is None or not (location.root or location.alias):
            return False
        self._serve(exchange, location, body)
        return True

    def _serve(
        self,
        exchange: Exchange,
        location: Location,
        request_body: BodyBuffer | BodyStream | None = None,
    ) -> None:
        """Answer a request for a file of ``location``."""
        head = exchange.head
        path = exchange.path
        hot = self.hot
        # Accept-Encoding matters only where a compressed sibling exists: a browser's
        # request for any other file is plain too, and compression on the fly (the
        # exchange's coder) works on the hot body as on one read from the file.
        encoded = conditional = False
        for name, _ in head.headers:
            lower = name.lower()
            if lower in _CONDITIONAL:
                if lower == b"accept-encoding":
                    encoded = True
                else:
                    conditional = True
        plain = head.method == "GET" and not conditional
        if plain:
            entry = hot.get((id(location), path))
            if (
                entry is not None
                and self.now - entry[0] < HOT_FILE_SECONDS
                and (entry[3] or not encoded)
            ):
                # A hot small file: the head and body were built once; only Date is new.
                exchange.respond_prepared(200, entry[1], entry[2])
                return
        if location.try_files:
            fs_path, path, status = try_files(location, path)
            if status is not None:
                exchange.error(status)
                return
            redirect = self.redirect
            if redirect is not None and _fell_back(location, exchange.path, path):
                if redirect(exchange, location.try_files[-1], request_body):
                    return
        else:
            fs_path = resolve(location, location.path, path)
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in head.headers}
        result = answer(
            location,
            fs_path,
            path,
            head.method,
            headers,
            headers.get("accept-encoding", ""),
            now=self.date_second,
        )
        if result.error is not None:
            exchange.log_error(result.error)
        if result.status >= 400 and not result.body and result.status not in (416, 405):
            exchange.error(result.status)
            return
        lines = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in result.headers]
        if result.path is None or head.method == "HEAD" or result.status == 304:
            body = b"" if head.method == "HEAD" else result.body
            if result.status != 304 and not any(n.lower() == b"content-length" for n, _ in lines):
                lines.append((b"Content-Length", str(len(body)).encode()))
            exchange.respond(result.status, lines, body)
            return
        try:
            # owned by the cache, which may close it later: send_file takes its own copy
            fd, stat = self.files.open(result.path)
        except OSError:
            exchange.error(404)
            return
        self._send(exchange, location, path, plain, encoded, result, lines, fd, stat.st_size)

    def _keep_hot(self, key: tuple[int, str], entry: tuple[float, bytes, bytes, bool]) -> None:
        """Hold ``entry``, the oldest going first while HOT_FILES or HOT_BYTES would be
        passed."""
        hot = self.hot
        old = hot.pop(key, None)
        if old is not None:
            self.hot_bytes -= len(old[2])
        size = len(entry[2])
        while hot and (len(hot) >= HOT_FILES or self.hot_bytes + size > HOT_BYTES):
            self.hot_bytes -= len(hot.pop(next(iter(hot)))[2])
        hot[key] = entry
        self.hot_bytes += size

    def _send(
        self,
        exchange: Exchange,
        location: Location,
        path: str,
        plain: bool,
        encoded: bool,
        result: FileAnswer,
        lines: list[tuple[bytes, bytes]],
        fd: int,
        size: int,
    ) -> None:
        if result.boundary:
            # Each part streams from the file: a range set never sits in memory.
            pieces: list[FilePiece] = [
                span if span is not None else piece
                for piece, span in multipart_parts(result, size, content_type(result.path or ""))
            ]
            lines = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in result.headers]
            exchange.send_file(result.status, lines, fd, pieces)
            return
        start, end = result.ranges[0] if result.ranges else (0, size - 1)
        length = end - start + 1
        if length <= SMALL_FILE:
            data = os.pread(fd, length, start) if length else b""
            # the plain variant only: one sent for an Accept-Encoding when it has no
            # sibling (no Vary), and then it is everyone's
            varies = any(name.lower() in (b"vary", b"content-encoding") for name, _ in lines)
            if (
                plain
                and result.status == 200
                and length <= HOT_FILE_MAX
                and not (encoded and varies)
            ):
                block = _OK + b"".join([name + b": " + value + b"\r\n" for name, value in lines])
                self._keep_hot((id(location), path), (self.now, block, data, not varies))
            exchange.respond(result.status, lines, data)
            return
        exchange.send_file(result.status, lines, fd, [(start, end)])
