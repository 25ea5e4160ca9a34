"""WSGI applications the benchmark serves: a raw hello app and the Flask demo."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gantry.demo import app as flask_app

__all__ = ["flask_app", "hello"]

# Built once so the raw app measures the server, not the app's own allocations.
_BODY = b"Hello World!"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY)))]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with ``Hello World!`` as text/plain with a Content-Length."""
    start_response("200 OK", _HEADERS)
    return [_BODY]
