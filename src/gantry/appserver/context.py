"""What every connection of one worker shares: the app, settings, logs and the clock."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Final

from gantry.config import ServeConfig
from gantry.http.head import HeadDefaults
from gantry.process.shared import STATUS_CODES, SlotView, slot_line, store_memory
from gantry.protocol.http1 import RequestHead
from gantry.wsgi.errors import ErrorStream
from gantry.wsgi.response import FileWrapper

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

error_log: Final = logging.getLogger("gantry.error")

STATUS_BUSY: Final = STATUS_CODES["busy"]
STATUS_IDLE: Final = STATUS_CODES["idle"]
# The slot's line for a request whose vars carry no method or URI.
_UWSGI_LINE: Final = slot_line("uwsgi request")
# Counters go to shared memory after a batch at most this often (and each second).
FLUSH_EVERY: Final = 0.05

_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


class AccessLog:
    """Access log in the combined format (as nginx's and Apache's)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def reopen(self, path: str) -> None:
        """Open ``path`` anew (the old file was rotated away)."""
        old = self._stream
        self._stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        old.close()

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


def uwsgi_request_line(packet: object) -> bytes:
    """The slot line of a uwsgi request from its vars (REQUEST_METHOD and REQUEST_URI,
    or PATH_INFO and QUERY_STRING), as ``gantry serve --http`` records an HTTP one."""
    method = uri = path = query = ""
    if isinstance(packet, dict):
        method = packet.get("REQUEST_METHOD", "")
        uri = packet.get("REQUEST_URI", "")
        path = packet.get("PATH_INFO", "")
        query = packet.get("QUERY_STRING", "")
    elif isinstance(packet, list):
        for key, value in packet:
            if key == b"REQUEST_METHOD":
                method = value.decode("latin-1")
            elif key == b"REQUEST_URI":
                uri = value.decode("latin-1")
            elif key == b"PATH_INFO":
                path = value.decode("latin-1")
            elif key == b"QUERY_STRING":
                query = value.decode("latin-1")
    if not uri and path:
        uri = f"{path}?{query}" if query else path
    if not method and not uri:
        return _UWSGI_LINE
    return slot_line(f"{method or '-'} {uri or '-'}")


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
        slot: SlotView | None = None,
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
        #: this worker's shared-memory slot (None when no master runs us)
        self.slot = slot
        #: counters of this worker, copied to the slot after each batch and each second
        self.requests = 0
        self.exceptions = 0
        self.tx = 0
        self.status_counts = [0, 0, 0, 0, 0, 0]
        self.rt_total = 0.0
        #: record each request's start and line (for harakiri and the stats' current request)
        self.track_requests = slot is not None and bool(
            config.harakiri or config.stats or config.metrics
        )
        jitter = random.randint(0, config.max_requests_jitter) if config.max_requests_jitter else 0
        self.max_requests = config.max_requests + jitter if config.max_requests else 0
        #: set by the worker: begin a graceful stop of this worker
        self.request_stop: Callable[[], None] = lambda: None
        self._recycling = False
        #: the line and start (µs) of the request the tracked batch is running
        self.current_request: tuple[bytes, int] = (b"", 0)
        #: requests app threads run: connection -> ((line, start µs), perf_counter start)
        self.in_threads: dict[object, tuple[tuple[bytes, int], float]] = {}
        self.batch: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        #: sends (None: a close) held until the batch of apps has run
        self.writes: list[tuple[Any, bytes | None]] = []
        self.batch_running = False
        self._clock_handle: asyncio.TimerHandle | None = None
        #: the loop's clock, refreshed by the 1 s tick; deadlines are set from it
        self.now = loop.time()
        #: when the counters last went to shared memory
        self.flushed_at = 0.0

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
        started = time.perf_counter()
        if self.track_requests:
            self._run_tracked(batch)
        else:
            for callback, args in batch:
                try:
                    callback(*args)
                except Exception:
                    error_log.exception("request handling failed")
        if self.executor is None:
            # (with app threads, a request's time is counted when its thread is done)
            self.rt_total += time.perf_counter() - started
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
        if self.slot is not None:
            now = self.loop.time()
            if now - self.flushed_at >= FLUSH_EVERY:
                self.flushed_at = now
                self.flush_counters()
            self.check_recycle()

    def check_recycle(self) -> None:
        """Begin recycling this worker once it has served ``max_requests``; called after
        each batch and after each request an app thread finished (outside any batch)."""
        if (
            self.max_requests
            and self.requests >= self.max_requests
            and not self.stopping
            and not self._recycling
        ):
            self._recycling = True
            error_log.info("max-requests (%d) reached: recycling this worker", self.requests)
            self.request_stop()

    def _run_tracked(self, batch: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
        """The batch with each request's start and line in the slot, for harakiri."""
        slot = self.slot
        assert slot is not None
        for callback, args in batch:
            head = args[0] if args else None
            if isinstance(head, RequestHead):
                line = slot_line(f"{head.method} {head.target.decode('latin-1')}")
            else:
                # a uwsgi connection schedules its request with the packet's vars
                line = uwsgi_request_line(head)
            start_us = int(time.time() * 1e6)
            self.current_request = (line, start_us)
            slot.begin_request(line, start_us, STATUS_BUSY)
            try:
                callback(*args)
            except Exception:
                error_log.exception("request handling failed")
        self._show_threads()

    def thread_request_started(self, conn: object) -> None:
        """An app thread took the request being run: keep its line and start, so the
        slot shows it (and harakiri sees it) after the batch has moved on."""
        self.in_threads[conn] = (self.current_request, time.perf_counter())

    def thread_request_done(self, conn: object) -> None:
        """The app thread's request ``conn`` ran is over (it was counted by now)."""
        entry = self.in_threads.pop(conn, None)
        if entry is not None:
            self.rt_total += time.perf_counter() - entry[1]
        if self.track_requests:
            self._show_threads()
        if self.slot is not None:
            self.check_recycle()

    def _show_threads(self) -> None:
        """The slot shows the oldest request an app thread still runs, else idle: one
        slot per worker, and harakiri kills the worker for its oldest request."""
        slot = self.slot
        assert slot is not None
        oldest: tuple[bytes, int] | None = None
        for (line, start_us), _ in self.in_threads.values():
            if start_us and (oldest is None or start_us < oldest[1]):
                oldest = (line, start_us)
        if oldest is None:
            slot.request_start_us = 0
            slot.status = STATUS_IDLE
        else:
            slot.begin_request(oldest[0], oldest[1], STATUS_BUSY)

    def flush_counters(self) -> None:
        """Copy this worker's counters into its shared-memory slot."""
        slot = self.slot
        if slot is None:
            return
        slot.store_counters(
            self.requests, self.exceptions, self.tx, self.status_counts, self.rt_total
        )

    def _check_memory(self) -> None:
        slot = self.slot
        if slot is None:
            return
        rss = store_memory(slot)
        limit = self.config.reload_on_rss
        if limit and rss > limit * 1024 * 1024 and not self.stopping:
            error_log.warning(
                "reload-on-rss: %d MiB > %d MiB: recycling this worker", rss // (1024 * 1024), limit
            )
            self.request_stop()

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log file (after logrotate moved it)."""
        path = self.config.access_log
        if self.access_log is not None and path and path != "-":
            self.access_log.reopen(path)
        for handler in logging.getLogger("gantry").handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()  # reopened on the next record
        error_log.info("log files reopened")

    def start_clock(self) -> None:
        """Once a second, off the request path: refresh ``Date`` and sweep deadlines.

        One sweep replaces a timer per connection: a request then only stores
        a number, and timeouts fire within a second of their deadline.
        """
        wall = time.time()
        self.defaults.refresh(wall)
        if self.slot is not None:
            self.flush_counters()
            self._check_memory()
        now = self.now = self.loop.time()
        for conn in list(self.connections):
            deadline = conn.deadline
            try:
                if deadline and now >= deadline:
                    conn.deadline_passed()
                if conn.write_paused:
                    conn.check_send(now)
            except Exception:
                error_log.exception("timeout handling failed")
        self._clock_handle = self.loop.call_later(1.0 - wall % 1.0, self.start_clock)

    def stop_clock(self) -> None:
        """Stop the ``Date`` refresher."""
        if self._clock_handle is not None:
            self._clock_handle.cancel()
            self._clock_handle = None
