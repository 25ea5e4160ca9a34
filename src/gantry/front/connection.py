"""One HTTP/1 client connection of the front: framing, keep-alive, the request queue,
client timeouts and back-pressure. What a request gets is the handler chain's
business (front.handlers); this module only carries it to and from the wire."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Final

from gantry.config.front_model import Location, VirtualServer
from gantry.front.exchange import FilePiece, Relay
from gantry.front.handlers import run_chain
from gantry.front.proxy import StreamedBody, spawn
from gantry.front.responses import connection_field, status_line
from gantry.front.upstream_request import connection_vars, gantry_connection_vars
from gantry.front.worker import FrontWorker
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import ProtocolError, RequestHead, RequestParser

__all__ = ["FrontConnection"]

log: Final = logging.getLogger("gantry.front")

WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
#: requests parsed ahead of the one being answered before the client is read no more
MAX_PIPELINED: Final = 16
#: a big file is sent in sendfile calls of at most this many bytes
SENDFILE_CHUNK: Final = 1 << 20
#: under TLS, a file body up to this size is read at once and written with its head
SMALL_FILE: Final = 64 * 1024

# Why reading the client is held (bits: reading resumes when none is left).
_HOLD_BODY: Final = 1  # the upstream is not taking a streamed request body
_HOLD_OUTPUT: Final = 2  # the client is not reading its responses
_HOLD_QUEUE: Final = 4  # enough requests wait already
_HOLD_DONE: Final = 8  # nothing more will be read (Connection: close, a refused request)

# What the connection's one deadline is for.
_IDLE: Final = 1  # keepalive_timeout: waiting for a next request
_HEAD: Final = 2  # client_header_timeout: a request head is arriving
_BODY: Final = 3  # client_body_timeout: between two reads of a request body
_SEND: Final = 4  # send_timeout: the client is not reading what was sent

#: the request an error before any request is about (never changed)
_NO_REQUEST: Final = RequestHead()
#: the server of a connection no request has reached yet (never used to answer)
_NO_SERVER: Final = VirtualServer()


class _FileSend:
    """A file body on its way: our own copies of the socket's and the file's descriptors,
    the pieces still to send, the span or bytes being sent."""

    __slots__ = ("out_fd", "in_fd", "pieces", "offset", "end", "data")

    def __init__(self, out_fd: int, in_fd: int, pieces: list[FilePiece]) -> None:
        self.out_fd = out_fd
        self.in_fd = in_fd
        self.pieces = deque(pieces)
        self.offset = 0
        self.end = 0
        self.data = b""


class FrontConnection(asyncio.Protocol):
    """One client connection to the front server; the exchange of its current request."""

    # Class-level defaults for what few connections set. An instance keeps its other
    # attributes (set in __init__, at most 30) in a dict whose keys all instances share:
    # past 30, CPython 3.11 gives each instance a whole dict of its own (+1.2 kB each).
    #: this connection's own uwsgi vars (standard, gantry's packet), encoded once
    _fixed_vars = b""
    _gantry_vars = b""
    #: a file being sent with sendfile(2)
    sending: _FileSend | None = None
    #: waiting for the output to drain (the pread fallback of a file body)
    _drained: asyncio.Future[None] | None = None
    #: a refusal owed once the requests before it are answered
    refusal = 0
    #: the listener's index in FrontConfig.listeners (its own routes when servers name
    #: the listeners they answer on)
    listener = 0
    #: the connection came through TLS: $scheme https, HSTS, no sendfile
    https = False
    #: Strict-Transport-Security of the current request's server (https only), CRLF-ended
    hsts_line = b""

    def __init__(self, worker: FrontWorker, listener: int = 0, https: bool = False) -> None:
        self.worker = worker
        if listener:
            self.listener = listener
        if https:
            self.https = True
        self.parser = RequestParser(self, worker.limits)
        self.transport: asyncio.Transport | None = None
        self.remote_addr = ""
        #: (remote port, server port)
        self.ports = ("", "")
        #: the head being received, and its body
        self.incoming: RequestHead | None = None
        self.body: BodyBuffer | None = None
        self.queue: deque[tuple[RequestHead, BodyBuffer | None]] = deque()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.chunked_out = False
        #: the relay (proxy) answering the current request
        self.relay: Relay | None = None
        #: the client's output is above the high-water mark
        self.paused = False
        #: why reading is held (_HOLD_* bits)
        self.holds = 0
        self.started = 0.0
        self.status = 0
        self.sent = 0
        #: (address, seconds) of each upstream attempt of the current request (None:
        #: no access log to write them to)
        self.upstream_log: list[tuple[str, float]] | None = (
            [] if worker.access_log is not None else None
        )
        self.pending_head = b""
        self.stream: StreamedBody | None = None
        #: the request being answered, its normalized path and its route
        self.head = _NO_REQUEST
        self.path = "/"
        self.server: VirtualServer = _NO_SERVER
        self.location: Location | None = None
        #: when the last response ended (or the connection opened): a graceful stop
        #: closes connections idle for a while, not one a request may be arriving on
        self.idle_since = time.monotonic()
        #: loop time past which check_deadline acts (0: none), and what it is for
        self.deadline = 0.0
        self.deadline_kind = 0

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_addr = str(peer[0])
            self.ports = (str(peer[1]), self.ports[1])
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self.ports = (self.ports[0], str(sockname[1]))
        self.worker.connections.add(self)
        # nginx gives a new connection client_header_timeout for its first request
        self.deadline = self.worker.loop.time() + self.worker.header_timeout
        self.deadline_kind = _HEAD

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser.close()  # it and llhttp point back at this connection
        self._stop_sendfile()
        self._wake_drained()
        self.worker.connections.discard(self)
        relay = self.relay
        self.relay = None
        if relay is not None:
            relay.abandon()

    def data_received(self, data: bytes) -> None:
        if self.holds & _HOLD_DONE:
            return  # bytes after the last request this connection answers
        kind = self.deadline_kind
        if kind == _IDLE:
            # the first byte of a request: client_header_timeout runs from here
            self.deadline = self.worker.now + self.worker.header_timeout
            self.deadline_kind = _HEAD
        elif kind == _BODY:
            self.deadline = self.worker.now + self.worker.body_timeout
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._refuse(exc.status)

    def _refuse(self, status: int) -> None:
        """A request that cannot be parsed: its status once every request before it is
        answered, in order; then the connection closes."""
        self._hold(_HOLD_DONE)
        if self.busy or self.queue:
            self.refusal = status
            return
        self._own_answer()
        self.error(status, close=True)

    def _own_answer(self) -> None:
        """Start an answer that no request of the client's asked for (a refusal, a
        timeout): it is about no request, and it is timed from now."""
        self.head = _NO_REQUEST
        self.started = time.monotonic()
        self.sent = 0

    def pause_writing(self) -> None:
        self.paused = True
        # send_timeout runs while the client takes nothing
        self.deadline = self.worker.loop.time() + self.worker.send_timeout
        self.deadline_kind = _SEND
        self._hold(_HOLD_OUTPUT)
        if self.relay is not None:
            self.relay.pause()

    def resume_writing(self) -> None:
        self.paused = False
        if self.deadline_kind == _SEND:
            self.deadline = 0.0
            self.deadline_kind = 0
            if not self.busy:
                self._idle()
        self._release(_HOLD_OUTPUT)
        self._wake_drained()
        if self.relay is not None:
            self.relay.resume()
        if not self.busy and self.queue and not self.closed:
            self._next()

    def _hold(self, why: int) -> None:
        if not self.holds and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.holds |= why

    def _release(self, why: int) -> None:
        if not self.holds & why:
            return
        self.holds &= ~why
        if not self.holds and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        """Stop reading the client: the upstream is not taking its body fast enough."""
        self._hold(_HOLD_BODY)

    def resume_reading(self) -> None:
        """Read the client again."""
        self._release(_HOLD_BODY)

    # RequestSink --------------------------------------------------------------------------

    def request_head(self, head: RequestHead) -> None:
        if head.target[0] != 0x2F and head.target != b"*":  # not "/...": absolute form
            _origin_form(head)
        self.incoming = head
        if head.has_body:
            self.body = BodyBuffer()
            self.deadline = self.worker.now + self.worker.body_timeout
            self.deadline_kind = _BODY
        else:
            self.body = None
            if self.deadline_kind:
                self.deadline = 0.0
                self.deadline_kind = 0
        if head.expect_continue and not self.busy and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if head.content_length and not self.busy and self._streams_body(head):
            # request_buffering = false: proxy now, the body follows as it arrives
            self.body = None
            self.stream = StreamedBody(self, head.content_length)
            self.handle(head, None, self.stream)

    def _streams_body(self, head: RequestHead) -> bool:
        route = self.worker.route(_host(head), head.path, self.listener)
        location = route[2] if route is not None else None
        return location is not None and bool(location.proxy) and not location.request_buffering

    def request_body(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(data)
        elif self.body is not None:
            self.body.append(data)

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        head, body = self.incoming, self.body
        self.incoming = self.body = None
        if self.deadline_kind == _BODY or self.deadline_kind == _HEAD:
            self.deadline = 0.0
            self.deadline_kind = 0
        if head is None:
            return
        if not head.keep_alive:
            # the last request of this connection: whatever follows is not read
            self._hold(_HOLD_DONE)
        if self.stream is not None:
            self.stream.finish()
            self.stream = None
            return
        if self.busy or self.queue or self.paused:
            # answered in turn; while the client is not reading, none is answered
            self.queue.append((head, body))
            if len(self.queue) >= MAX_PIPELINED:
                self._hold(_HOLD_QUEUE)
            return
        self.handle(head, body)

    # dispatch ----------

    def handle(
        self, head: RequestHead, body: BodyBuffer | None, stream: StreamedBody | None = None
    ) -> None:
        """Route one request and run it through the worker's handler chain."""
        self.busy = True
        self.started = time.monotonic()
        self.head = head
        self.keep_alive = head.keep_alive and not head.upgrade and not self.worker.stopping
        self.sent = 0
        if self.upstream_log:
            self.upstream_log = []
        worker = self.worker
        host = _host(head)
        route = worker.route_maps[self.listener].get((host, head.path))  # worker.route, inline
        if route is None:
            route = worker.route(host, head.path, self.listener)
            if route is None:
                self.error(400, close=True)
                return
        self.path, self.server, self.location, chain = route
        if self.https:
            hsts = self.server.hsts
            if hsts or self.hsts_line:  # set only where used: see the class's attributes
                self.hsts_line = _hsts_line(hsts)
        try:
            run_chain(chain, self, stream if stream is not None else body)
        except Exception:  # a bug must cost one request, not the connection's silence
            log.exception("%s: %s failed", self.remote_addr, self._request_line())
            if self.busy and not self.closed:
                self.relay = None
                self.error(500, close=True)

    def _next(self) -> None:
        """Answer the next queued request."""
        head, body = self.queue.popleft()
        if len(self.queue) < MAX_PIPELINED:
            self._release(_HOLD_QUEUE)
        self.handle(head, body)

    # Exchange: answers of the front's own ----------------------------------------------

    def respond(
        self, status: int, fields: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b""
    ) -> None:
        """A whole response with these fields; the request is done."""
        self.status = status
        if self.transport is not None and not self.closed:
            self.sent += len(body)
            lines = [name + b": " + value + b"\r\n" for name, value in fields]
            self.transport.write(self._head_bytes(status, lines, reason) + body)
        self._done()

    def error(self, status: int, close: bool = False) -> None:
        """A short response of the front's own (errors, refusals): its error page."""
        if close:
            self.keep_alive = False
        content_type, body = self.worker.error_pages.page(status)
        fields = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())]
        self.respond(status, fields, b"" if self.head.method == "HEAD" else body)

    def send_file(
        self, status: int, fields: list[tuple[bytes, bytes]], fd: int, pieces: list[FilePiece]
    ) -> None:
        """The head now, then ``pieces`` of ``fd`` with sendfile(2), socket to socket in the
        kernel, as fast as the client takes them (the socket's own buffer is the
        back-pressure); a pread loop when the transport has no socket."""
        self.status = status
        transport = self.transport
        if transport is None or self.closed:
            self._done()
            return
        lines = [name + b": " + value + b"\r\n" for name, value in fields]
        if self.https:
            # the bytes must go through the transport's encryption: no sendfile; a small
            # file is read at once and goes with its head in one write (no task)
            body = _small_file(fd, pieces)
            if body is not None:
                self.sent += len(body)
                transport.write(self._head_bytes(status, lines) + body)
                self._done()
                return
        transport.write(self._head_bytes(status, lines))
        sock = None if self.https else transport.get_extra_info("socket")
        if sock is None:
            spawn(self.worker.tasks, self._stream_file(os.dup(fd), pieces))
            return
        # Our own duplicates: the open-file cache may close its fd meanwhile, and the loop
        # watches the socket's writability without touching the transport's registration
        # (uvloop has no loop.sendfile).
        out_fd = os.dup(sock.fileno())
        self.sending = _FileSend(out_fd, os.dup(fd), pieces)
        self.worker.loop.add_writer(out_fd, self._sendfile_step)

    def _sendfile_step(self) -> None:
        job = self.sending
        transport = self.transport
        if job is None or transport is None:
            return
        if transport.get_write_buffer_size():
            return  # the head is still queued in the transport: keep the order
        short = False
        progress = False
        try:
            while True:
                if job.data:
                    written = os.write(job.out_fd, job.data)
                    job.data = job.data[written:]
                    progress = True
                elif job.offset < job.end:
                    count = min(job.end - job.offset, SENDFILE_CHUNK)
                    sent = os.sendfile(job.out_fd, job.in_fd, job.offset, count)
                    if sent == 0:
                        short = True  # the file shrank under us
                        break
                    job.offset += sent
                    self.sent += sent
                    progress = True
                elif job.pieces:
                    piece = job.pieces.popleft()
                    if isinstance(piece, bytes):
                        job.data = piece
                    else:
                        job.offset, job.end = piece[0], piece[1] + 1
                else:
                    break
        except BlockingIOError:
            if progress or self.deadline_kind != _SEND:
                # send_timeout runs from the last byte the client took
                self.deadline = self.worker.loop.time() + self.worker.send_timeout
                self.deadline_kind = _SEND
            return
        except OSError as exc:
            self.log_error(f"sendfile failed: {exc}")
            self._stop_sendfile()
            transport.close()
            return
        self._stop_sendfile()
        if self.deadline_kind == _SEND:
            self.deadline = 0.0
            self.deadline_kind = 0
        if short:
            self.keep_alive = False  # the announced length cannot be met
        self._done()

    def _stop_sendfile(self) -> None:
        job = self.sending
        if job is not None:
            self.sending = None
            self.worker.loop.remove_writer(job.out_fd)
            os.close(job.out_fd)
            os.close(job.in_fd)

    async def _stream_file(self, fd: int, pieces: list[FilePiece]) -> None:
        """The pieces of a file body with bounded reads, waiting while the client is behind."""
        short = False
        try:
            for piece in pieces:
                if isinstance(piece, bytes):
                    await self._write_when_drained(piece)
                    continue
                offset, end = piece[0], piece[1] + 1
                while offset < end and not self.closed:
                    chunk = os.pread(fd, min(end - offset, 256 * 1024), offset)
                    if not chunk:
                        short = True
                        break
                    await self._write_when_drained(chunk)
                    self.sent += len(chunk)
                    offset += len(chunk)
                if short or self.closed:
                    break
        finally:
            os.close(fd)
        if short:
            self.keep_alive = False
        if not self.closed:
            self._done()

    async def _write_when_drained(self, data: bytes) -> None:
        while self.paused and not self.closed:
            self._drained = self.worker.loop.create_future()
            await self._drained
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _wake_drained(self) -> None:
        waiter = self._drained
        self._drained = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ProxyClient: relayed responses --------------------------------------------------

    def start_response(
        self, status: int, reason: bytes, lines: list[bytes], has_length: bool
    ) -> None:
        """The upstream's head: ``lines`` are its fields to pass on, each ending in CRLF."""
        self.status = status
        head = self.head
        bodyless = head.method == "HEAD" or status in (204, 304) or status < 200
        self.chunked_out = False
        if not has_length and not bodyless:
            if head.version == "1.1":
                self.chunked_out = True
                if lines and lines[-1].startswith(b"Transfer-Encoding: "):
                    # the upstream's codings (see ProxyRequest.head), chunked last
                    lines[-1] = lines[-1][:-2] + b", chunked\r\n"
                else:
                    lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False
        # Held until the first body piece or the end: one write for small responses.
        self.pending_head = self._head_bytes(status, lines, reason)

    def respond_prepared(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response a handler prepared (see respond_whole); the request is done."""
        self.status = status
        transport = self.transport
        if transport is not None and not self.closed:
            self.sent += len(body)
            if self.hsts_line:
                head += self.hsts_line
            if self.keep_alive and self.head.version == "1.1":  # connection_field, inline
                transport.write(head + self.worker.defaults.lines + body)
            else:
                field = connection_field(self.keep_alive, self.head.version)
                transport.write(head + field + self.worker.defaults.lines + body)
        self._done()

    def respond_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response whose ``head`` (status line and fields, each ending in CRLF)
        passes as it is: this connection's Connection, Server and Date follow it."""
        self.status = status
        self.chunked_out = False
        self.pending_head = b""
        if self.transport is None or self.closed:
            return
        self.sent += len(body)
        self.transport.write(
            head
            + self.hsts_line
            + connection_field(self.keep_alive, self.head.version)
            + self.worker.defaults.lines
            + body
        )

    def write(self, data: bytes) -> None:
        """A piece of a relayed body (chunked when the upstream did not frame it)."""
        if self.transport is None or self.closed or not data:
            return
        self.sent += len(data)
        if self.chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
        self.transport.write(data)

    def end(self) -> None:
        """The relayed response is complete."""
        if self.transport is not None and not self.closed:
            tail = b"0\r\n\r\n" if self.chunked_out else b""
            if self.pending_head or tail:
                self.transport.write(self.pending_head + tail)
        self.pending_head = b""
        self.relay = None
        self._done()

    def broken(self, message: str) -> None:
        """The upstream broke mid-response: the head is owed, the close says the rest."""
        self.log_error(f"upstream broke mid-response: {message}")
        self.relay = None
        if self.pending_head and self.transport is not None and not self.closed:
            self.transport.write(self.pending_head)
        self.pending_head = b""
        if self.transport is not None:
            self.transport.close()

    def fail(self, status: int, message: str) -> None:
        """No upstream answered: an error of the front's own."""
        self.relay = None
        self.log_error(f"{self._request_line()}: {message}")
        self.error(status)

    def fixed_vars(self) -> bytes:
        """The uwsgi vars that are the same for each request of this connection."""
        if not self._fixed_vars:
            self._fixed_vars = connection_vars(self.remote_addr, *self.ports, self.https)
        return self._fixed_vars

    def gantry_vars(self) -> bytes:
        """The same, for gantry's own packet."""
        if not self._gantry_vars:
            self._gantry_vars = gantry_connection_vars(self.remote_addr, *self.ports, self.https)
        return self._gantry_vars

    def request_path(self, head: RequestHead) -> str:
        """The normalized path of ``head`` (the one being handled has it already)."""
        if self.head is head:
            return self.path
        route = self.worker.route(_host(head), head.path, self.listener)
        return route[0] if route is not None else "/"

    # the end of a response ----------

    def _head_bytes(self, status: int, lines: list[bytes], reason: bytes = b"") -> bytes:
        """Status line, ``lines`` (fields ending in CRLF), Connection, Server, Date."""
        if self.hsts_line:
            lines.append(self.hsts_line)
        lines.append(connection_field(self.keep_alive, self.head.version))
        lines.append(self.worker.defaults.lines)
        return status_line(status, reason) + b"".join(lines)

    def _done(self) -> None:
        counters = self.worker.counters
        counters.requests += 1
        counters.tx += self.sent
        counters.status_counts[self.status // 100 if 100 <= self.status < 600 else 5] += 1
        now = time.monotonic()
        counters.rt_total += now - self.started
        access_log = self.worker.access_log
        if access_log is not None:
            head = self.head if self.head is not _NO_REQUEST else None
            access_log.write(
                self.remote_addr, head, self.status, self.sent, self.upstream_log,
                now - self.started,
            )  # fmt: skip
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
            if not self.paused:  # else resume_writing goes on
                self.worker.loop.call_soon(self._next_if_idle)
            return
        if self.refusal:
            status, self.refusal = self.refusal, 0
            self._own_answer()
            self.error(status, close=True)
            return
        if self.deadline_kind == 0:  # _idle, inline (a next head begun: data_received's)
            self.deadline = self.worker.now + self.worker.keepalive_timeout
            self.deadline_kind = _IDLE

    def _next_if_idle(self) -> None:
        if not self.busy and self.queue and not self.closed:
            self._next()

    def _idle(self) -> None:
        """Between requests: keepalive_timeout runs until the next one starts."""
        if self.deadline_kind == 0 and self.parser.at_boundary:
            self.deadline = self.worker.now + self.worker.keepalive_timeout
            self.deadline_kind = _IDLE

    def check_deadline(self, now: float) -> None:
        """Called by the worker's sweep: act on a deadline that has passed."""
        if not self.deadline or now < self.deadline or self.closed:
            return
        kind = self.deadline_kind
        self.deadline = 0.0
        self.deadline_kind = 0
        transport = self.transport
        if transport is None:
            return
        if kind == _IDLE:
            transport.close()
        elif (kind == _HEAD or kind == _BODY) and not self.busy and not self.queue:
            self.log_error(
                "client timed out sending the request " + ("head" if kind == _HEAD else "body")
            )
            self._hold(_HOLD_DONE)
            self._own_answer()
            self.error(408, close=True)
        else:
            self.log_error("client timed out" + (" reading" if kind == _SEND else ""))
            transport.abort()

    def close(self) -> None:
        """Close the connection (what is written still goes out)."""
        if self.transport is not None:
            self.transport.close()

    def close_if_idle(self, now: float, quiet_for: float) -> None:
        """On a graceful stop: close the connection if no request is on it or on its way
        (none has started arriving, and none ended less than ``quiet_for`` ago)."""
        idle = not self.busy and not self.queue and self.incoming is None
        if (
            idle
            and self.parser.at_boundary
            and now - self.idle_since >= quiet_for
            and self.transport is not None
        ):
            self.transport.close()

    # logs ----------

    def _request_line(self) -> str:
        head = self.head
        if head is _NO_REQUEST:
            return "-"
        return f"{head.method} {head.target.decode('latin-1')} HTTP/{head.version}"

    def log_error(self, message: str) -> None:
        """One error-log line about this client's request."""
        log.error("%s: %s", self.remote_addr, message)


def _small_file(fd: int, pieces: list[FilePiece]) -> bytes | None:
    """The whole body of a file response of at most SMALL_FILE bytes, read now; None for
    a larger one, or for a file that shrank under us (the stream says so by closing)."""
    size = 0
    for piece in pieces:
        size += len(piece) if isinstance(piece, bytes) else piece[1] + 1 - piece[0]
    if size > SMALL_FILE:
        return None
    parts = []
    for piece in pieces:
        if isinstance(piece, bytes):
            parts.append(piece)
            continue
        want = piece[1] + 1 - piece[0]
        data = os.pread(fd, want, piece[0])
        if len(data) != want:
            return None
        parts.append(data)
    return b"".join(parts)


def _hsts_line(hsts: str | None) -> bytes:
    """The Strict-Transport-Security field of a server's https responses, CRLF-ended."""
    return b"Strict-Transport-Security: " + hsts.encode() + b"\r\n" if hsts else b""


def _host(head: RequestHead) -> str | None:
    for key, value in head.headers:
        if key.lower() == b"host":
            return value.decode("latin-1")
    return None


def _origin_form(head: RequestHead) -> None:
    """An absolute-form target (RFC 9112 3.2.2): its authority replaces Host (for choosing
    the server and its access rules, and for the upstream), and the target passed on is
    the origin form."""
    rest = head.target.split(b"//", 1)[-1]
    end = len(rest)
    for stop in (b"/", b"?"):
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority = rest[:end].rpartition(b"@")[2]
    fields = [(name, value) for name, value in head.headers if name.lower() != b"host"]
    fields.insert(0, (b"Host", authority))
    head.headers = fields
    head.target = head.path + (b"?" + head.query if head.query else b"")
