"""What every role's process sets up the same way: the error log, the event loop and the
cycle collector."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import sys

__all__ = [
    "OpenFiles",
    "freeze_startup_heap",
    "set_open_files",
    "process_alive",
    "new_event_loop",
    "reopen_error_log",
    "setup_error_log",
    "signal_process",
]


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


def reopen_error_log() -> None:
    """SIGUSR1: close the ``gantry`` loggers' files; each reopens its path on the next
    record, so a file logrotate moved away is not written to any more."""
    for handler in logging.getLogger("gantry").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()


def freeze_startup_heap(young_threshold: int | None = None) -> None:
    """Put everything made so far (modules, config, the app) out of the cycle collector's
    reach, as a worker starts serving: a full collection no longer walks tens of thousands
    of objects that live as long as the process (in a front worker under load that cost
    about 0.8 µs a request), and a forked child no longer dirties their pages by
    collecting them.

    ``young_threshold``: the net count of new container objects that starts a young
    collection (CPython's default is 700). A process whose requests leave no cyclic
    garbage (the front: tests/test_cycle_collector.py holds it to that) lets its in-flight
    requests' objects die by reference counting and need never collect; an app's
    process keeps the default, since apps do leave cycles (Flask about 8 objects a
    request).
    """
    gc.collect()
    gc.freeze()
    if young_threshold is not None:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A uvloop loop when available and wanted, else asyncio's default."""
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


class OpenFiles:
    """What set_open_files did: the soft limit on open files now, and why it is below the
    one asked for ("" when it is not)."""

    __slots__ = ("limit", "shortfall")

    def __init__(self, limit: int, shortfall: str = "") -> None:
        self.limit = limit
        self.shortfall = shortfall


def set_open_files(wanted: int, *, only_raise: bool = False) -> OpenFiles:
    """Make this process's soft RLIMIT_NOFILE ``wanted`` (the processes it forks inherit
    it), raising the hard limit too where this process may (root with CAP_SYS_RESOURCE);
    where it may not, the hard limit is as far as it goes. ``only_raise``: a soft limit
    above ``wanted`` stays as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if only_raise and (soft == unlimited or soft >= wanted):
        return OpenFiles(soft)
    if hard == unlimited or wanted <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return OpenFiles(wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        return OpenFiles(wanted)
    except (ValueError, OSError) as exc:  # no privilege, or past fs.nr_open
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return OpenFiles(max(soft, hard), f"the hard limit is {hard} and cannot be raised ({why})")


def signal_process(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``; a process already gone is not an error."""
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts: it is there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
