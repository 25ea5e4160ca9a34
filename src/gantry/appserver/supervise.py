"""``gantry serve --workers N``: the application server's workers under the process master."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import IO

from gantry import __version__
from gantry.appserver.context import WSGIApp, error_log
from gantry.appserver.worker import AppLoadError, Worker, bind, load_app
from gantry.config import ListenAddress, ServeConfig, parse_address
from gantry.process.master import APP_LOAD_FAILED, Master, MasterSettings, WorkerExit
from gantry.process.shared import SlotView, WorkerTable

__all__ = ["run_master"]


def run_master(
    config: ServeConfig,
    sockets: list[tuple[ListenAddress, socket.socket]],
    access_stream: IO[str] | None,
) -> int:
    """Bind-before-fork is done; preload if asked, then run the master loop."""
    preloaded: WSGIApp | None = None
    if config.preload:
        preloaded = load_app(config.app)  # AppLoadError reaches the CLI: clear message, exit 3

    def run_worker(slot: SlotView, generation: int) -> int:
        try:
            app = preloaded if preloaded is not None else load_app(config.app)
        except AppLoadError as exc:
            error_log.error("worker %d: %s", os.getpid(), exc)
            return APP_LOAD_FAILED
        worker = Worker(config, app, sockets, slot=slot)
        worker.access_stream = access_stream
        return worker.run()

    # Room for a reload's second generation and for SIGTTIN on top.
    table = WorkerTable(max(64, config.workers * 2 + 16))
    settings = MasterSettings(
        workers=config.workers,
        graceful_timeout=config.graceful_timeout,
        harakiri=config.harakiri or None,
        pidfile=config.pidfile,
    )
    master = Master(settings, run_worker, table)
    started = master.started
    listen_names = [str(address) for address, _ in sockets]
    if config.stats:
        _serve_stats(master, table, config.stats, started, listen_names)
    if config.metrics:
        _serve_metrics(master, table, config.metrics, started, listen_names)
    try:
        code = master.run()
    except WorkerExit as exc:
        error_log.error("%s", exc)
        code = exc.code
    for address, sock in sockets:
        sock.close()
        if address.path is not None:
            try:
                os.unlink(address.path)
            except OSError:
                pass
    return code


def _serve_each_connection(
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


def _serve_stats(
    master: Master, table: WorkerTable, spec: str, started: float, listen: list[str]
) -> None:
    """uWSGI's stats server: each connection gets one JSON document, then the close."""
    from gantry.stats.uwsgi_json import MasterInfo, render_stats

    def respond(conn: socket.socket) -> None:
        info = MasterInfo(pid=os.getpid(), version=__version__, started=started, sockets=listen)
        conn.sendall(render_stats(table.snapshot(), info))

    _serve_each_connection(master, spec, "--stats", respond)
    error_log.info("stats server on %s", spec)


def _serve_metrics(
    master: Master, table: WorkerTable, spec: str, started: float, listen: list[str]
) -> None:
    """Prometheus text exposition: any GET on the socket gets the current counters."""
    from gantry.stats.prometheus import render_metrics
    from gantry.stats.uwsgi_json import MasterInfo

    def respond(conn: socket.socket) -> None:
        request = conn.recv(8192)
        if not request.startswith((b"GET ", b"HEAD ")):
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        info = MasterInfo(pid=os.getpid(), version=__version__, started=started, sockets=listen)
        body = render_metrics(table.snapshot(), info)
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.sendall(head if request.startswith(b"HEAD ") else head + body)

    _serve_each_connection(master, spec, "--metrics", respond)
    error_log.info("metrics on http://%s/metrics", spec)
