"""The stats and metrics sockets a master serves from its own loop (uWSGI's stats server),
without blocking it: see ``process/answers.py``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from gantry import __version__
from gantry.config import parse_address
from gantry.process.answers import AnswerServer
from gantry.process.loop import ProcessLoop
from gantry.process.shared import WorkerTable
from gantry.process.sockets import bind

__all__ = ["http_text_answer", "listen_and_answer", "serve_metrics", "serve_stats"]

log = logging.getLogger("gantry.stats")


def listen_and_answer(
    loop: ProcessLoop, spec: str, setting: str, answer: Callable[[bytes], bytes], http: bool
) -> AnswerServer:
    """Listen on ``spec``; each connection gets ``answer(request)`` (``http``: after an
    HTTP request head is read; else at once), then the close."""
    address = parse_address(spec, "stats", setting)
    listener = bind(address, 0o600 if address.path else None, 64)
    return AnswerServer(
        loop, listener, lambda request, deliver: deliver(answer(request)), reads_request=http
    )


def http_text_answer(request: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP response to ``request``: Prometheus text from ``render`` to a GET."""
    if not request.startswith((b"GET ", b"HEAD ")):
        return b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    body = render()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if request.startswith(b"HEAD ") else head + body


def serve_stats(
    loop: ProcessLoop,
    table: WorkerTable,
    spec: str,
    started: float,
    listen: list[str],
    status: Callable[[], dict[str, Any]] | None = None,
    caches: Callable[[], list[dict[str, Any]]] | None = None,
) -> AnswerServer:
    """uWSGI's stats server: each connection gets one JSON document, then the close.
    ``status()`` adds the master's own keys (e.g. ``reload_error``); ``caches()`` the
    front's cache zones (their ``caches`` list)."""
    from gantry.stats.uwsgi_json import MasterInfo, stats_document

    def answer(request: bytes) -> bytes:
        info = MasterInfo(pid=os.getpid(), version=__version__, started=started, sockets=listen)
        document = stats_document(table.snapshot(), info)
        if status is not None:
            document.update(status())
        if caches is not None:
            document["caches"] = caches()
        return json.dumps(document).encode()

    server = listen_and_answer(loop, spec, "--stats", answer, http=False)
    log.info("stats server on %s", spec)
    return server


def serve_metrics(
    loop: ProcessLoop,
    table: WorkerTable,
    spec: str,
    started: float,
    listen: list[str],
    extra: Callable[[], str] | None = None,
    caches: Callable[[], list[dict[str, Any]]] | None = None,
) -> AnswerServer:
    """Prometheus text exposition: any GET on the socket gets the current counters (the
    cache zones' from ``caches()``, and ``extra()``'s families, e.g. the front's limits)."""
    from gantry.stats.prometheus import render_metrics
    from gantry.stats.uwsgi_json import MasterInfo

    def render() -> bytes:
        info = MasterInfo(pid=os.getpid(), version=__version__, started=started, sockets=listen)
        text = render_metrics(table.snapshot(), info, caches() if caches is not None else None)
        return text + extra().encode() if extra is not None else text

    server = listen_and_answer(
        loop, spec, "--metrics", lambda request: http_text_answer(request, render), http=True
    )
    log.info("metrics on http://%s/metrics", spec)
    return server
