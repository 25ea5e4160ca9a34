"""The stats and metrics sockets a master serves from its own loop (uWSGI's stats server)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from gantry import __version__
from gantry.config import parse_address
from gantry.process.master import Master
from gantry.process.shared import WorkerTable
from gantry.process.sockets import bind

__all__ = ["http_text_response", "serve_each_connection", "serve_metrics", "serve_stats"]

log = logging.getLogger("gantry.stats")


def serve_each_connection(
    master: Master, spec: str, setting: str, respond: Callable[[socket.socket], None]
) -> None:
    """Listen on ``spec``; the master loop accepts and calls ``respond`` on each connection."""
    address = parse_address(spec, "stats", setting)
    listener = bind(address, 0o600 if address.path else None, 64)

    def accept(sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(2.0)  # a stuck client must not hold the master
            try:
                respond(conn)
            except OSError:
                pass

    master.serve_extra(listener, accept)


def http_text_response(conn: socket.socket, render: Callable[[], bytes]) -> None:
    """Answer one HTTP request on ``conn`` with Prometheus text from ``render``."""
    request = conn.recv(8192)
    if not request.startswith((b"GET ", b"HEAD ")):
        conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        return
    body = render()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    conn.sendall(head if request.startswith(b"HEAD ") else head + body)


def serve_stats(
    master: Master, table: WorkerTable, spec: str, started: float, listen: list[str]
) -> None:
    """uWSGI's stats server: each connection gets one JSON document, then the close."""
    from gantry.stats.uwsgi_json import MasterInfo, render_stats

    def respond(conn: socket.socket) -> None:
        info = MasterInfo(pid=os.getpid(), version=__version__, started=started, sockets=listen)
        conn.sendall(render_stats(table.snapshot(), info))

    serve_each_connection(master, spec, "--stats", respond)
    log.info("stats server on %s", spec)


def serve_metrics(
    master: Master, table: WorkerTable, spec: str, started: float, listen: list[str]
) -> None:
    """Prometheus text exposition: any GET on the socket gets the current counters."""
    from gantry.stats.prometheus import render_metrics
    from gantry.stats.uwsgi_json import MasterInfo

    def render() -> bytes:
        info = MasterInfo(pid=os.getpid(), version=__version__, started=started, sockets=listen)
        return render_metrics(table.snapshot(), info)

    serve_each_connection(master, spec, "--metrics", lambda conn: http_text_response(conn, render))
    log.info("metrics on http://%s/metrics", spec)
