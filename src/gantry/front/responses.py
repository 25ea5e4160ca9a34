"""Response heads of the front's own and its error pages (read once, at worker start)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Final

__all__ = ["REASONS", "ErrorPages", "connection_field", "status_line"]

log: Final = logging.getLogger("gantry.front")

REASONS: Final = {
    200: "OK", 201: "Created", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 412: "Precondition Failed",
    413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}  # fmt: skip
# and the other registered statuses (a `return 410` says "Gone", not "Unknown")
for _status in HTTPStatus:
    REASONS.setdefault(_status.value, _status.phrase)

#: (status, upstream's reason phrase) -> status line; bounded, the reasons are upstreams'
_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}
_STATUS_LINES_MAX: Final = 256

_CLOSE: Final = b"Connection: close\r\n"
_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 <status> <reason>`` and CRLF; the standard reason when ``reason`` is empty."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        text = reason.decode("latin-1") or REASONS.get(status, "Unknown")
        line = f"HTTP/1.1 {status} {text}\r\n".encode("latin-1")
        if len(_STATUS_LINES) < _STATUS_LINES_MAX:
            _STATUS_LINES[(status, reason)] = line
    return line


def connection_field(keep_alive: bool, version: str) -> bytes:
    """Connection: close when the connection ends after the response; keep-alive for an
    HTTP/1.0 client whose connection stays; nothing otherwise."""
    if not keep_alive:
        return _CLOSE
    if version == "1.0":
        return _KEEP_ALIVE
    return b""


class ErrorPages:
    """The body and type of each error response of the front's own.

    The configured pages are read when the worker starts (a reload starts new workers,
    which read them again): an error response never opens a file on the event loop, and
    a page changed or removed later does not change what clients get.
    """

    _PLAIN: Final = b"text/plain; charset=utf-8"
    _HTML: Final = b"text/html; charset=utf-8"

    def __init__(self, pages: dict[int, str]) -> None:
        #: status -> (Content-Type, body)
        self.pages: dict[int, tuple[bytes, bytes]] = {}
        for status, path in pages.items():
            try:
                with open(path, "rb") as handle:
                    self.pages[status] = (self._HTML, handle.read())
            except OSError as exc:
                log.warning("error page for %d: cannot read %s: %s", status, path, exc)

    def page(self, status: int) -> tuple[bytes, bytes]:
        """(Content-Type, body) for ``status``: the configured page or a line of text."""
        found = self.pages.get(status)
        if found is not None:
            return found
        found = (self._PLAIN, f"{status} {REASONS.get(status, '')}\n".encode())
        if len(self.pages) < 64:
            self.pages[status] = found
        return found
