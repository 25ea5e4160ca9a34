"""A WSGI app for the cache's tests (a helper module): it answers with its PATH_INFO and
a token of its own each time, stale at once but usable stale for a minute while it is
refreshed (RFC 5861)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``PATH_INFO`` and a unique token as the body, with Cache-Control: max-age=0,
    stale-while-revalidate=60."""
    body = f"{environ['PATH_INFO']} {uuid.uuid4()}".encode("latin-1")
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "max-age=0, stale-while-revalidate=60"),
        ],
    )
    return [body]
