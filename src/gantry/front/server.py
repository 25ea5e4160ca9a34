"""The front server's client connection: route, check access, serve a file or proxy."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Final

from gantry.config.front_model import FrontConfig, Location, VirtualServer
from gantry.front.balancing import UpstreamPool
from gantry.front.proxy import KeepAlivePool, ProxyRequest, RequestBody, StreamedBody
from gantry.front.routing import Router, client_allowed, normalize_path
from gantry.front.static import (
    OpenFileCache,
    answer,
    content_type,
    multipart_parts,
    resolve,
    try_files,
)
from gantry.front.upstream import UpstreamError
from gantry.front.upstream_request import connection_vars, gantry_connection_vars
from gantry.process.shared import SlotView, WorkerCounters, store_memory
from gantry.protocol.http1 import HTTPLimits, ProtocolError, RequestHead, RequestParser
from gantry.wsgi.input import BodyBuffer
from gantry.wsgi.response import HeadDefaults

__all__ = ["FrontConnection", "FrontWorker"]

log: Final = logging.getLogger("gantry.front")

_REASONS: Final = {
    200: "OK", 204: "No Content", 206: "Partial Content", 301: "Moved Permanently",
    304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 412: "Precondition Failed",
    413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}  # fmt: skip

#: (status, upstream's reason phrase) -> status line
_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}

# Files up to this size are read into memory and sent with the head in one write.
SMALL_FILE: Final = 256 * 1024
# Hot small files keep their whole response (but Date) in memory for this long
# before the file is looked at again: nginx stats and sendfiles on each request.
HOT_FILE_SECONDS: Final = 1.0
HOT_FILE_MAX: Final = 64 * 1024
HOT_FILES: Final = 512
# Requests with these fields take the full path (validators, ranges, encodings).
_CONDITIONAL: Final = frozenset(
    {b"range", b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since",
     b"if-range", b"accept-encoding"}
)  # fmt: skip
# Buffered request bodies up to this size go to the upstream with the head in one write.
SMALL_BODY: Final = 256 * 1024
# Routes remembered per worker (cleared when full).
ROUTE_CACHE: Final = 4096
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024


class FrontWorker:
    """What one front worker's connections share: routes, pools, caches, the clock."""

    def __init__(self, config: FrontConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.router = Router(config.servers)
        self.pools = {name: UpstreamPool(upstream) for name, upstream in config.upstreams.items()}
        self.keepalive = KeepAlivePool(loop)
        #: this worker's shared-memory slot under a master (gantry top, stats, metrics)
        self.slot: SlotView | None = None
        self.counters = WorkerCounters()
        #: (Host, raw path) -> (normalized path, server, location): routing is a pure
        #: function of the two and of the configuration, which never changes in a worker
        self.routes: dict[tuple[str | None, bytes], tuple[str, VirtualServer, Location | None]] = {}
        self.files = OpenFileCache()
        self.defaults = HeadDefaults()
        self.limits = HTTPLimits(max_body_size=config.client_max_body_size)
        self.connections: set[FrontConnection] = set()
        self.access_log = None
        if config.access_log:
            self.access_log = open(config.access_log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._tick: asyncio.TimerHandle | None = None
        self._sweep: asyncio.TimerHandle | None = None
        # Upstream read deadlines are checked this often (finer for short timeouts).
        self.sweep_every = min([1.0, *(u.read_timeout / 4 for u in config.upstreams.values())])
        #: (location id, path) -> (built at, header block, body size, body)
        self.hot_files: dict[tuple[int, str], tuple[float, bytes, int, bytes]] = {}
        self.now = loop.time()
        #: set on a graceful stop: every response then says Connection: close
        self.stopping = False
        self.health_tasks: list[asyncio.Task[None]] = []

    def start_health_checks(self) -> None:
        """One prober task per upstream that asks for active health checks."""
        from gantry.front.health import run_health_checks

        for name, upstream in self.config.upstreams.items():
            if upstream.health_check is not None:
                task = self.loop.create_task(
                    run_health_checks(self.loop, upstream, self.pools[name])
                )
                self.health_tasks.append(task)

    def start_clock(self) -> None:
        """Refresh ``Date`` and the clock once a second; sweep upstream read deadlines."""
        self.defaults.refresh(time.time())
        self.now = self.loop.time()
        self._tick = self.loop.call_later(1.0, self.start_clock)
        if self.slot is not None:
            self.counters.store(self.slot)
            store_memory(self.slot)
        if self._sweep is None:
            self._sweep_deadlines()

    def _sweep_deadlines(self) -> None:
        self.keepalive.sweep()
        self._sweep = self.loop.call_later(self.sweep_every, self._sweep_deadlines)

    def close(self) -> None:
        """Release pooled connections, cached files and timers."""
        if self._tick is not None:
            self._tick.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
        for task in self.health_tasks:
            task.cancel()
        self.keepalive.close()
        self.files.close_all()


class FrontConnection(asyncio.Protocol):
    """One client connection to the front server."""

    def __init__(self, worker: FrontWorker) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.parser = RequestParser(self, worker.limits)
        self.transport: asyncio.Transport | None = None
        self.remote_addr = ""
        self.remote_port = ""
        self.server_port = ""
        #: this connection's own uwsgi vars (standard, gantry's packet), encoded once
        self._fixed_vars = b""
        self._gantry_vars = b""
        self.head: RequestHead | None = None
        self.body: BodyBuffer | None = None
        self.queue: deque[tuple[RequestHead, BodyBuffer | None]] = deque()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.chunked_out = False
        self.proxy: ProxyRequest | None = None
        self.paused = False
        self.started = 0.0
        self.status = 0
        self.sent = 0
        #: (address, seconds) of each upstream attempt of the current request
        self.upstream_log: list[tuple[str, float]] = []
        self.pending_head = b""
        self.stream: StreamedBody | None = None
        self.reading_paused = False
        #: the normalized path of the request being handled
        self.path = "/"
        #: a file being sent: (socket fd, file fd, next offset, end), both fds our own
        self.sendfile: tuple[int, int, int, int] | None = None
        #: when the last response ended (or the connection opened): a graceful stop
        #: closes connections idle for a while, not one a request may be arriving on
        self.idle_since = time.monotonic()

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_addr, self.remote_port = str(peer[0]), str(peer[1])
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self.server_port = str(sockname[1])
        self.worker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser.close()  # it and llhttp point back at this connection
        self._stop_sendfile()
        self.worker.connections.discard(self)
        proxy = self.proxy
        self.proxy = None
        if proxy is not None:
            proxy.abandon()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            if not self.busy:
                self.simple_response(exc.status, close=True)
            elif self.transport is not None:
                self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True
        if self.proxy is not None:
            self.proxy.pause()

    def resume_writing(self) -> None:
        self.paused = False
        if self.proxy is not None:
            self.proxy.resume()

    def pause_reading(self) -> None:
        """Stop reading the client: the upstream is not taking its body fast enough."""
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the client again."""
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    # RequestSink --------------------------------------------------------------------------

    def request_head(self, head: RequestHead) -> None:
        self.head = head
        self.body = BodyBuffer() if head.has_body else None
        if head.expect_continue and not self.busy and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if head.content_length and not self.busy and self._streams_body(head):
            # request_buffering = false: proxy now, the body follows as it arrives
            self.body = None
            self.stream = StreamedBody(self, head.content_length)
            self.handle(head, None, self.stream)

    def _streams_body(self, head: RequestHead) -> bool:
        route = self._route(head)
        location = route[2] if route is not None else None
        return location is not None and bool(location.proxy) and not location.request_buffering

    def _route(self, head: RequestHead) -> tuple[str, VirtualServer, Location | None] | None:
        """(normalized path, server, location) of a request; None for a path to refuse.

        Routing is a pure function of Host, the raw path and the configuration (which
        never changes in a worker), so it is remembered per worker.
        """
        host = _header(head, b"host")
        routes = self.worker.routes
        route = routes.get((host, head.path))
        if route is None:
            path = normalize_path(head.path)
            if path is None:
                return None
            server = self.worker.router.server_for(host)
            route = (path, server, self.worker.router.location_for(server, path))
            if len(routes) >= ROUTE_CACHE:
                routes.clear()
            routes[(host, head.path)] = route
        return route

    def request_body(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(data)
        elif self.body is not None:
            self.body.append(data)

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        head, body = self.head, self.body
        self.head = self.body = None
        if head is None:
            return
        if self.stream is not None:
            self.stream.finish()
            self.stream = None
            return
        if self.busy:
            self.queue.append((head, body))
            return
        self.handle(head, body)

    # dispatch ----------

    def handle(
        self, head: RequestHead, body: BodyBuffer | None, stream: StreamedBody | None = None
    ) -> None:
        """Route one request to a file or an upstream."""
        self.busy = True
        self.started = time.monotonic()
        self.request = head
        self.keep_alive = head.keep_alive and not head.upgrade and not self.worker.stopping
        self.sent = 0
        if self.upstream_log:
            self.upstream_log = []
        route = self._route(head)
        if route is None:
            self.simple_response(400, close=True)
            return
        path, server, location = route
        self.path = path
        if server.access and not client_allowed(server.access, self.remote_addr):
            self.simple_response(403)
            return
        if location is None:
            self.simple_response(404)
            return
        if location.access and not client_allowed(location.access, self.remote_addr):
            self.simple_response(403)
            return
        if location.proxy:
            upstream = self.worker.config.upstreams.get(location.proxy)
            pool = self.worker.pools.get(location.proxy)
            if upstream is None or pool is None:
                self.simple_response(502)
                return
            data: RequestBody = b""
            if stream is not None:
                data = stream
            elif body is not None and body.size <= SMALL_BODY:
                data = body.to_input().read()  # with the head in one write
                body.discard()
            elif body is not None:
                data = body  # spooled: sent in pieces, and again on a retry
            self.proxy = ProxyRequest(self, head, data, upstream, pool, location)
            self.proxy.start()
            return
        if location.root or location.alias:
            self.serve_file(head, location, path)
            return
        self.simple_response(404)

    # static files ----------

    def serve_file(self, head: RequestHead, location: Location, path: str) -> None:
        hot = self.worker.hot_files
        plain = head.method == "GET" and not any(
            name.lower() in _CONDITIONAL for name, _ in head.headers
        )
        if plain:
            entry = hot.get((id(location), path))
            if entry is not None and self.worker.now - entry[0] < HOT_FILE_SECONDS:
                # A hot small file: the head and body were built once; only Date is new.
                self.status = 200
                self.sent += entry[2]
                if self.transport is not None and not self.closed:
                    tail = b"" if self.keep_alive else b"Connection: close\r\n"
                    self.transport.write(
                        b"HTTP/1.1 200 OK\r\n"
                        + entry[1]
                        + tail
                        + self.worker.defaults.lines
                        + entry[3]
                    )
                self._done()
                return
        if location.try_files:
            fs_path, path, status = try_files(location, path)
            if status is not None:
                self.simple_response(status)
                return
        else:
            fs_path = resolve(location, location.path, path)
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in head.headers}
        result = answer(
            location,
            fs_path,
            path,
            head.method,
            headers,
            headers.get("accept-encoding", ""),
            now=self.worker.defaults.second,  # Expires counts from the Date sent
        )
        self.status = result.status
        if result.status >= 400 and not result.body and result.status not in (416, 405):
            self.simple_response(result.status)
            return
        lines = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in result.headers]
        if result.path is None or head.method == "HEAD" or result.status == 304:
            body = b"" if head.method == "HEAD" else result.body
            if result.status != 304 and not any(n.lower() == b"content-length" for n, _ in lines):
                lines.append((b"Content-Length", str(len(body)).encode()))
            self._write_head(result.status, lines, body)
            self._done()
            return
        try:
            fd, stat = self.worker.files.open(result.path)
        except OSError:
            self.simple_response(404)
            return
        size = stat.st_size
        if result.boundary:
            pieces = multipart_parts(result, size, content_type(result.path))
            out = [
                os.pread(fd, span[1] - span[0] + 1, span[0]) if span else piece
                for piece, span in pieces
            ]
            lines = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in result.headers]
            self._write_head(result.status, lines, b"".join(out))
            self._done()
            return
        start, end = result.ranges[0] if result.ranges else (0, size - 1)
        length = end - start + 1
        if length <= SMALL_FILE:
            data = os.pread(fd, length, start) if length else b""
            if plain and result.status == 200 and length <= HOT_FILE_MAX:
                block = b"".join(name + b": " + value + b"\r\n" for name, value in lines)
                if len(hot) >= HOT_FILES:
                    hot.pop(next(iter(hot)))
                hot[(id(location), path)] = (self.worker.now, block, len(data), data)
            self._write_head(result.status, lines, data)
            self._done()
            return
        self._write_head(result.status, lines, b"")
        self._send_file(fd, start, length)

    def _send_file(self, fd: int, offset: int, length: int) -> None:
        """The body of a big file with sendfile(2), socket to socket in the kernel, as fast as
        the client takes it (the socket's own buffer is the back-pressure); a pread loop when
        the transport has no socket."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            self.loop.create_task(self._stream_file(fd, offset, length))
            return
        # Our own duplicates: the open-file cache may close its fd meanwhile, and the loop
        # watches the socket's writability without touching the transport's registration
        # (uvloop has no loop.sendfile).
        out_fd = os.dup(sock.fileno())
        self.sendfile = (out_fd, os.dup(fd), offset, offset + length)
        self.loop.add_writer(out_fd, self._sendfile_step)

    def _sendfile_step(self) -> None:
        state = self.sendfile
        transport = self.transport
        if state is None or transport is None:
            return
        if transport.get_write_buffer_size():
            return  # the head is still queued in the transport: keep the order
        out_fd, in_fd, offset, end = state
        try:
            while offset < end:
                sent = os.sendfile(out_fd, in_fd, offset, min(end - offset, 1 << 20))
                if sent == 0:
                    break  # the file shrank under us
                offset += sent
                self.sent += sent
        except BlockingIOError:
            self.sendfile = (out_fd, in_fd, offset, end)
            return
        except OSError as exc:
            self.log_error(f"sendfile failed: {exc}")
            self._stop_sendfile()
            transport.close()
            return
        self._stop_sendfile()
        if offset < end:
            self.keep_alive = False  # the announced length cannot be met
        self._done()

    def _stop_sendfile(self) -> None:
        state = self.sendfile
        if state is not None:
            self.sendfile = None
            self.loop.remove_writer(state[0])
            os.close(state[0])
            os.close(state[1])

    async def _stream_file(self, fd: int, offset: int, length: int) -> None:
        transport = self.transport
        while length > 0 and transport is not None and not self.closed:
            while self.paused and not self.closed:
                await asyncio.sleep(0.005)
            chunk = os.pread(fd, min(length, 256 * 1024), offset)
            if not chunk:
                break
            transport.write(chunk)
            self.sent += len(chunk)
            offset += len(chunk)
            length -= len(chunk)
        if length > 0:
            self.keep_alive = False
        self._done()

    # proxied responses (called by ProxyRequest) -------------------------------------------------

    def start_proxied_response(
        self,
        proxy: ProxyRequest,
        status: int,
        reason: bytes,
        lines: list[bytes],
        has_length: bool,
    ) -> None:
        """The upstream's head: ``lines`` are its fields to pass on, each ending in CRLF."""
        self.status = status
        bodyless = self.request.method == "HEAD" or status in (204, 304) or status < 200
        self.chunked_out = False
        if not has_length and not bodyless:
            if self.request.version == "1.1":
                self.chunked_out = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False
        # Held until the first body piece or the end: one write for small responses.
        self.pending_head = self._head(status, lines, reason)

    def relay_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole proxied response whose ``head`` (status line and fields, each ending in
        CRLF) passes as it is: this connection's Connection, Server and Date follow it."""
        self.status = status
        self.chunked_out = False
        self.pending_head = b""
        if self.transport is None or self.closed:
            return
        self.sent += len(body)
        self.transport.write(head + self._connection_field() + self.worker.defaults.lines + body)

    def relay_body(self, proxy: ProxyRequest, data: bytes) -> None:
        if self.transport is None or self.closed or not data:
            return
        self.sent += len(data)
        if self.chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
        self.transport.write(data)

    def proxied_response_done(self, proxy: ProxyRequest) -> None:
        if self.transport is not None and not self.closed:
            tail = b"0\r\n\r\n" if self.chunked_out else b""
            if self.pending_head or tail:
                self.transport.write(self.pending_head + tail)
        self.pending_head = b""
        self.proxy = None
        self._done()

    def proxied_response_broken(self, proxy: ProxyRequest, error: UpstreamError) -> None:
        self.log_error(f"upstream broke mid-response: {error.reason}")
        self.proxy = None
        if self.pending_head and self.transport is not None and not self.closed:
            self.transport.write(self.pending_head)  # the head is owed; the close says the rest
        self.pending_head = b""
        if self.transport is not None:
            self.transport.close()

    def proxy_failed(self, error: UpstreamError) -> None:
        self.proxy = None
        self.log_error(f"{self._request_line()}: {error.reason}")
        self.simple_response(error.status)

    def fixed_vars(self) -> bytes:
        """The uwsgi vars that are the same for each request of this connection."""
        if not self._fixed_vars:
            self._fixed_vars = connection_vars(self.remote_addr, self.remote_port, self.server_port)
        return self._fixed_vars

    def gantry_vars(self) -> bytes:
        """The same, for gantry's own packet."""
        if not self._gantry_vars:
            self._gantry_vars = gantry_connection_vars(
                self.remote_addr, self.remote_port, self.server_port
            )
        return self._gantry_vars

    def request_path(self, head: RequestHead) -> str:
        """The normalized path of ``head`` (the one being handled has it already)."""
        return self.path if self.request is head else (normalize_path(head.path) or "/")

    # writing ----------

    def _encode_head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b""
    ) -> bytes:
        return self._head(
            status, [name + b": " + value + b"\r\n" for name, value in headers], reason
        )

    def _head(self, status: int, lines: list[bytes], reason: bytes = b"") -> bytes:
        """Status line, ``lines`` (fields ending in CRLF), Connection, Server, Date."""
        status_line = _STATUS_LINES.get((status, reason))
        if status_line is None:
            text = reason.decode("latin-1") or _REASONS.get(status, "Unknown")
            status_line = f"HTTP/1.1 {status} {text}\r\n".encode("latin-1")
            if len(_STATUS_LINES) < 256:
                _STATUS_LINES[(status, reason)] = status_line
        lines.append(self._connection_field())
        lines.append(self.worker.defaults.lines)
        return status_line + b"".join(lines)

    def _connection_field(self) -> bytes:
        """Connection: close when this connection ends after the response; keep-alive for an
        HTTP/1.0 client whose connection stays; nothing otherwise."""
        if not self.keep_alive:
            return b"Connection: close\r\n"
        if self.request.version == "1.0":
            return b"Connection: keep-alive\r\n"
        return b""

    def _write_head(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b""
    ) -> None:
        if self.transport is None or self.closed:
            return
        self.sent += len(body)
        self.transport.write(self._encode_head(status, headers, reason) + body)

    def simple_response(self, status: int, close: bool = False) -> None:
        """A short response of the front's own (errors, refusals)."""
        if close:
            self.keep_alive = False
        if not hasattr(self, "request"):
            self.request = RequestHead()
        self.status = status
        page = self.worker.config.error_pages.get(status)
        body = f"{status} {_REASONS.get(status, '')}\n".encode()
        content_type = b"text/plain; charset=utf-8"
        if page:
            try:
                with open(page, "rb") as handle:
                    body = handle.read()
                content_type = b"text/html; charset=utf-8"
            except OSError:
                pass
        if self.request.method == "HEAD":
            body_out = b""
        else:
            body_out = body
        headers = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())]
        self._write_head(status, headers, body_out)
        self._done()

    def _done(self) -> None:
        counters = self.worker.counters
        counters.requests += 1
        counters.tx += self.sent
        counters.status_counts[self.status // 100 if 100 <= self.status < 600 else 5] += 1
        now = time.monotonic()
        counters.rt_total += now - self.started
        if self.worker.access_log is not None:
            self._log_access()
        self.busy = False
        self.idle_since = now
        if self.stream is not None:
            # answered before the whole body came: the rest of it cannot be trusted
            self.stream = None
            self.keep_alive = False
        transport = self.transport
        if transport is None or self.closed:
            return
        if not self.keep_alive:
            transport.close()
            return
        if self.queue:
            head, body = self.queue.popleft()
            self.loop.call_soon(self.handle, head, body)

    # logs ----------

    def _request_line(self) -> str:
        head = getattr(self, "request", None)
        if head is None:
            return "-"
        return f"{head.method} {head.target.decode('latin-1')} HTTP/{head.version}"

    def log_error(self, message: str) -> None:
        """One error-log line about this client's request."""
        log.error("%s: %s", self.remote_addr, message)

    def _log_access(self) -> None:
        """nginx's combined format, then upstream_addr, upstream_response_time and
        request_time (", " between the attempts of a retried request; "-" for no upstream)."""
        stream = self.worker.access_log
        if stream is None:
            return
        head = getattr(self, "request", None)
        referer = agent = "-"
        if head is not None:
            referer = _escape(_header(head, b"referer") or "-")
            agent = _escape(_header(head, b"user-agent") or "-")
        elapsed = time.monotonic() - self.started
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        addresses = ", ".join(address for address, _ in self.upstream_log) or "-"
        times = ", ".join(f"{seconds:.3f}" for _, seconds in self.upstream_log) or "-"
        stream.write(
            f'{self.remote_addr} - - [{stamp}] "{_escape(self._request_line())}" {self.status} '
            f'{self.sent} "{referer}" "{agent}" "{addresses}" "{times}" {elapsed:.3f}\n'
        )


def _escape(text: str) -> str:
    """As nginx escapes log variables: '"', '\\' and non-printable bytes become \\xHH."""
    if text.isprintable() and text.isascii() and '"' not in text and "\\" not in text:
        return text
    return "".join(
        f"\\x{byte:02X}" if byte < 0x20 or byte > 0x7E or byte in (0x22, 0x5C) else chr(byte)
        for byte in text.encode("latin-1", "replace")
    )


def _header(head: RequestHead, name: bytes) -> str | None:
    for key, value in head.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
