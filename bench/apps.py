"""WSGI applications the benchmark serves: a raw hello app and the Flask demo."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gantry.demo import app as flask_app

__all__ = ["flask_app", "hello", "kib"]

# Built once so the raw app measures the server, not the app's own allocations.
_BODY = b"Hello World!"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY)))]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with ``Hello World!`` as text/plain with a Content-Length."""
    start_response("200 OK", _HEADERS)
    return [_BODY]


_KIB = bytes(range(256)) * 4
_KIB_HEADERS = [
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", str(len(_KIB))),
    ("Cache-Control", "max-age=3600"),
]


def kib(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every path with the same 1 KiB body that a shared cache may keep an hour
    (the cache benches of bench/front.py)."""
    start_response("200 OK", _KIB_HEADERS)
    return [_KIB]
