"""``gantry serve --workers N``: the application server's workers under the process master."""

from __future__ import annotations

import os
import socket
import sys
from typing import IO

from gantry.appserver.context import WSGIApp, error_log
from gantry.appserver.worker import AppLoadError, Worker, load_app
from gantry.config import ListenAddress, ServeConfig
from gantry.process.master import APP_LOAD_FAILED, Master, MasterSettings, WorkerExit
from gantry.process.privileges import Identity
from gantry.process.reexec import Reexec, adopted_workers
from gantry.process.shared import SlotView, WorkerTable
from gantry.stats.serve import serve_metrics, serve_stats

__all__ = ["run_master"]

# A fresh interpreter imports the app as a worker would: exit 3 and the traceback on
# stderr when it cannot (a preloading master's reload checks the new code with it).
PROBE = """
import os, sys, traceback
sys.path.insert(0, os.getcwd())
from gantry.appserver.worker import AppLoadError, load_app
try:
    load_app(sys.argv[1])
except AppLoadError as exc:
    traceback.print_exception(exc.__cause__ or exc)
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def run_master(
    config: ServeConfig,
    sockets: list[tuple[ListenAddress, socket.socket]],
    access_stream: IO[str] | None,
    start_dir: str | None = None,
    identity: Identity | None = None,
) -> int:
    """Bind-before-fork is done; preload if asked, then run the master loop.

    With preload, a reload re-executes this process from ``start_dir`` (the directory it
    was started in) so the new code is imported afresh."""
    preloaded: WSGIApp | None = None
    if config.preload:
        preloaded = load_app(config.app)  # AppLoadError reaches the CLI: clear message, exit 3

    def run_worker(slot: SlotView, generation: int) -> int:
        try:
            app = preloaded if preloaded is not None else load_app(config.app)
        except AppLoadError as exc:
            # the traceback to the log; the summary to the slot, for the master's message
            error_log.error("worker %d: %s", os.getpid(), exc, exc_info=exc.__cause__ or exc)
            slot.set_request_line(str(exc))
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
        identity=identity,
    )
    master = Master(settings, run_worker, table)
    adopted, generation = adopted_workers()
    if adopted:
        master.adopt(adopted, generation)
    if config.preload:
        master.reexec = Reexec(
            probe=[sys.executable, "-c", PROBE, config.app],
            start_dir=start_dir or os.getcwd(),
            sockets=[(sock.fileno(), not address.inherited) for address, sock in sockets],
        )
    started = master.started
    listen_names = [str(address) for address, _ in sockets]
    if config.stats:
        serve_stats(master.loop, table, config.stats, started, listen_names, master.status)
    if config.metrics:
        serve_metrics(master.loop, table, config.metrics, started, listen_names)
    try:
        code = master.run()
    except WorkerExit as exc:
        error_log.error("%s", exc)
        code = exc.code
    for address, sock in sockets:
        sock.close()
        if address.path is not None and not address.inherited:
            try:
                os.unlink(address.path)
            except OSError:
                pass
    return code
