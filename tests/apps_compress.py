"""An upstream for the compression tests (validated): ``/stream`` sends a large body in
pieces without a length (chunked over HTTP), ``/fields`` a body with the fields its
query names, ``/tiny`` a body in 40-byte pieces, ``/hold`` a first piece, then the rest
once a file exists."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

PIECE = 16 * 1024


def text(size: int, seed: int = 1) -> bytes:
    """``size`` bytes of HTML-like text that compresses, but not to nothing (the tests and
    the app make the same bytes)."""
    words = [b"<p>", b"gantry", b"front", b"</p>\n", b"compress", b"stream", b"zlib", b"br"]
    out = bytearray()
    state = seed
    while len(out) < size:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out += words[state % len(words)] + str(state % 997).encode() + b" "
    return bytes(out[:size])


def _pieces(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), PIECE):
        yield body[start : start + PIECE]


def _hold(first: bytes, rest: bytes, flag: str) -> Iterator[bytes]:
    yield first
    deadline = time.monotonic() + 10  # bounded: the test creates the file long before
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)
    yield rest


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = "/" + environ["PATH_INFO"].rsplit("/", 1)[-1]  # mounted under any prefix
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    size = int(query.get("size", "300000"))
    body = text(size)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return _pieces(body)
    if path == "/tiny":  # many small pieces, which arrive together
        start_response("200 OK", [("Content-Type", "text/html")])
        return [body[start : start + 40] for start in range(0, len(body), 40)]
    if path == "/hold":
        start_response("200 OK", [("Content-Type", "text/html")])
        return _hold(body[:1000], body[1000:], query["flag"])
    if path == "/nocontent":
        start_response("204 No Content", [])
        return []
    fields = [("Content-Type", query.get("type", "text/html"))]
    for name in ("Cache-Control", "Content-Encoding", "ETag", "Vary"):
        if name.lower() in query:
            fields.append((name, query[name.lower()]))
    fields.append(("Content-Length", str(len(body))))
    start_response("200 OK", fields)
    return [body]


app = validator(_app)
