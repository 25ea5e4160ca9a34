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


def shaped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``PATH_INFO`` and a unique token as the body; Cache-Control is the query string
    (none when it is empty), so every path with one query gets the same head; a path
    ending in "/found" is a 302 (which no cache stores by heuristic freshness)."""
    path = environ["PATH_INFO"]
    body = f"{path} {uuid.uuid4()}".encode("latin-1")
    fields = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    query = environ.get("QUERY_STRING", "")
    if query:
        fields.append(("Cache-Control", query.replace("%20", " ")))
    if path.endswith("/found"):
        fields.append(("Location", "/elsewhere"))
    start_response("302 Found" if path.endswith("/found") else "200 OK", fields)
    return [body]
