"""Apps for the process-manager tests (validated); behaviour chosen by path."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

#: the tests rewrite this file's VERSION line to check that a reload serves new code
VERSION = "v1"

_HOARD: list[bytes] = []


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    body = b"ok"
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/version":
        body = VERSION.encode()
    elif path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        body = b"slept"
    elif path == "/hoard":
        # grow this worker's memory by 20 MiB a call, for reload-on-rss
        _HOARD.append(os.urandom(20 * 1024 * 1024))
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
