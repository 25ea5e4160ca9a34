"""A WSGI app for the application server's hostile-input tests.

- ``/size/N``: N bytes, the first line naming the path (order is checkable);
- ``/stream/N``: N MiB streamed in 64 KiB pieces, no Content-Length;
- ``/sleep/S``: answers after S seconds (harakiri, threads);
- ``/pid``: the worker's PID (which worker served a request);
- ``/raise``: the app raises (a 500 and an exception counted);
- anything else: ``called PATH`` and the Host the app saw.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["app"]

_PIECE = b"s" * 65536


def _stream(mib: int) -> Iterator[bytes]:
    for _ in range(mib * 16):
        yield _PIECE


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Route on the first path segment; see the module docstring."""
    path = environ.get("PATH_INFO", "")
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == "size":
        size = int(parts[2])
        first = f"{environ.get('REQUEST_URI', path)}\n".encode()
        body = (first + b"x" * size)[:size]
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    if len(parts) == 3 and parts[1] == "stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _stream(int(parts[2]))
    if path == "/raise":
        raise RuntimeError("the test asked for it")
    if path == "/pid":
        pid = str(os.getpid()).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(pid)))]
        )
        return [pid]
    if len(parts) == 3 and parts[1] == "sleep":
        time.sleep(float(parts[2]))
    payload = (
        f"called {path}\nhost={environ.get('HTTP_HOST', '-')}\n"
        f"uri={environ.get('REQUEST_URI', '-')}\nquery={environ.get('QUERY_STRING', '')}\n"
    ).encode("latin-1")
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))]
    )
    return [payload]
