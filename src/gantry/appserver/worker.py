"""One application-server worker process: load the app, bind sockets, run the event loop."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

from gantry.appserver.context import WorkerContext, WSGIApp, error_log
from gantry.appserver.http import IDLE_STATE, HTTPConnection
from gantry.appserver.uwsgi import UwsgiConnection
from gantry.config import ListenAddress, ServeConfig
from gantry.process.reexec import LoneReload, release_held_signals
from gantry.process.runtime import freeze_startup_heap, new_event_loop
from gantry.process.shared import STATUS_CODES, SlotView
from gantry.process.systemd import notify
from gantry.wsgi.environ import EnvironTemplate

__all__ = ["AppLoadError", "Worker", "load_app"]


class AppLoadError(Exception):
    """The WSGI application named on the command line cannot be imported."""


def _import_failure(module_name: str, exc: BaseException) -> str:
    """Why ``module_name`` did not import: the exception, its traceback (the import
    system's own frames left out), the working directory, sys.path, and a hint when
    the module itself was not found."""
    report = traceback.TracebackException.from_exception(exc)
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if not frame.filename.startswith("<frozen importlib")]
    )
    lines = [
        f"cannot import {module_name!r}: {type(exc).__name__}: {exc}",
        "".join(report.format()).rstrip("\n"),
        f"working directory: {os.getcwd()}",
        "sys.path: " + repr(sys.path),
    ]
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing is not None and (module_name + ".").startswith(missing + "."):
        # the app's own module (or its package) is not on the path, not a dependency
        lines.append(
            f"hint: {missing!r} is not importable from here: start gantry in the "
            "directory that holds it, or set chdir (--chdir DIR, or chdir in [serve])"
        )
    return "\n".join(lines)


def load_app(spec: str) -> WSGIApp:
    """Import ``module:attribute`` (attribute may be dotted) and return the callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AppLoadError(f"expected MODULE:CALLABLE, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(_import_failure(module_name, exc)) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise AppLoadError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _template(config: ServeConfig, address: ListenAddress, ctx: WorkerContext) -> EnvironTemplate:
    if address.path is not None:
        name, port = "localhost", "0"
    else:
        name, port = address.host or "0.0.0.0", str(address.port)
    return EnvironTemplate(
        server_name=name,
        server_port=port,
        multithread=config.threads > 0,
        mount_prefix=config.mount_prefix,
        errors=ctx.errors,  # type: ignore[arg-type]
        file_wrapper=ctx.file_wrapper,
    )


def _protocol_factory(
    config: ServeConfig, address: ListenAddress, ctx: WorkerContext
) -> Callable[[], asyncio.Protocol]:
    """What ``create_server`` calls for each connection on ``address``."""
    template = _template(config, address, ctx)
    if address.kind == "http":
        return lambda: HTTPConnection(ctx, template)
    allow = None if address.path is not None else config.uwsgi_allow_from
    return lambda: UwsgiConnection(ctx, template, allow)


class Worker:
    """Serves the app on already bound sockets until told to stop."""

    def __init__(
        self,
        config: ServeConfig,
        app: WSGIApp,
        sockets: list[tuple[ListenAddress, socket.socket]],
        slot: SlotView | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.sockets = sockets
        #: this worker's shared-memory slot when a master runs it
        self.slot = slot
        self.access_stream: IO[str] | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.stop_event: asyncio.Event | None = None
        self.fast = False
        #: serving alone (no master): how SIGHUP re-executes this process
        self.lone_reload: LoneReload | None = None

    def run(self) -> int:
        """Run the event loop until SIGTERM/SIGINT; returns the exit code."""
        loop = new_event_loop(self.config.use_uvloop)
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> int:
        config = self.config
        ctx = WorkerContext(config, self.app, loop, self.access_stream, self.slot)
        ctx.request_stop = self._recycle
        ctx.start_clock()
        self.stop_event = asyncio.Event()
        for signum, fast in (
            (signal.SIGTERM, False),
            (signal.SIGINT, True),
            (signal.SIGQUIT, True),
        ):
            loop.add_signal_handler(signum, self._on_signal, fast)
        loop.add_signal_handler(signal.SIGUSR1, ctx.reopen_logs)
        for address, sock in self.sockets:
            factory = _protocol_factory(config, address, ctx)
            server = await loop.create_server(factory, sock=sock, backlog=config.backlog)
            self.servers.append(server)
            scheme = "http" if address.kind == "http" else "uwsgi"
            error_log.info("listening on %s://%s", scheme, address)
        error_log.info(
            "serving %s (pid %d, %s, %s)",
            config.app,
            os.getpid(),
            type(loop).__module__.split(".")[0],
            f"{config.threads} app threads" if config.threads else "app on the loop thread",
        )
        if self.slot is not None:
            self.slot.pid = os.getpid()
            self.slot.status = STATUS_CODES["idle"]
            self.slot.ready = 1
        else:  # alone: this process tells systemd what a master would
            if self.lone_reload is not None:
                loop.add_signal_handler(signal.SIGHUP, self.lone_reload.on_sighup)
            release_held_signals()  # a SIGHUP sent while starting: taken now
            notify("READY=1", f"STATUS=serving {config.app}")
        freeze_startup_heap()  # the app's garbage needs the default young threshold
        await self.stop_event.wait()
        ctx.stopping = True
        reexec = self.lone_reload is not None and self.lone_reload.requested
        if self.slot is not None:
            self.slot.status = STATUS_CODES["stopping"]
        elif not reexec:
            notify("STOPPING=1")
        if self.lone_reload is not None:
            self.lone_reload.keep_sockets([sock for _, sock in self.sockets])
        for listening in self.servers:
            listening.close()
        if not self.fast:
            await self._drain(ctx)
        for conn in list(ctx.connections):
            if conn.transport is not None:
                conn.transport.abort() if self.fast else conn.transport.close()
        ctx.stop_clock()
        if ctx.executor is not None:
            ctx.executor.shutdown(wait=not self.fast, cancel_futures=True)
        for address, sock in self.sockets:
            if (
                address.path is not None
                and self.slot is None
                and not address.inherited
                and not reexec
            ):
                # Only a lone process owns the path; under a master it outlives workers.
                try:
                    os.unlink(address.path)
                except OSError:
                    pass
            sock.close()
        ctx.flush_counters()
        error_log.info(
            "stopped (%s)", "re-executing" if reexec else "fast" if self.fast else "graceful"
        )
        return 0

    async def _drain(self, ctx: WorkerContext) -> None:
        """Let in-flight requests finish, bounded by the graceful timeout.

        Responses now carry ``Connection: close``. An idle keep-alive connection
        is closed once it has been idle a second: a client that was about to
        send on it gets its answer (and the close) instead of a reset.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
        # A connection accepted just before the listening sockets closed has its set-up
        # (connection_made) still queued on the loop: let it join ctx.connections first.
        await asyncio.sleep(0)
        while loop.time() < deadline:
            now = ctx.now = loop.time()
            for conn in list(ctx.connections):
                idle = not conn.busy and getattr(conn, "state", None) == IDLE_STATE
                if idle and now - conn.idle_since >= 1.0 and conn.transport is not None:
                    conn.transport.close()
            if not ctx.connections or self.fast:
                return
            await asyncio.sleep(0.05)
        error_log.warning("graceful timeout: closing %d connections", len(ctx.connections))

    def request_stop(self, fast: bool) -> None:
        """Stop as a signal would (a reload that re-executes this process drains first)."""
        self._on_signal(fast)

    def _recycle(self) -> None:
        """max-requests or reload-on-rss: stop accepting at once (the master's next worker
        takes new connections, so this one serves exactly its count), then stop gracefully."""
        for listening in self.servers:
            listening.close()
        self._on_signal(False)

    def _on_signal(self, fast: bool) -> None:
        if fast:
            self.fast = True
        error_log.info("received %s stop signal", "fast" if fast else "graceful")
        assert self.stop_event is not None
        self.stop_event.set()
