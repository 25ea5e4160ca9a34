"""``gantry serve``: bind the sockets, then serve the app in this process or under a master."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from typing import IO

from gantry.appserver.supervise import PROBE, run_master
from gantry.appserver.worker import AppLoadError, Worker, load_app
from gantry.config import ListenAddress, ServeConfig
from gantry.process.privileges import drop_privileges, resolve_identity
from gantry.process.reexec import LoneReload, Reexec, adopted_workers, hold_signals, owned_sockets
from gantry.process.runtime import setup_error_log
from gantry.process.sockets import bind_or_inherit

__all__ = ["AppLoadError", "bind_all", "serve", "setup_logging"]


def serve(config: ServeConfig) -> int:
    """``gantry serve``: one process, or a master and ``config.workers`` workers."""
    config.check()
    access_stream = setup_logging(config)
    identity = resolve_identity(config.user, config.group, "serve")
    start_dir = os.getcwd()
    if config.chdir:
        os.chdir(config.chdir)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    sockets = bind_all(config)
    if config.workers:
        return run_master(config, sockets, access_stream, start_dir, identity)
    try:
        drop_privileges(identity)  # alone: the sockets are bound, the app not yet imported
        app = load_app(config.app)
    except AppLoadError:
        for _, sock in sockets:
            sock.close()
        raise
    worker = Worker(config, app, sockets)
    worker.access_stream = access_stream
    adopted_workers()  # after a re-exec: nothing to adopt alone; clears the variables
    reexec = Reexec(
        probe=[sys.executable, "-c", PROBE, config.app],
        start_dir=start_dir,
        sockets=[(sock.fileno(), not address.inherited) for address, sock in sockets],
    )
    worker.lone_reload = LoneReload(reexec, lambda: worker.request_stop(False))
    code = worker.run()
    worker.lone_reload.exec_if_requested()
    if worker.fast:
        # A fast stop does not wait for app threads still inside a request.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def bind_all(config: ServeConfig) -> list[tuple[ListenAddress, socket.socket]]:
    """Every configured socket: inherited (systemd, ``gantry up``) when passed, else bound
    here. After a re-exec, the sockets this process had bound itself count as its own
    again (it removes their unix socket files when it stops)."""
    owned = owned_sockets()
    hold_signals()  # until the handlers are in: a SIGHUP once the port accepts is a reload
    sockets = bind_or_inherit(config.listen, config.uwsgi_socket_mode, config.backlog)
    if owned is None:
        return sockets
    return [
        (dataclasses.replace(address, inherited=False) if index in owned else address, sock)
        for index, (address, sock) in enumerate(sockets)
    ]


def setup_logging(config: ServeConfig) -> IO[str] | None:
    """Error log to stderr (or a file); returns the access-log stream if enabled."""
    setup_error_log(config.error_log)
    if config.access_log is None:
        return None
    if config.access_log == "-":
        return sys.stdout
    return open(config.access_log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
