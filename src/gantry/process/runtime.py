"""What every role's process sets up the same way: the error log and the event loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import sys

__all__ = ["new_event_loop", "setup_error_log", "signal_process", "wait_readable"]


def setup_error_log(path: str | None = None) -> None:
    """The ``gantry`` loggers write to ``path`` (a file) or, unset or "-", to stderr."""
    handler: logging.Handler
    if path and path != "-":
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    )
    root = logging.getLogger("gantry")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A uvloop loop when available and wanted, else asyncio's default."""
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def wait_readable(
    wakeup_fd: int, sockets: list[socket.socket], timeout: float
) -> list[socket.socket]:
    """A master's wait: until a signal arrives through the wakeup pipe (which is then
    emptied), one of ``sockets`` is readable, or ``timeout`` passes; the readable sockets."""
    try:
        watched: list[int | socket.socket] = [wakeup_fd, *sockets]
        ready, _, _ = select.select(watched, [], [], timeout)
    except InterruptedError:
        return []
    if wakeup_fd in ready:
        try:
            while os.read(wakeup_fd, 4096):
                pass
        except BlockingIOError:
            pass
    return [item for item in ready if isinstance(item, socket.socket)]


def signal_process(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``; a process already gone is not an error."""
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
