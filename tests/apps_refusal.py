"""A tiny WSGI app for the refusal tests: it records every call it gets.

Each call appends "METHOD PATH BODY_LENGTH" to the file named by the
GANTRY_REFUSAL_CALLS environment variable, so a test in another process can
tell whether a refused request (or a smuggled one) ever reached the app, even
with several workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

__all__ = ["CALLS_ENV", "app"]

CALLS_ENV = "GANTRY_REFUSAL_CALLS"


def _record(line: str) -> None:
    path = os.environ.get(CALLS_ENV)
    if not path:
        return
    # O_APPEND keeps lines whole when several workers write at once
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8", "backslashreplace") + b"\n")
    finally:
        os.close(fd)


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the whole body, record the call, answer 200 with the path."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    body = stream.read(int(length)) if length else stream.read(1 << 20)
    _record(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')} {len(body)}")
    payload = f"called {environ.get('PATH_INFO', '')}\n".encode()
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))]
    )
    return [payload]


app = validator(_app)
