"""One HTTP/2 client connection of the front (RFC 9113), on gantry.protocol.http2's codec.

Each stream is an :class:`~gantry.front.exchange.Exchange` and drives the same handler
chain as an HTTP/1 request, so access rules, limits, rewrites, the cache, static files,
the proxy and compression work alike on both. This module carries streams to and from
the wire: flow control both ways (a request body's window is opened as the body is
taken; a response goes out as the client's windows allow, and a relay whose client
stream is behind is paused), timeouts, and the defences an HTTP/2 server needs
(Rapid Reset, CONTINUATION and HPACK floods, SETTINGS and PING floods, stalled windows):
each closes the connection with a GOAWAY naming the cause. A stream past the concurrent
streams allowed is refused alone (REFUSED_STREAM) and counted as a reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from gantry.config.front_model import Location, VirtualServer
from gantry.front.answering import (
    admit_address,
    at_ceiling,
    error_page,
    hsts_line,
    peer_addresses,
    record_request,
    release_address,
    request_host,
    small_file,
)
from gantry.front.compress import ResponseCoder
from gantry.front.exchange import FilePiece, Relay
from gantry.front.handlers import run_chain
from gantry.front.headers import added_fields
from gantry.front.proxy import StreamedBody
from gantry.front.upstream_request import connection_vars, gantry_connection_vars
from gantry.front.worker import FrontWorker
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import RequestHead
from gantry.protocol.http2 import (
    CANCEL,
    CONNECTION_FIELDS,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    ConnectionFailed,
    Data,
    GoawayReceived,
    PingReceived,
    Request,
    Reset,
    ServerConnection,
    SettingsChanged,
    WindowOpened,
    error_name,
)

__all__ = ["Http2Connection", "Http2Stream"]

#: the server of a stream no route was found for (never used to answer)
_NO_SERVER: Final = VirtualServer()

log: Final = logging.getLogger("gantry.front")

#: the receive window each stream starts with, and the connection's (bytes): what a
#: client may send before the front has taken any of it
STREAM_WINDOW: Final = 256 * 1024
CONNECTION_WINDOW: Final = 1024 * 1024
#: a stream's response bytes held for the client past which its relay is paused, and
#: below which it goes on
STREAM_HIGH_WATER: Final = 256 * 1024
STREAM_LOW_WATER: Final = 64 * 1024
#: a file body is read in pieces of this size as the client's window allows
FILE_PIECE: Final = 64 * 1024
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
#: frames a client may send in one second before it is told to calm down: SETTINGS,
#: PING (each costs an answer); streams it resets is 2x the concurrent streams
FLOOD_LIMIT: Final = 100

# What the flood counts are of.
_RESETS: Final = 0
_SETTINGS: Final = 1
_PINGS: Final = 2

#: the common statuses, encoded once
_STATUS: Final = {
    status: str(status).encode()
    for status in (200, 204, 206, 301, 302, 304, 400, 403, 404, 500, 502)
}
#: prepared response heads (a hot static file's, a cached response's: the same bytes
#: object request after request) as HTTP/2 fields, parsed once; emptied when full (at
#: most PREPARED_HEADS heads of PREPARED_HEAD_SIZE bytes are kept)
_PREPARED: Final[dict[bytes, list[tuple[bytes, bytes]]]] = {}
PREPARED_HEADS: Final = 256
PREPARED_HEAD_SIZE: Final = 4096
#: the request methods, decoded once
_METHODS: Final = {
    method.encode(): method
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT")
}


class _FileSource:
    """A file body read as the client's window opens: our own copy of the descriptor,
    the pieces still to read, the span being read."""

    __slots__ = ("fd", "pieces", "offset", "end", "coder")

    def __init__(self, fd: int, pieces: list[FilePiece], coder: ResponseCoder | None) -> None:
        self.fd = fd
        self.pieces = deque(pieces)
        self.offset = 0
        self.end = 0
        self.coder = coder

    def read(self) -> tuple[bytes, bool]:
        """The next piece of the body (compressed when it is) and whether it was the last;
        raises EOFError for a file that shrank under us."""
        while True:
            if self.offset < self.end:
                data = os.pread(self.fd, min(self.end - self.offset, FILE_PIECE), self.offset)
                if not data:
                    raise EOFError
                self.offset += len(data)
            elif self.pieces:
                piece = self.pieces.popleft()
                if isinstance(piece, bytes):
                    data = piece
                else:
                    self.offset, self.end = piece[0], piece[1] + 1
                    continue
            else:
                return (self.coder.finish() if self.coder is not None else b""), True
            if self.coder is not None:
                data = self.coder.piece(data, False)
            if data:
                return data, False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Http2Stream:
    """One request of an HTTP/2 connection, and the way its answer goes back: the
    exchange the handler chain talks to."""

    def __init__(self, conn: Http2Connection, stream_id: int, head: RequestHead) -> None:
        # all set here: compiled, the class default this had for ``relay`` was not seen
        # (AttributeError in gone())
        self.relay: Relay | None = None
        self.coder: ResponseCoder | None = None
        self.original: RequestHead | None = None
        self.limit_status = ""
        self.cache_status = "-"
        self.releases: list[Callable[[], None]] | None = None
        #: the response's file body still to read
        self.file: _FileSource | None = None
        #: the handler chain has the request; it has answered (the accounting is done)
        self.dispatched = False
        self.answered = False
        #: the response's head went out; its last byte went out (END_STREAM)
        self.head_sent = False
        self.finished = False
        #: the client's side ended (END_STREAM, or a reset)
        self.remote_ended = False
        #: the response ends once ``out`` is sent
        self.ending = False
        #: the client reset the stream, or the connection is gone
        self.closed = False
        #: the client is behind: the relay is paused
        self.paused = False
        #: request body bytes taken from the client but not yet acknowledged (the upstream
        #: is behind: the window stays shut)
        self.unacked = 0
        self.reading_paused = False
        self.keep_alive = True
        self.conn = conn
        self.stream_id = stream_id
        self.head = head
        self.remote_addr = conn.remote_addr
        self.peer_addr = conn.peer_addr
        self.peer_trusted = conn.peer_trusted
        self.https = conn.https
        self.ports = conn.ports
        self.path = "/"
        self.server: VirtualServer = _NO_SERVER
        self.location: Location | None = None
        self.status = 0
        self.sent = 0
        self.started = time.monotonic()
        self.upstream_log: list[tuple[str, float]] | None = (
            [] if conn.worker.access_log is not None else None
        )
        self.hsts = b""
        #: the request body being buffered, or streamed to the upstream
        self.body: BodyBuffer | None = None
        self.stream: StreamedBody | None = None
        self.received = 0
        #: response bytes waiting for the client's window
        self.out: deque[bytes] = deque()
        self.out_size = 0
        self.last_read = conn.worker.now

    # the request ----------

    def request_path(self, head: RequestHead) -> str:
        """The normalized path of ``head`` (the one being handled has it already)."""
        if self.head is head:
            return self.path
        route = self.conn.worker.route(
            request_host(head, self.conn.worker.field_memo), head.path, self.conn.listener
        )
        return route[0] if route is not None else "/"

    def reroute(self, head: RequestHead, path: str, location: Location | None) -> None:
        """The request goes on as ``head`` (rewritten) in ``location``."""
        if self.original is None:
            self.original = self.head
        self.head = head
        self.path = path
        self.location = location

    def fixed_vars(self) -> bytes:
        """The uwsgi vars that are the same for each request of this client."""
        return self.conn.vars_for(self.remote_addr, False)

    def gantry_vars(self) -> bytes:
        """The same, for gantry's own packet."""
        return self.conn.vars_for(self.remote_addr, True)

    def pause_reading(self) -> None:
        """The upstream is behind on the request body: its window stays shut."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        """The upstream took the body so far: open the window for what it took."""
        self.reading_paused = False
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.acknowledge(self.stream_id, unacked)
            self.conn.flush_soon()

    def at_end(self, release: Callable[[], None]) -> None:
        """Call ``release`` once when this request ends."""
        if self.releases is None:
            self.releases = []
        self.releases.append(release)

    def log_error(self, message: str) -> None:
        """One error-log line about this request."""
        log.error("%s: HTTP/2 stream %d: %s", self.remote_addr, self.stream_id, message)

    # answers of the front's own ----------

    def respond(
        self, status: int, fields: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b""
    ) -> None:
        """A whole response with these fields; the request is done."""
        lines = [name + b": " + value + b"\r\n" for name, value in fields]
        coder = self.coder
        if coder is not None:
            self.coder = None
            body = coder.whole(status, lines, body)
        self._whole(status, b"".join(lines), body)

    def respond_refused(self, head: bytes, body: bytes) -> None:
        """The blocklist's 403 (a stream's request bytes are never seen again whole)."""
        self.respond_prepared(403, head, body)

    def respond_prepared(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response whose status line and fields a handler prepared."""
        coder = self.coder
        if coder is not None:
            self.coder = None
            head, body = coder.whole_head(status, head, body)
            self._whole(status, head.partition(b"\r\n")[2], body)
            return
        fields = _PREPARED.get(head)
        if fields is None:
            fields = []
            _add_fields(fields, head.partition(b"\r\n")[2])
            if len(head) <= PREPARED_HEAD_SIZE:
                if len(_PREPARED) >= PREPARED_HEADS:
                    _PREPARED.clear()
                _PREPARED[head] = fields
        self._whole(status, b"", body, fields)

    def respond_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole relayed response (status line and fields in ``head``); ``end`` follows."""
        coder = self.coder
        if coder is not None:
            self.coder = None
            head, body = coder.whole_head(status, head, body)
        self.status = status
        if self._send_head(status, head.partition(b"\r\n")[2], not body and self._bodyless()):
            self._queue(body)

    def _whole(
        self,
        status: int,
        block: bytes,
        body: bytes,
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        if self.head.method == "HEAD":
            body = b""
        if self._send_head(status, block, not body, fields):
            self._queue(body)
            self.ending = True
            self.conn.pump(self)
        self._done()

    def error(
        self, status: int, close: bool = False, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """An error response of the front's own (its error page); ``close`` asks nothing of
        the other streams."""
        fields, body = error_page(self.conn.worker, status, extra)
        self.respond(status, fields, body)

    def fail(
        self, status: int, message: str, fields: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """No upstream answered: an error of the front's own (with ``fields``)."""
        self.relay = None
        self.log_error(f"{self._request_line()}: {message}")
        self.error(status, False, fields)

    def drop(self) -> None:
        """No answer (nginx's 444): the stream is reset."""
        self.status = 444
        self.conn.reset(self, REFUSED_STREAM)
        self._done()

    def send_file(
        self, status: int, fields: list[tuple[bytes, bytes]], fd: int, pieces: list[FilePiece]
    ) -> None:
        """A file body: read whole when small, else in pieces as the client's window opens."""
        self.status = status
        lines = [name + b": " + value + b"\r\n" for name, value in fields]
        coder = self.coder
        self.coder = None
        if coder is not None and not coder.start(status, lines):
            coder = None
        head_only = self.head.method == "HEAD"
        if coder is None and not head_only:
            body = small_file(fd, pieces)
            if body is not None:
                if self._send_head(status, b"", not body, _fields(fields)):
                    self._queue(body)
                    self.ending = True
                    self.conn.pump(self)
                self._done()
                return
        if not self._send_head(status, b"".join(lines), head_only):
            self._done()
            return
        if head_only:
            self._done()
            return
        # done (logged with its bytes) once the file is read: see Http2Connection.pump
        self.file = _FileSource(os.dup(fd), pieces, coder)
        self.ending = True
        self.conn.pump(self)

    # relayed responses ----------

    def interim(self, status: int, reason: bytes, lines: list[bytes]) -> None:
        """An upstream's 102 or 103: not passed on over HTTP/2 (nginx passes none on
        either); the final head follows."""

    def start_response(
        self, status: int, reason: bytes, lines: list[bytes], has_length: bool
    ) -> None:
        """The upstream's head: ``lines`` are its fields to pass on."""
        self.status = status
        coder = self.coder
        if coder is not None and not self._bodyless():
            if not coder.start(status, lines):
                self.coder = None
        else:
            self.coder = None
        self._send_head(status, b"".join(lines), False)

    def write(self, data: bytes) -> None:
        """A piece of a relayed body."""
        if self.closed or not data:
            return
        coder = self.coder
        if coder is not None:
            data, first = coder.stream(data)
            if first:  # flushed once this turn's pieces are in (see ResponseCoder.stream)
                self.conn.worker.loop.call_soon(self._flush_coder, coder)
            if not data:
                return
        self._send_piece(data)

    def _flush_coder(self, coder: ResponseCoder) -> None:
        if coder is self.coder and not self.closed:
            data = coder.flush()
            if data:
                self._send_piece(data)

    def _send_piece(self, data: bytes) -> None:
        self._queue(data)
        self.conn.pump(self)
        if self.out_size >= STREAM_HIGH_WATER and not self.paused:
            self.paused = True
            if self.relay is not None:
                self.relay.pause()

    def end(self) -> None:
        """The relayed response is complete."""
        coder = self.coder
        if coder is not None:
            self.coder = None
            self._queue(coder.finish())
        self.relay = None
        if not self.closed:
            self.ending = True
            self.conn.pump(self)
        self._done()

    def broken(self, message: str) -> None:
        """The upstream broke mid-response: the stream is reset."""
        self.log_error(f"upstream broke mid-response: {message}")
        self.relay = None
        self.coder = None
        self.conn.reset(self, INTERNAL_ERROR)
        self._done()

    # the wire ----------

    def _bodyless(self) -> bool:
        status = self.status
        return self.head.method == "HEAD" or status in (204, 304) or status < 200

    def _send_head(
        self,
        status: int,
        block: bytes,
        end: bool,
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        """The response head (``fields``, as HTTP/2 has them, then ``block``'s: each
        ending in CRLF) with add_header's, HSTS, Server and Date; False when the stream
        can take nothing more."""
        if self.closed or self.head_sent:
            return False
        location = self.location
        rules = location.add_header if location is not None else self.server.add_header
        if rules:
            block += added_fields(rules, status, self)
        if self.hsts:
            block += self.hsts
        code = _STATUS.get(status)
        headers = [(b":status", code if code is not None else str(status).encode())]
        if fields is not None:
            headers += fields
        if block:
            _add_fields(headers, block)
        headers += self.conn.default_fields()
        self.head_sent = True
        if end:
            self.ending = True
            self.finished = True
        return self.conn.send_head(self, headers, end)

    def _queue(self, data: bytes) -> None:
        if data and not self.closed and not self.finished:
            self.out.append(data)
            self.out_size += len(data)
            self.sent += len(data)

    def _done(self) -> None:
        """The request is answered: its limits released, its accounting and log line."""
        if self.answered:
            return
        self.answered = True
        self._run_releases()
        logged = self.original if self.original is not None else self.head
        record_request(
            self.conn.worker, self.remote_addr, logged, self.status, self.sent, self.started,
            self.upstream_log, self.limit_status, self.cache_status, -1, self.ports[0],
        )  # fmt: skip
        self.conn.counters_streams()
        if self.stream is not None and not self.stream.complete:
            self.stream = None  # answered before the whole body came: the rest is dropped

    def _run_releases(self) -> None:
        releases = self.releases
        self.releases = None
        for release in releases or ():
            try:
                release()
            except Exception:  # a count left held must not cost the connection
                log.exception("%s: releasing a limit failed", self.remote_addr)

    def gone(self) -> None:
        """The client reset the stream or the connection closed: nothing more is sent."""
        if self.closed:
            return
        self.closed = True
        self.out.clear()
        self.out_size = 0
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.body is not None:
            self.body.discard()
            self.body = None
        self._run_releases()
        relay = self.relay
        self.relay = None
        if relay is not None:
            relay.abandon()

    def _request_line(self) -> str:
        head = self.head
        return f"{head.method} {head.target.decode('latin-1')} HTTP/2.0"


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 client connection: its streams, flow control, timeouts and defences."""

    def __init__(
        self, worker: FrontWorker, listener: int = 0, https: bool = False, preface: bool = True
    ) -> None:
        self.worker = worker
        self.listener = listener
        self.https = https
        self._fixed_vars = b""
        self._gantry_vars = b""
        self._vars_addr = ""
        self.counted = ""
        self.peer_trusted = False
        config = worker.config
        self.max_streams = config.http2_max_concurrent_streams
        self.idle_timeout = config.http2_idle_timeout
        # the header limit bounds both a block's frames (a CONTINUATION flood) and
        # what it decodes to (an HPACK bomb)
        self.h2 = ServerConnection(
            self.max_streams,
            config.http2_max_header_size,
            STREAM_WINDOW,
            CONNECTION_WINDOW,
            preface,
        )
        self.transport: asyncio.Transport | None = None
        self.remote_addr = ""
        self.peer_addr = ""
        self.ports = ("", "")
        self.streams: dict[int, Http2Stream] = {}
        #: streams with response bytes waiting for a window
        self.waiting: set[Http2Stream] = set()
        self.closed = False
        self.goaway_sent = False
        self.paused = False
        self.reading_paused = False
        self.in_receive = False
        self.flush_planned = False
        now = worker.loop.time()
        self.idle_since = now
        self.last_sent = now
        # the first check: a connection that sends nothing is closed as an idle one
        self.deadline = now + min(self.idle_timeout, worker.header_timeout)
        #: the defences' counts in the second that began at ``window_start``
        self.window_start = now
        self.flood_counts = [0, 0, 0]
        self.defaults = b""
        self.default_list: list[tuple[bytes, bytes]] = []

    # asyncio.Protocol ----------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        worker = self.worker
        self.peer_addr, self.ports = peer_addresses(transport)
        self.remote_addr = self.peer_addr
        if at_ceiling(worker):
            self.closed = True
            transport.close()
            return
        trusted = worker.trusted_peers
        if trusted is not None and trusted.trusts(self.peer_addr):
            self.peer_trusted = True
        else:
            counted = admit_address(worker, self.remote_addr)
            if counted is None:
                self.closed = True
                transport.close()
                return
            self.counted = counted
        worker.connections.add(self)
        worker.counters.http2_connections += 1
        self.h2.initiate()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        was_counted = self in self.worker.connections
        self.closed = True
        self.transport = None
        if self.counted:
            release_address(self.worker, self.counted)
            self.counted = ""
        self.worker.connections.discard(self)
        if was_counted:
            self.worker.counters.http2_connections -= 1
        for stream in list(self.streams.values()):
            stream.gone()
            stream._done()
            self._forget(stream)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.goaway_sent:
            return
        now = self.worker.now
        self.in_receive = True
        try:
            # one pass over the frames read, the chain run for each request, and what
            # they answered written once below
            for event in self.h2.receive(data):
                if isinstance(event, Data):
                    self._data(event, now)
                    if event.end:
                        self._stream_ended(event.stream_id)
                elif isinstance(event, Request):
                    self._request(event, now)
                elif isinstance(event, WindowOpened):
                    self._window_updated(event.stream_id)
                elif isinstance(event, Reset):
                    if event.message:
                        self.log_error(f"HTTP/2 stream {event.stream_id}: {event.message}: reset")
                    if event.code == REFUSED_STREAM and not event.remote:
                        # past the concurrent streams: refused before it reached us, and
                        # counted as a reset would be (a client opening streams in a
                        # loop costs as much as one resetting them)
                        self._flood(_RESETS, "RST_STREAM", 2 * self.max_streams)
                    else:
                        self._stream_reset(event.stream_id, event.remote)
                elif isinstance(event, SettingsChanged):
                    self._flood(_SETTINGS, "SETTINGS")
                    if event.window:
                        self._window_updated(0)
                elif isinstance(event, PingReceived):
                    self._flood(_PINGS, "PING")
                elif isinstance(event, GoawayReceived):
                    self._close_after_goaway()
                elif isinstance(event, ConnectionFailed):
                    # the codec has queued its GOAWAY
                    self.log_error(
                        f"HTTP/2 connection error: {event.message}: GOAWAY {error_name(event.code)}"
                    )
                    self._close_after_goaway()
                if self.closed or self.goaway_sent:
                    break
        finally:
            self.in_receive = False
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours

    def pause_writing(self) -> None:
        self.paused = True
        self.last_sent = self.worker.loop.time()  # send_timeout runs from here
        self._arm(self.last_sent + self.worker.send_timeout)
        if self.transport is not None and not self.reading_paused:
            # the client is not reading what is sent: its requests (and PINGs) can wait
            self.reading_paused = True
            self.transport.pause_reading()
        for stream in self.streams.values():
            if not stream.paused:
                stream.paused = True
                if stream.relay is not None:
                    stream.relay.pause()

    def resume_writing(self) -> None:
        self.paused = False
        self.last_sent = self.worker.loop.time()
        if self.transport is not None and self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        for stream in list(self.waiting):
            self.pump(stream, False)
        for stream in list(self.streams.values()):
            self._maybe_resume(stream)
        self.flush()

    # the worker's ClientConnection ----------

    def check_deadline(self, now: float) -> None:
        """Called by the worker's sweep: idle, stalled and slow-body connections end."""
        if self.closed or self.transport is None:
            return
        worker = self.worker
        # checked again at the sweep's pace while anything is pending, else when the
        # idle timeout would end the connection
        self.deadline = now + worker.sweep_every
        if self.waiting or self.paused:
            if now - self.last_sent >= worker.send_timeout:
                # a client that never opens its window (or never reads) holds the
                # response and its upstream: closed, as nginx's send_timeout does
                paused = self.paused
                self.goaway(ENHANCE_YOUR_CALM, "client timed out reading")
                if paused and self.transport is not None:
                    self.transport.abort()  # not even reading: the GOAWAY cannot go out
            return
        if not self.streams:
            if now - self.idle_since >= self.idle_timeout:
                self.goaway(NO_ERROR, "")
            else:
                self.deadline = self.idle_since + self.idle_timeout
            return
        for stream in list(self.streams.values()):
            if (
                not stream.remote_ended
                and not stream.reading_paused
                and now - stream.last_read >= worker.body_timeout
            ):
                stream.log_error("client timed out sending the request body")
                if not stream.answered:
                    stream.error(408)
                self.reset(stream, CANCEL)
        self.flush()

    def _arm(self, at: float) -> None:
        """check_deadline runs at ``at`` at the latest."""
        if not self.deadline or at < self.deadline:
            self.deadline = at

    def close_if_idle(self, now: float, quiet_for: float) -> None:
        """On a graceful stop: GOAWAY and close once no stream is open (called again
        until then)."""
        if self.transport is None or self.closed:
            return
        if not self.streams:
            self.goaway(NO_ERROR, "")
        # else the open streams finish (h2 sends nothing after a GOAWAY) and new ones
        # are refused (see _request)

    def close(self) -> None:
        """Close the connection now (what is written still goes out)."""
        if self.transport is not None:
            self.transport.close()

    # streams ----------

    def _request(self, event: Request, now: float) -> None:
        stream_id = event.stream_id
        head, problem, host = _request_head(event)
        stream = Http2Stream(self, stream_id, head)
        stream.last_read = now
        self.streams[stream_id] = stream
        worker = self.worker
        if event.end:
            stream.remote_ended = True
        if worker.stopping:
            # a graceful stop: the client may ask again on another connection
            self.reset(stream, REFUSED_STREAM)
            return
        if problem:
            stream.log_error(problem)
            stream.error(400)
            return
        route = worker.route(host, head.path, self.listener)
        if route is None:
            stream.error(400)
            return
        stream.path, stream.server, stream.location, chain = route
        if self.https and stream.server.hsts:
            stream.hsts = hsts_line(stream.server.hsts)
        length = head.content_length
        if length is not None and length > worker.limits.max_body_size:
            stream.log_error(f"request body of {length} bytes past client_max_body_size")
            stream.error(413)
            return
        if stream.remote_ended:
            self._run(stream, chain, None)
            return
        location = stream.location
        if length and location is not None and location.proxy and not location.request_buffering:
            # request_buffering = false: proxied now, the body follows as it arrives
            stream.stream = StreamedBody(stream, length)
            self._run(stream, chain, stream.stream)
            return
        stream.body = BodyBuffer()
        self._arm(now + worker.body_timeout)

    def _run(
        self,
        stream: Http2Stream,
        chain: tuple[object, ...],
        body: BodyBuffer | StreamedBody | None,
    ) -> None:
        stream.dispatched = True
        try:
            run_chain(chain, stream, body)  # type: ignore[arg-type]
        except Exception:  # a bug costs one stream, not the connection
            log.exception("%s: %s failed", stream.remote_addr, stream._request_line())
            if not stream.answered and not stream.closed:
                stream.relay = None
                if stream.head_sent:
                    self.reset(stream, INTERNAL_ERROR)
                    stream._done()
                else:
                    stream.error(500)

    def _data(self, event: Data, now: float) -> None:
        stream_id = event.stream_id
        data = event.data
        flow = event.flow
        stream = self.streams.get(stream_id)
        if stream is None or stream.answered and stream.stream is None:
            # a body no one reads any more: its window opens at once
            self.acknowledge(stream_id, flow)
            return
        stream.last_read = now
        stream.received += len(data)
        if stream.received > self.worker.limits.max_body_size:
            stream.log_error("request body past client_max_body_size")
            self.acknowledge(stream_id, flow)
            if not stream.answered:
                if stream.body is not None:
                    stream.body.discard()
                    stream.body = None
                stream.error(413)
            self.reset(stream, NO_ERROR if stream.finished else CANCEL)
            return
        if stream.stream is not None:
            stream.stream.feed(data)
            if stream.reading_paused:
                stream.unacked += flow
                return
        elif stream.body is not None:
            stream.body.append(data)
        self.acknowledge(stream_id, flow)

    def _stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.remote_ended = True
        if stream.stream is not None:
            stream.stream.finish()
            return
        if stream.answered or stream.dispatched:
            if stream.finished:
                self._forget(stream)
            return
        body = stream.body
        stream.body = None
        route = self.worker.route(
            request_host(stream.head, self.worker.field_memo), stream.head.path, self.listener
        )
        chain = route[3] if route is not None else ()
        if body is not None and stream.head.content_length is None:
            stream.head.content_length = body.size  # no Content-Length: now it is known
        self._run(stream, chain, body)

    def _stream_reset(self, stream_id: int, by_client: bool) -> None:
        stream = self.streams.get(stream_id)
        if by_client:
            # Rapid Reset (CVE-2023-44487): streams opened and reset at once cost the
            # server work the client never waits for
            self._flood(_RESETS, "RST_STREAM", 2 * self.max_streams)
        if stream is None:
            return
        stream.gone()
        stream.remote_ended = True
        if not stream.answered:
            stream.status = 499  # nginx's "client closed request"
            stream._done()
        self._forget(stream)

    def _flood(self, kind: int, frame: str, limit: int = FLOOD_LIMIT) -> None:
        """One more frame of ``kind`` (_RESETS, _SETTINGS, _PINGS) this second; past
        ``limit`` of them, the client is told to calm down (GOAWAY)."""
        now = self.worker.loop.time()
        counts = self.flood_counts
        if now - self.window_start >= 1.0:
            self.window_start = now
            counts[0] = counts[1] = counts[2] = 0
        counts[kind] += 1
        if counts[kind] > limit and not self.goaway_sent:
            self.goaway(ENHANCE_YOUR_CALM, f"{frame} flood: {counts[kind]} in a second")

    def _forget(self, stream: Http2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self.waiting.discard(stream)
            if stream.file is not None:
                stream.file.close()
                stream.file = None
            if not self.streams:
                self.idle_since = self.worker.loop.time()
                self._arm(self.idle_since + self.idle_timeout)

    def _window_updated(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream in self.waiting:
                self.pump(stream, False)
            return
        for stream in list(self.waiting):
            self.pump(stream, False)

    # output ----------

    def send_head(self, stream: Http2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> bool:
        """A stream's response head; False when the stream is gone."""
        if not self.h2.send_headers(stream.stream_id, headers, end):
            stream.gone()
            return False
        if end:
            self._finished(stream)
        self.flush_soon()
        return True

    def pump(self, stream: Http2Stream, flush: bool = True) -> None:
        """Send what ``stream`` has waiting, as far as the windows allow."""
        if stream.closed or stream.finished:
            return
        h2 = self.h2
        stream_id = stream.stream_id
        out = stream.out
        while not self.paused:
            if not out:
                file = stream.file
                if file is not None:
                    try:
                        data, last = file.read()
                    except EOFError:
                        stream.log_error("file shrank while being sent")
                        self.reset(stream, INTERNAL_ERROR)
                        return
                    stream.sent += len(data)
                    if data:
                        out.append(data)
                        stream.out_size += len(data)
                    if last:
                        file.close()
                        stream.file = None
                        stream._done()
            if not out:
                if stream.ending and stream.file is None:
                    if not h2.end_stream(stream_id):
                        self._lost(stream)
                        return
                    self._finished(stream)
                else:
                    self.waiting.discard(stream)
                break
            window = h2.window(stream_id)
            if window < 0:
                self._lost(stream)
                return
            if window == 0:
                if not self.waiting:
                    self.last_sent = self.worker.now  # send_timeout runs from here
                    self._arm(self.last_sent + self.worker.send_timeout)
                self.waiting.add(stream)  # on again when the client opens its window
                break
            data = out[0]
            size = min(len(data), window, h2.max_frame_size)
            if size < len(data):
                out[0] = data[size:]
                data = data[:size]
            else:
                out.popleft()
            stream.out_size -= size
            last = not out and stream.ending and stream.file is None
            h2.send_data(stream_id, data, last)
            self.last_sent = self.worker.now
            if last:
                self._finished(stream)
                break
        if self.paused and (out or stream.file is not None):
            self.waiting.add(stream)
        self._maybe_resume(stream)
        if flush:
            self.flush_soon()

    def _lost(self, stream: Http2Stream) -> None:
        """The codec has closed ``stream`` (the client reset it): nothing more is sent."""
        stream.gone()
        self._forget(stream)

    def _maybe_resume(self, stream: Http2Stream) -> None:
        if stream.paused and not self.paused and stream.out_size < STREAM_LOW_WATER:
            stream.paused = False
            if stream.relay is not None:
                stream.relay.resume()

    def _finished(self, stream: Http2Stream) -> None:
        """The response's last byte is queued: the stream ends when the client's side has."""
        stream.finished = True
        self.waiting.discard(stream)
        if stream.remote_ended:
            self._forget(stream)
        elif stream.answered and stream.stream is None:
            # the answer is complete and the rest of the body is not wanted (RFC 9113 8.1)
            self.reset(stream, NO_ERROR)

    def reset(self, stream: Http2Stream, code: int) -> None:
        """Reset ``stream`` (RST_STREAM ``code``)."""
        if not stream.closed or stream.stream_id in self.streams:
            self.h2.reset_stream(stream.stream_id, code)
        stream.gone()
        self._forget(stream)
        self.flush_soon()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes of a stream's body were taken: the windows open again."""
        self.h2.acknowledge(stream_id, size)

    def flush_soon(self) -> None:
        """Write what h2 has for the client once this turn of the loop is over (at the end
        of data_received, when called from it): the frames of one turn go in one write."""
        if not self.in_receive and not self.flush_planned and not self.closed:
            self.flush_planned = True
            self.worker.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what h2 has for the client."""
        self.flush_planned = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def goaway(self, code: int, message: str) -> None:
        """GOAWAY with ``code`` and close (after what is written goes out)."""
        if message:
            self.log_error(f"{message}: GOAWAY {error_name(code)}")
        if not self.goaway_sent:
            self.goaway_sent = True
            self.h2.goaway(code)
        self._close_after_goaway()

    def _close_after_goaway(self) -> None:
        self.goaway_sent = True
        self.flush()
        for stream in list(self.streams.values()):
            stream.gone()
            if not stream.answered:
                stream.status = 499
                stream._done()
            self._forget(stream)
        if self.transport is not None:
            self.transport.close()

    def default_fields(self) -> list[tuple[bytes, bytes]]:
        """Server and Date, as the worker's defaults have them this second."""
        lines = self.worker.defaults.lines
        if lines is not self.defaults:
            self.defaults = lines
            self.default_list = []
            _add_fields(self.default_list, lines)
        return self.default_list

    def vars_for(self, remote_addr: str, gantry: bool) -> bytes:
        """This connection's uwsgi vars for ``remote_addr`` (standard or gantry's)."""
        if self._vars_addr != remote_addr:
            self._vars_addr = remote_addr
            self._fixed_vars = self._gantry_vars = b""
        if gantry:
            if not self._gantry_vars:
                self._gantry_vars = gantry_connection_vars(remote_addr, *self.ports, self.https)
            return self._gantry_vars
        if not self._fixed_vars:
            self._fixed_vars = connection_vars(remote_addr, *self.ports, self.https)
        return self._fixed_vars

    def counters_streams(self) -> None:
        """One more stream answered (the worker's HTTP/2 stream count)."""
        self.worker.counters.http2_streams += 1

    def log_error(self, message: str) -> None:
        """One error-log line about this connection."""
        log.error("%s: %s", self.remote_addr, message)


def _add_fields(headers: list[tuple[bytes, bytes]], block: bytes) -> None:
    """The fields of ``block`` (lines ending in CRLF) as HTTP/2 wants them: names in lower
    case, the HTTP/1 connection's own fields left out."""
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in CONNECTION_FIELDS:
            continue
        headers.append((name, value.strip()))


def _fields(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A handler's response fields as HTTP/2 wants them (see _add_fields)."""
    return [
        (name.lower(), value) for name, value in fields if name.lower() not in CONNECTION_FIELDS
    ]


def _request_head(request: Request) -> tuple[RequestHead, str, str | None]:
    """The request head of an HTTP/2 request (the codec has checked its fields and put
    them as an HTTP/1.1 head carries them), what is wrong with it ("" when nothing is)
    and its host."""
    head = RequestHead()
    head.version = "2.0"
    method = _METHODS.get(request.method)
    head.method = method if method is not None else request.method.decode("latin-1")
    target = request.path
    head.target = target
    if request.content_length >= 0:
        head.content_length = request.content_length
    head.headers = request.fields
    problem = ""
    if head.method == "CONNECT":
        problem = "CONNECT is not served"
    elif not target.startswith(b"/") and not (target == b"*" and head.method == "OPTIONS"):
        problem = f"bad :path {target[:100]!r}"
    path, _, query = target.partition(b"?")
    head.path = path
    head.query = query
    return head, problem, request.host.decode("latin-1") if request.host else None
