"""Data the e2e apps send and the tests check, shared by the Flask and Django apps."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

STREAM_CHUNKS = [b"chunk-%d;" % i for i in range(8)]
FILE_BYTES = bytes(range(256)) * 1024 + b"tail"  # 256 KiB + 4

_KEYS = (
    "REQUEST_METHOD",
    "PATH_INFO",
    "SCRIPT_NAME",
    "QUERY_STRING",
    "REQUEST_URI",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "SERVER_PROTOCOL",
    "HTTP_HOST",
    "HTTP_X_MULTI",
    "HTTP_COOKIE",
    "wsgi.url_scheme",
)


def echo_payload(environ: dict[str, Any], sha256: str, size: int) -> dict[str, Any]:
    """The environ keys the tests compare, with the body's hash and size."""
    payload: dict[str, Any] = {key: environ.get(key) for key in _KEYS}
    if "e2e.server_path_info" in environ:
        payload["PATH_INFO"] = environ["e2e.server_path_info"]
    payload["body_sha256"] = sha256
    payload["body_length"] = size
    return payload


def hash_body(read: Callable[[int], bytes]) -> tuple[str, int]:
    """Read a body to its end in blocks (as the validator wants: read(n)); sha256 and size."""
    digest = hashlib.sha256()
    size = 0
    while piece := read(65536):
        digest.update(piece)
        size += len(piece)
    return digest.hexdigest(), size
