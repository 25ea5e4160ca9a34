"""A backend for the front's end-to-end tests (validated); behaviour chosen by path.

``GANTRY_BACKEND_NAME`` names the backend in its answers; ``GANTRY_BACKEND_SLOW``
is how long ``/slow`` takes on this backend (0 by default).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

NAME = os.environ.get("GANTRY_BACKEND_NAME", str(os.getpid()))
SLOW = float(os.environ.get("GANTRY_BACKEND_SLOW", "0"))


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/sha256":
        # read the body in pieces as it comes: "<length>:<sha256 hex>"
        digest = hashlib.sha256()
        size = 0
        stream = environ["wsgi.input"]
        left = int(environ.get("CONTENT_LENGTH") or 0)
        while left > 0:
            piece = stream.read(min(left, 65536))
            if not piece:
                break
            digest.update(piece)
            size += len(piece)
            left -= len(piece)
        body = f"{size}:{digest.hexdigest()}".encode()
    else:
        if path == "/slow" and SLOW:
            time.sleep(SLOW)
        body = NAME.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
