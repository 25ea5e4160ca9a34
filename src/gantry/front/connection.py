"""One HTTP/1 client connection of the front: framing, keep-alive, the request queue,
client timeouts and back-pressure. What a request gets is the handler chain's
business (front.handlers); this module only carries it to and from the wire."""

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
    peer_addresses,
    record_request,
    release_address,
    request_host,
    small_file,
)
from gantry.front.answering import hsts_line as hsts_field
from gantry.front.compress import ResponseCoder
from gantry.front.exchange import FilePiece, Relay
from gantry.front.handlers import run_chain
from gantry.front.headers import added_fields
from gantry.front.proxy import StreamedBody, spawn
from gantry.front.responses import connection_field, status_line
from gantry.front.upstream_request import connection_vars, gantry_connection_vars
from gantry.front.websocket import WebSocketTunnel
from gantry.front.worker import FrontWorker
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import ProtocolError, RequestHead, RequestParser
from gantry.protocol.proxy_protocol import ProxyProtocolError, parse_proxy_header

__all__ = ["FrontConnection"]

log: Final = logging.getLogger("gantry.front")
# bound once: compiled, ``time.monotonic()`` looks ``monotonic`` up by name at each call
_monotonic: Final = time.monotonic

WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
#: requests parsed ahead of the one being answered before the client is read no more
MAX_PIPELINED: Final = 16
#: a big file is sent in sendfile calls of at most this many bytes
SENDFILE_CHUNK: Final = 1 << 20

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
_TUNNEL: Final = 5  # websocket_idle_timeout: a WebSocket tunnel carries nothing either way

#: the request an error before any request is about (never changed)
_NO_REQUEST: Final = RequestHead()
#: the server of a connection no request has reached yet (never used to answer)
_NO_SERVER: Final = VirtualServer()


class _WholeHead:
    """The last relayed whole response's head as this worker sent it, with the parts it
    was made of: the upstream's head (the very object: the upstream side hands the same
    one while an app answers alike), the connection's own fields, Server and Date (a new
    object each second). Identity says the parts are unchanged."""

    __slots__ = ("head", "lines", "field", "hsts", "whole")

    def __init__(self) -> None:
        self.head = b""
        self.lines = b""
        self.field = b""
        self.hsts = b""
        #: head + hsts + field + lines
        self.whole = b""


_WHOLE_HEAD: Final = _WholeHead()


class _Refusal:
    """A blocklist refusal a connection may give again: the request's bytes (one whole
    plain request, as its feed held it), the address the real_ip step found in them,
    the head and route they gave, and the answer's prepared head and body. The same
    bytes on the same connection give the same head, route and address: only the
    blocklist's verdict, asked again, can differ."""

    __slots__ = ("data", "address", "head", "path", "server", "location", "answer", "body")

    def __init__(
        self,
        data: bytes,
        address: str,
        head: RequestHead,
        path: str,
        server: VirtualServer,
        location: Location | None,
        answer: bytes,
        body: bytes,
    ) -> None:
        self.data = data
        self.address = address
        self.head = head
        self.path = path
        self.server = server
        self.location = location
        self.answer = answer
        self.body = body


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
    #: the address they were encoded with (the real_ip handler may change it per request)
    _vars_addr = ""
    #: a file being sent with sendfile(2)
    sending: _FileSend | None = None
    #: waiting for the output to drain (the pread fallback of a file body)
    _drained: asyncio.Future[None] | None = None
    #: a refusal owed once the requests before it are answered
    refusal = 0
    #: the current request's $limit_req_status ("" : no limit_req applied)
    limit_status = ""
    #: what to call when the current request ends (limit_conn's counts)
    releases: list[Callable[[], None]] | None = None
    #: the peer may tell the client's address ([front.real_ip] from)
    peer_trusted = False
    #: a proxy_protocol listener's connection: the bytes of its PROXY header so far (None:
    #: no header expected, or it came)
    proxy_buffer: bytes | None = None
    #: the address counted against max_connections_per_address ("": none)
    counted = ""
    #: when the head or body under a minimum rate began (loop time; 0: not under one),
    #: and its bytes so far
    rate_start = 0.0
    rate_bytes = 0
    #: the client's own head of the current request when a rewrite changed ``head``
    original: RequestHead | None = None
    #: the current response's compression (gzip = true; see front.compress)
    coder: ResponseCoder | None = None
    #: the listener's index in FrontConfig.listeners (its own routes when servers name
    #: the listeners they answer on)
    listener = 0
    #: the connection came through TLS: $scheme https, HSTS, no sendfile
    https = False
    #: Strict-Transport-Security of the current request's server (https only), CRLF-ended
    hsts_line = b""
    #: the WebSocket tunnel this connection became (after the upstream's 101)
    tunnel: WebSocketTunnel | None = None
    #: when the tunnel last carried a byte either way (the worker's clock)
    tunnel_active = 0.0
    #: the bytes a closed tunnel carried from the client, for its access-log line (-1: none)
    tunnel_received = -1
    #: a blocklisted client's connection (refused at accept): the head received so far,
    #: answered 403 once whole, unparsed (None: not refused so)
    blocked_head: bytes | None = None
    #: the last request the blocklist refused on this connection (a trusted proxy's, by
    #: the address it names), given the same refusal if the same bytes come again
    refused: _Refusal | None = None
    #: requests parsed while an earlier one is answered (a deque while any wait: an
    #: empty one costs ~700 bytes, and an idle connection has none)
    queue: deque[tuple[RequestHead, BodyBuffer | None]] | None = None

    def __init__(
        self,
        worker: FrontWorker,
        listener: int = 0,
        https: bool = False,
        proxy_protocol: bool = False,
    ) -> None:
        self.worker = worker
        if listener:
            self.listener = listener
        if https:
            self.https = True
        self.parser = RequestParser(self, worker.limits, worker.field_memo)
        self.transport: asyncio.Transport | None = None
        #: the client's address as everything sees it (the real one behind a trusted
        #: proxy), and the peer's own (the TCP or PROXY protocol address)
        self.remote_addr = ""
        self.peer_addr = ""
        #: requests started on this connection (keepalive_requests)
        self.requests = 0
        if proxy_protocol:
            self.proxy_buffer = b""
        #: (remote port, server port)
        self.ports = ("", "")
        #: the head being received, and its body
        self.incoming: RequestHead | None = None
        self.body: BodyBuffer | None = None
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.chunked_out = False
        #: the relay (proxy) answering the current request
        self.relay: Relay | None = None
        #: $upstream_cache_status of the current request ("-": no cache answered it)
        self.cache_status = "-"
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
        worker = self.worker
        known = worker.listener_ports.get(self.listener)
        address, self.ports = peer_addresses(transport, known)
        if known is None:
            worker.listener_ports[self.listener] = self.ports[1]
        if address:
            self.peer_addr = self.remote_addr = address
        if at_ceiling(worker):
            self.closed = True
            transport.close()
            return
        trusted = worker.trusted_peers
        if trusted is not None and trusted.trusts(self.peer_addr):
            self.peer_trusted = True
        if self.proxy_buffer is not None and not self.peer_trusted:
            self.log_error("PROXY protocol header from a peer not in real_ip.from: closed")
            self.closed = True
            transport.close()
            return
        if self.proxy_buffer is None and not self.peer_trusted and not self._admit():
            self.closed = True
            transport.close()
            return
        worker.connections.add(self)
        # nginx gives a new connection client_header_timeout for its first request
        self.deadline = self.worker.loop.time() + self.worker.header_timeout
        self.deadline_kind = _HEAD
        if self.proxy_buffer is None and not self.peer_trusted:
            self._refuse_if_blocked()

    def _refuse_if_blocked(self) -> None:
        """A client whose address is the same for every request of the connection (no
        trusted proxy names another) is checked against the blocklist once, before any
        request: a listed one gets 403 to its first request, unparsed, and the connection
        closes (444: it closes now)."""
        blocklist = self.worker.blocklist
        if blocklist is None or not blocklist.set or not blocklist.refused(self.remote_addr):
            return
        if blocklist.status == 444:
            self.drop()
        else:
            self.blocked_head = b""

    def _admit(self) -> bool:
        """max_connections_per_address: count this connection against its address, or
        refuse it (False)."""
        counted = admit_address(self.worker, self.remote_addr)
        if counted is None:
            return False
        if counted:
            self.counted = counted
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.counted:
            release_address(self.worker, self.counted)
            self.counted = ""
        self.parser.close()  # it and llhttp point back at this connection
        self._stop_sendfile()
        self._wake_drained()
        self.worker.connections.discard(self)
        if self.tunnel is not None:
            self._end_tunnel()
        if self.releases is not None:
            self._run_releases()
        relay = self.relay
        self.relay = None
        if relay is not None:
            relay.abandon()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel_active = self.worker.now
            tunnel.from_client(data)
            return
        if self.holds & _HOLD_DONE:
            return  # bytes after the last request this connection answers
        if self.proxy_buffer is not None:
            data = self._proxy_header(data)
            if not data:
                return
        if self.blocked_head is not None:
            self._answer_blocked(data)
            return
        refused = self.refused
        if refused is not None and data == refused.data and self._refuse_again(refused):
            return
        kind = self.deadline_kind
        worker = self.worker
        if kind == _IDLE:
            # the first byte of a request: client_header_timeout runs from here
            self.deadline = worker.now + worker.header_timeout
            self.deadline_kind = _HEAD
            kind = _HEAD
        elif kind == _BODY:
            self.deadline = worker.now + worker.body_timeout
        if kind == _HEAD:
            if worker.header_min_rate:
                self._min_rate(len(data), worker.header_min_rate, worker.header_timeout, False)
        elif kind == _BODY and worker.body_min_rate:
            self._min_rate(len(data), worker.body_min_rate, worker.body_timeout, True)
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._refuse(exc.status)

    def _answer_blocked(self, data: bytes) -> None:
        """A blocklisted client's first request: 403 once its head is in (what comes with
        it or after is not read), then the connection closes."""
        received = self.blocked_head + data if self.blocked_head else data
        if b"\r\n\r\n" not in received and len(received) < self.worker.limits.max_head_size:
            self.blocked_head = received  # bounded: answered past max_head_size anyway
            return
        self.blocked_head = None
        self._hold(_HOLD_DONE)
        self._own_answer()
        self.keep_alive = False
        head, body = self.worker.blocked_response
        self.respond_prepared(403, head, b"" if received.startswith(b"HEAD ") else body)

    def _refuse_again(self, refused: _Refusal) -> bool:
        """The request the blocklist refused last on this connection, byte for byte (a
        flood through a trusted proxy): refused again as the chain would, unparsed, while
        the blocklist still refuses its address and nothing else about the connection
        asks for the whole path (False: take it)."""
        worker = self.worker
        blocklist = worker.blocklist
        if (
            self.busy
            or self.queue is not None
            or self.paused
            or self.holds
            or not self.parser.at_boundary
            or worker.stopping
            or self.requests + 1 >= worker.keepalive_requests
            or blocklist is None
            or not blocklist.refused(refused.address)  # counted as a hit when it is
        ):
            return False
        # what handle() and the parser's callbacks do for it: the request is counted,
        # timed and logged as any, and its deadlines go as after a whole head
        self._begin(refused.head)
        self.remote_addr = refused.address
        self._routed(refused.path, refused.server, refused.location)
        if self.deadline_kind:
            self.deadline = 0.0
            self.deadline_kind = 0
        if self.rate_start:
            self.rate_start = 0.0
        self.respond_prepared(403, refused.answer, refused.body)
        return True

    def _min_rate(self, size: int, rate: int, timeout: float, between_reads: bool) -> None:
        """A head or body under a minimum rate: after the grace, it must have come at
        ``rate`` bytes a second at least (mod_reqtimeout's MinRate); the deadline moves
        on by a second for each ``rate`` bytes, never past its timeout (from the last
        read for a body, from its start for a head)."""
        now = self.worker.now
        if not self.rate_start:
            self.rate_start = now
            self.rate_bytes = 0
        self.rate_bytes += size
        start = self.rate_start
        self.deadline = min(
            (now if between_reads else start) + timeout,
            start + self.worker.min_rate_grace + self.rate_bytes / rate,
        )

    def _proxy_header(self, data: bytes) -> bytes:
        """The PROXY protocol header first: what follows it (b"" while it is incomplete,
        or when it was refused and the connection closes)."""
        buffered = self.proxy_buffer
        if buffered:
            data = buffered + data
        try:
            header = parse_proxy_header(data)
        except ProxyProtocolError as exc:
            self.proxy_buffer = None
            self.log_error(f"bad PROXY protocol header: {exc}: closed")
            self._hold(_HOLD_DONE)
            if self.transport is not None:
                self.transport.close()
            return b""
        if header is None:
            self.proxy_buffer = data  # bounded: the parser refuses past 107 or 4112 bytes
            return b""
        self.proxy_buffer = None
        worker = self.worker
        if header.source is not None and worker.real_ip_from_proxy_protocol:
            self.remote_addr = header.source[0]
            self.ports = (str(header.source[1]), self.ports[1])
            self._fixed_vars = self._gantry_vars = b""
            if worker.trusted_peers is not None and not worker.trusted_peers.trusts(
                self.remote_addr
            ):
                # the client behind the proxy is not itself a proxy to believe
                self.peer_trusted = False
            self.peer_addr = self.remote_addr
        if not self.peer_trusted and not self._admit():
            # (a trusted proxy carries many clients: not capped as one address)
            self._hold(_HOLD_DONE)
            if self.transport is not None:
                self.transport.close()
            return b""
        if not self.peer_trusted:
            self._refuse_if_blocked()
            if self.holds & _HOLD_DONE:
                return b""  # 444: closed
        return data[header.length :]

    def drop(self) -> None:
        """Close without an answer (nginx's 444): logged with that status."""
        self.status = 444
        self.keep_alive = False
        self._hold(_HOLD_DONE)
        self._done()

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
        self.server = _NO_SERVER  # no header rules of an earlier request's route
        self.location = None
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
        if self.tunnel is not None and not self.deadline_kind:
            self.deadline = self.tunnel_active + self.worker.websocket_idle_timeout
            self.deadline_kind = _TUNNEL
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
        if self.rate_start:
            self.rate_start = 0.0  # the head is in: its minimum rate no longer applies
        if head.has_body:
            self.body = BodyBuffer()
            self.deadline = self.worker.now + self.worker.body_timeout
            self.deadline_kind = _BODY
            if self.worker.body_min_rate:
                self.rate_start = self.worker.now
                self.rate_bytes = 0
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
        route = self.worker.route(
            request_host(head, self.worker.field_memo), head.path, self.listener
        )
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
        if self.rate_start:
            self.rate_start = 0.0
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
            queue = self.queue
            if queue is None:
                queue = self.queue = deque()
            queue.append((head, body))
            if len(queue) >= MAX_PIPELINED:
                self._hold(_HOLD_QUEUE)
            return
        self.handle(head, body)

    # dispatch ----------

    def handle(
        self, head: RequestHead, body: BodyBuffer | None, stream: StreamedBody | None = None
    ) -> None:
        """Route one request and run it through the worker's handler chain."""
        self._begin(head)
        worker = self.worker
        host = request_host(head, worker.field_memo)
        route = worker.route_maps[self.listener].get((host, head.path))  # worker.route, inline
        if route is None:
            route = worker.route(host, head.path, self.listener)
            if route is None:
                self.error(400, close=True)
                return
        path, server, location, chain = route
        self._routed(path, server, location)
        try:
            run_chain(chain, self, stream if stream is not None else body)
        except Exception:  # a bug must cost one request, not the connection's silence
            log.exception("%s: %s failed", self.remote_addr, self._request_line())
            if self.busy and not self.closed:
                self.relay = None
                self.error(500, close=True)

    def _begin(self, head: RequestHead) -> None:
        """A request's start: counted and timed, the last one's per-request state reset."""
        self.busy = True
        self.started = _monotonic()
        self.head = head
        self.keep_alive = head.keep_alive and not head.upgrade and not self.worker.stopping
        self.requests += 1
        if self.requests >= self.worker.keepalive_requests:
            self.keep_alive = False  # keepalive_requests: this one is the last
        self.sent = 0
        if self.upstream_log:
            self.upstream_log = []
        if self.limit_status:
            self.limit_status = ""
        if self.original is not None:
            self.original = None

    def _routed(self, path: str, server: VirtualServer, location: Location | None) -> None:
        """The route a request took, and the HSTS line its server asks for."""
        self.path, self.server, self.location = path, server, location
        if self.https:
            hsts = server.hsts
            if hsts or self.hsts_line:  # set only where used: see the class's attributes
                self.hsts_line = hsts_field(hsts)

    def _next(self) -> None:
        """Answer the next queued request."""
        queue = self.queue
        assert queue is not None  # called only while requests wait
        head, body = queue.popleft()
        if not queue:
            self.queue = None
        if len(queue) < MAX_PIPELINED:
            self._release(_HOLD_QUEUE)
        self.handle(head, body)

    # Exchange: answers of the front's own ----------------------------------------------

    def respond(
        self, status: int, fields: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b""
    ) -> None:
        """A whole response with these fields; the request is done."""
        self.status = status
        if self.transport is not None and not self.closed:
            lines = [name + b": " + value + b"\r\n" for name, value in fields]
            coder = self.coder
            if coder is not None:
                self.coder = None
                body = coder.whole(status, lines, body)
            self.sent += len(body)
            self.transport.write(self._head_bytes(status, lines, reason) + body)
        self._done()

    def error(
        self, status: int, close: bool = False, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """A short response of the front's own (errors, refusals): its error page, with
        the ``extra`` fields."""
        if close:
            self.keep_alive = False
        fields, body = error_page(self.worker, status, extra)
        self.respond(status, fields, b"" if self.head.method == "HEAD" else body)

    def at_end(self, release: Callable[[], None]) -> None:
        """Call ``release`` once when the current request ends (answered or the client
        gone)."""
        if self.releases is None:
            self.releases = []
        self.releases.append(release)

    def _run_releases(self) -> None:
        releases = self.releases
        self.releases = None
        for release in releases or ():
            try:
                release()
            except Exception:  # a count left held must not cost the connection
                log.exception("%s: releasing a limit failed", self.remote_addr)

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
        coder = self.coder
        if coder is not None and coder.start(status, lines):
            # compressed in bounded reads of the file (no sendfile: the bytes change)
            self._frame_unknown_length(lines)
            transport.write(self._head_bytes(status, lines))
            spawn(self.worker.tasks, self._stream_file(os.dup(fd), pieces))
            return
        self.coder = None
        if self.https:
            # the bytes must go through the transport's encryption: no sendfile; a small
            # file is read at once and goes with its head in one write (no task)
            body = small_file(fd, pieces)
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
        coder = self.coder
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
                    offset += len(chunk)
                    if coder is not None:
                        # not flushed: the next read follows at once
                        chunk = self._framed(coder.piece(chunk, False))
                        if not chunk:
                            continue
                    await self._write_when_drained(chunk)
                    self.sent += len(chunk)
                if short or self.closed:
                    break
            if coder is not None and not short:
                tail = self._framed(coder.finish())
                self.sent += len(tail)
                await self._write_when_drained(tail + (b"0\r\n\r\n" if self.chunked_out else b""))
        finally:
            os.close(fd)
            self.coder = None
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
        coder = self.coder
        if coder is not None and not bodyless:
            if coder.start(status, lines):
                has_length = False  # compressed as it comes: its length is not known
            else:
                self.coder = None
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

    def interim(self, status: int, reason: bytes, lines: list[bytes]) -> None:
        """An upstream's 102 or 103 (RFC 9110 15.2), written at once to an HTTP/1.1
        client (an HTTP/1.0 one may not get a 1xx), before the final head."""
        if self.head.version != "1.1" or self.closed or self.pending_head:
            return
        transport = self.transport
        if transport is not None:
            transport.write(status_line(status, reason) + b"".join(lines) + b"\r\n")

    def respond_prepared(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response a handler prepared (see respond_whole); the request is done."""
        self.status = status
        transport = self.transport
        if transport is not None and not self.closed:
            coder = self.coder
            if coder is not None:
                self.coder = None
                head, body = coder.whole_head(status, head, body)
            self.sent += len(body)
            location = self.location  # add_header
            rules = location.add_header if location is not None else self.server.add_header
            if rules:
                head += added_fields(rules, status, self)
            if self.hsts_line:
                head += self.hsts_line
            if self.keep_alive and self.head.version == "1.1":  # connection_field, inline
                transport.write(head + self.worker.defaults.lines + body)
            else:
                field = connection_field(self.keep_alive, self.head.version)
                transport.write(head + field + self.worker.defaults.lines + body)
        self._done()

    def respond_refused(self, head: bytes, body: bytes) -> None:
        """The blocklist's 403 (see respond_prepared); a request that came whole is kept
        with it, to be refused again at once if its bytes come again (_refuse_again)."""
        data = self.parser.whole_request
        request = self.head
        if (
            data
            and self.keep_alive
            and request.keep_alive
            and not request.upgrade
            and self.original is None
            and self.coder is None
        ):
            self.refused = _Refusal(
                data, self.remote_addr, request, self.path, self.server, self.location,
                head, body,
            )  # fmt: skip
        self.respond_prepared(403, head, body)

    def respond_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response whose ``head`` (status line and fields, each ending in CRLF)
        passes as it is: this connection's Connection, Server and Date follow it."""
        self.status = status
        self.chunked_out = False
        self.pending_head = b""
        if self.transport is None or self.closed:
            return
        coder = self.coder
        if coder is not None:
            self.coder = None
            head, body = coder.whole_head(status, head, body)
        self.sent += len(body)
        location = self.location  # add_header
        rules = location.add_header if location is not None else self.server.add_header
        if rules:
            head += added_fields(rules, status, self)
        field = connection_field(self.keep_alive, self.head.version)
        lines = self.worker.defaults.lines
        memo = _WHOLE_HEAD
        if (
            memo.head is head
            and memo.lines is lines
            and memo.field == field
            and memo.hsts == self.hsts_line
        ):
            whole = memo.whole
        else:
            whole = head + self.hsts_line + field + lines
            memo.head, memo.lines, memo.field, memo.hsts = head, lines, field, self.hsts_line
            memo.whole = whole
        self.transport.write(whole + body)

    def write(self, data: bytes) -> None:
        """A piece of a relayed body (chunked when the upstream did not frame it)."""
        if self.transport is None or self.closed or not data:
            return
        coder = self.coder
        if coder is not None:
            data, first = coder.stream(data)
            if first:
                # flushed once this turn's pieces are in: the client gets what the
                # upstream sent without a flush per piece
                self.worker.loop.call_soon(self._flush_coder, coder)
            if not data:
                return
        self._send_piece(data)

    def _flush_coder(self, coder: ResponseCoder) -> None:
        if coder is self.coder and self.transport is not None and not self.closed:
            data = coder.flush()
            if data:
                self._send_piece(data)

    def _send_piece(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.sent += len(data)
        if self.chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
        transport.write(data)

    def end(self) -> None:
        """The relayed response is complete."""
        if self.transport is not None and not self.closed:
            tail = b"0\r\n\r\n" if self.chunked_out else b""
            coder = self.coder
            if coder is not None:
                self.coder = None
                last = coder.finish()
                self.sent += len(last)
                tail = self._framed(last) + tail
            if self.pending_head or tail:
                self.transport.write(self.pending_head + tail)
        self.pending_head = b""
        self.relay = None
        self._done()

    def broken(self, message: str) -> None:
        """The upstream broke mid-response: the head is owed, the close says the rest."""
        self.log_error(f"upstream broke mid-response: {message}")
        self.relay = None
        self.coder = None
        if self.pending_head and self.transport is not None and not self.closed:
            self.transport.write(self.pending_head)
        self.pending_head = b""
        if self.transport is not None:
            self.transport.close()

    def fail(
        self, status: int, message: str, fields: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """No upstream answered: an error of the front's own (with ``fields``)."""
        self.relay = None
        self.log_error(f"{self._request_line()}: {message}")
        self.error(status, False, fields)

    def fixed_vars(self) -> bytes:
        """The uwsgi vars that are the same for each request of this connection (its
        address as the real_ip handler left it)."""
        if self._vars_addr != self.remote_addr:
            self._vars_addr = self.remote_addr
            self._fixed_vars = self._gantry_vars = b""
        if not self._fixed_vars:
            self._fixed_vars = connection_vars(self.remote_addr, *self.ports, self.https)
        return self._fixed_vars

    def gantry_vars(self) -> bytes:
        """The same, for gantry's own packet."""
        if self._vars_addr != self.remote_addr:
            self._vars_addr = self.remote_addr
            self._fixed_vars = self._gantry_vars = b""
        if not self._gantry_vars:
            self._gantry_vars = gantry_connection_vars(self.remote_addr, *self.ports, self.https)
        return self._gantry_vars

    def request_path(self, head: RequestHead) -> str:
        """The normalized path of ``head`` (the one being handled has it already)."""
        if self.head is head:
            return self.path
        route = self.worker.route(
            request_host(head, self.worker.field_memo), head.path, self.listener
        )
        return route[0] if route is not None else "/"

    def reroute(self, head: RequestHead, path: str, location: Location | None) -> None:
        """The request goes on as ``head`` (rewritten) in ``location``; the client's own
        head stays for the access log and $request_uri."""
        if self.original is None:
            self.original = self.head
        self.head = head
        self.path = path
        self.location = location

    # WebSocket: a tunnel after the upstream's 101 ----------

    def open_tunnel(self, tunnel: WebSocketTunnel, head: bytes) -> None:
        """The upstream switched protocols: its 101 goes to the client, and from now on
        the bytes of each side go to the other unchanged."""
        transport = self.transport
        if transport is None or self.closed:
            tunnel.abandon()
            return
        self.status = 101
        self.keep_alive = False
        self.relay = tunnel
        self.tunnel = tunnel
        self.worker.counters.websockets += 1
        self.tunnel_active = self.worker.now
        if self.deadline_kind != _SEND:
            self.deadline = self.worker.now + self.worker.websocket_idle_timeout
            self.deadline_kind = _TUNNEL
        transport.write(head)
        # the request's holds (its Connection: upgrade ended the HTTP reading) are over
        if self.holds & ~_HOLD_OUTPUT:
            self.holds &= _HOLD_OUTPUT
            if not self.holds:
                transport.resume_reading()

    def tunnel_write(self, data: bytes) -> None:
        """Bytes from the upstream for the client."""
        if self.transport is not None and not self.closed:
            self.tunnel_active = self.worker.now
            self.sent += len(data)
            self.transport.write(data)

    def close_tunnel(self) -> None:
        """The upstream closed its side: the client's closes too (after what is queued)."""
        if self.tunnel is not None:
            self._end_tunnel()

    def _end_tunnel(self) -> None:
        """The tunnel is over: the upstream closed, the access-log line written, the client
        closed once its output is out."""
        tunnel = self.tunnel
        if tunnel is None:
            return
        self.tunnel = None
        self.relay = None
        self.worker.counters.websockets -= 1
        tunnel.abandon()
        self.deadline = 0.0
        self.deadline_kind = 0
        self.tunnel_received = tunnel.received
        self._done()
        if self.transport is not None:
            self.transport.close()

    # the end of a response ----------

    def _frame_unknown_length(self, lines: list[bytes]) -> None:
        """A body of unknown length: chunked to an HTTP/1.1 client, else ended by the close."""
        self.chunked_out = False
        if self.head.version == "1.1":
            self.chunked_out = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.keep_alive = False

    def _framed(self, data: bytes) -> bytes:
        """``data`` as one chunk when the body is chunked (nothing for no data)."""
        if self.chunked_out and data:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def _head_bytes(self, status: int, lines: list[bytes], reason: bytes = b"") -> bytes:
        """Status line, ``lines`` (fields ending in CRLF), add_header's, HSTS, Connection,
        Server, Date."""
        location = self.location
        rules = location.add_header if location is not None else self.server.add_header
        if rules:
            lines.append(added_fields(rules, status, self))
        if self.hsts_line:
            lines.append(self.hsts_line)
        lines.append(connection_field(self.keep_alive, self.head.version))
        lines.append(self.worker.defaults.lines)
        return status_line(status, reason) + b"".join(lines)

    def _done(self) -> None:
        if self.releases is not None:
            self._run_releases()
        logged = self.original if self.original is not None else self.head
        now = record_request(
            self.worker, self.remote_addr, logged if logged is not _NO_REQUEST else None,
            self.status, self.sent, self.started, self.upstream_log, self.limit_status,
            self.cache_status, self.tunnel_received, self.ports[0],
        )  # fmt: skip
        self.cache_status = "-"
        if self.coder is not None:
            self.coder = None  # answered by a path that never asked it
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
        # answered and logged: an idle connection keeps no request (its fields, target)
        self.head = _NO_REQUEST
        if self.original is not None:
            self.original = None

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
        elif kind == _TUNNEL:
            idle = self.worker.websocket_idle_timeout
            if now - self.tunnel_active < idle:
                self.deadline = self.tunnel_active + idle  # it carried bytes meanwhile
                self.deadline_kind = _TUNNEL
            else:
                self.log_error("WebSocket idle past websocket_idle_timeout: closed")
                self._end_tunnel()
        elif self.proxy_buffer is not None:
            # no HTTP yet, so no HTTP answer: the peer is not the proxy it should be
            self.log_error("timed out waiting for the PROXY protocol header: closed")
            transport.close()
        elif (kind == _HEAD or kind == _BODY) and not self.busy and not self.queue:
            what = "head" if kind == _HEAD else "body"
            if self.rate_start:
                self.log_error(f"client sent the request {what} below its minimum rate")
            else:
                self.log_error("client timed out sending the request " + what)
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
