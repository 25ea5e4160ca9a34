"""What every connection of one worker shares: the app, settings, logs and the clock."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from gantry.config import ServeConfig
from gantry.wsgi.errors import ErrorStream
from gantry.wsgi.response import FileWrapper, HeadDefaults

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

error_log = logging.getLogger("gantry.error")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLog:
    """Access log in the combined format (as nginx's and Apache's)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def log(
        self,
        environ: dict[str, Any],
        status: int,
        size: int,
    ) -> None:
        """Write one line for a finished request."""
        now = time.localtime()
        offset = -(time.altzone if now.tm_isdst else time.timezone)
        sign = "+" if offset >= 0 else "-"
        offset = abs(offset)
        stamp = (
            f"{now.tm_mday:02d}/{_MONTHS[now.tm_mon - 1]}/{now.tm_year}:"
            f"{now.tm_hour:02d}:{now.tm_min:02d}:{now.tm_sec:02d} "
            f"{sign}{offset // 3600:02d}{offset % 3600 // 60:02d}"
        )
        request_line = (
            f"{environ.get('REQUEST_METHOD', '-')} {environ.get('REQUEST_URI', '-')} "
            f"{environ.get('SERVER_PROTOCOL', '-')}"
        )
        referer = environ.get("HTTP_REFERER", "-")
        agent = environ.get("HTTP_USER_AGENT", "-")
        self._stream.write(
            f'{environ.get("REMOTE_ADDR", "-")} - - [{stamp}] "{_escape(request_line)}" '
            f'{status} {size} "{_escape(referer)}" "{_escape(agent)}"\n'
        )
        self._stream.flush()


def _escape(text: str) -> str:
    # Control bytes and quotes in a logged field could forge log lines.
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


class WorkerContext:
    """Per-worker shared state: app, settings, ``Date`` cache, live connections, thread pool."""

    def __init__(
        self,
        config: ServeConfig,
        app: WSGIApp,
        loop: asyncio.AbstractEventLoop,
        access_stream: IO[str] | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.loop = loop
        self.limits = config.limits
        self.defaults = HeadDefaults()
        self.errors = ErrorStream(sys.stderr)
        self.file_wrapper = FileWrapper
        self.access_log = AccessLog(access_stream) if access_stream is not None else None
        self.connections: set[Any] = set()
        self.executor: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(config.threads, thread_name_prefix="gantry-app")
            if config.threads
            else None
        )
        self.stopping = False
        self.batch: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        #: sends (None: a close) held until the batch of apps has run
        self.writes: list[tuple[Any, bytes | None]] = []
        self.batch_running = False
        self._clock_handle: asyncio.TimerHandle | None = None
        #: the loop's clock, refreshed by the 1 s tick; deadlines are set from it
        self.now = loop.time()

    def schedule(self, callback: Callable[..., None], *args: Any) -> None:
        """Queue ``callback`` for the batch that runs after the current reads."""
        batch = self.batch
        batch.append((callback, args))
        if len(batch) == 1:
            self.loop.call_soon(self._run_batch)

    def _run_batch(self) -> None:
        batch = self.batch
        self.batch = []
        self.batch_running = True
        for callback, args in batch:
            try:
                callback(*args)
            except Exception:
                error_log.exception("request handling failed")
        self.batch_running = False
        writes = self.writes
        if writes:
            # Then all the sends, one after another: the kernel's path stays warm too.
            self.writes = []
            for transport, data in writes:
                if data is None:
                    transport.close()
                else:
                    transport.write(data)

    def start_clock(self) -> None:
        """Once a second, off the request path: refresh ``Date`` and sweep deadlines.

        One sweep replaces a timer per connection: a request then only stores
        a number, and timeouts fire within a second of their deadline.
        """
        wall = time.time()
        self.defaults.refresh(wall)
        now = self.now = self.loop.time()
        for conn in list(self.connections):
            deadline = conn.deadline
            if deadline and now >= deadline:
                try:
                    conn.deadline_passed()
                except Exception:
                    error_log.exception("timeout handling failed")
        self._clock_handle = self.loop.call_later(1.0 - wall % 1.0, self.start_clock)

    def stop_clock(self) -> None:
        """Stop the ``Date`` refresher."""
        if self._clock_handle is not None:
            self._clock_handle.cancel()
            self._clock_handle = None
