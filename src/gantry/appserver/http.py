"""The HTTP/1.1 connection of the application server."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from gantry.appserver.context import WorkerContext, error_log
from gantry.appserver.wsgi_connection import WSGIConnection
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import ProtocolError, RequestHead, RequestParser
from gantry.wsgi.environ import EnvironTemplate
from gantry.wsgi.response import Response, error_response

# More complete pipelined requests than this waiting: stop reading the socket.
MAX_PIPELINED: Final = 16

_REASONS: Final = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}

# What the connection is waiting for, which decides the timeout that applies.
_IDLE, _HEAD, _BODY, _BUSY = range(4)
IDLE_STATE: Final = _IDLE

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class HTTPConnection(WSGIConnection):
    """One client connection: parses requests, queues pipelined ones, runs the app for each."""

    def __init__(self, ctx: WorkerContext, template: EnvironTemplate) -> None:
        super().__init__(ctx)
        self.template = template
        self.parser = RequestParser(self, ctx.limits)
        self.head: RequestHead | None = None
        self.body: BodyBuffer | None = None
        self.queue: deque[tuple[RequestHead, BodyBuffer | None]] = deque()
        self.reading_paused = False
        #: a refused request pipelined behind others: answered once they are
        self.refusal: ProtocolError | None = None
        self.state = _IDLE
        #: when the current wait (idle, head, body) times out; 0 = no deadline
        self.deadline = 0.0
        #: when the connection opened or last became idle (the loop's time at the
        #: open: ``ctx.now`` may be a second old, and a graceful stop would close a
        #: new connection a request is on its way on as idle)
        self.idle_since = ctx.loop.time()

    # timeouts: a deadline per connection, checked by the worker's 1 s sweep ----

    def _arm(self, state: int, seconds: float) -> None:
        self.state = state
        # ctx.now is at most a second old: the slack keeps a deadline from firing early.
        self.deadline = self.ctx.now + seconds + 1.0

    def deadline_passed(self) -> None:
        """Called by the worker's sweep once ``deadline`` is behind us."""
        if self.closed or self.state == _BUSY:
            return
        assert self.transport is not None
        if self.state == _IDLE:
            self.transport.close()
        elif self.state == _HEAD:
            error_log.info("%s: timed out receiving the request head", self.remote_addr)
            self._refuse(ProtocolError(408, "request head timeout"))
        else:
            error_log.info("%s: timed out receiving the request body", self.remote_addr)
            self._refuse(ProtocolError(408, "request body timeout"))

    # asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.environ_base = self.template.for_peer(self.remote_addr, self.remote_port)
        # nginx too gives the first request the head timeout, not the keep-alive one.
        self._arm(_HEAD, self.ctx.config.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.parser.close()  # it and llhttp point back at this connection
        if self.body is not None:
            self.body.discard()
        for _, body in self.queue:
            if body is not None:
                body.discard()
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.state == _BODY:
            # client_body_timeout semantics: the limit is between reads
            self.deadline = self.ctx.now + self.ctx.config.body_timeout + 1.0
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        if self.state == _IDLE and not self.parser.at_boundary:
            # Part of a head arrived (a whole one would have been served by now).
            self._arm(_HEAD, self.ctx.config.header_timeout)

    # RequestSink --------------------------------------------------------------------

    def request_head(self, head: RequestHead) -> None:
        self.head = head
        if head.has_body:
            self.body = BodyBuffer(self.ctx.config.body_spool_threshold)
            if head.expect_continue and not self.busy and not self.queue:
                assert self.transport is not None
                self.transport.write(_CONTINUE)
            if not self.busy:
                self._arm(_BODY, self.ctx.config.body_timeout)
        else:
            self.body = None

    def request_body(self, data: bytes) -> None:
        body = self.body
        if body is not None:
            body.append(data)

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        head = self.head
        if head is None:
            return
        body = self.body
        self.head = None
        self.body = None
        if self.busy or self.queue:
            self.queue.append((head, body))
            if len(self.queue) >= MAX_PIPELINED and not self.reading_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.reading_paused = True
            return
        # Run the app after this loop iteration's reads, with the other
        # connections' requests: parsing and app code each run in a batch.
        self.busy = True
        # the request is whole: no head or body timeout may fire before it runs
        self.state = _BUSY
        self.ctx.schedule(self._handle_queued, head, body)

    # requests -------------------------------------------------------------------

    def _handle(self, head: RequestHead, body: BodyBuffer | None) -> None:
        self.state = _BUSY
        if body is None:
            environ = self.template.from_http(head, self.environ_base)
        else:
            environ = self.template.from_http(
                head, self.environ_base, body.to_input(), body.size if head.chunked else None
            )
        response = Response(
            self.write_callable,
            # once stopping, every response says so (Connection: close)
            head.keep_alive and not head.upgrade and not self.ctx.stopping,
            head.method == "HEAD",
            head.version == "1.0",
        )
        self.run_app(environ, response)

    def response_done(self, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        if not keep_alive or self.closed:
            self._close()
            return
        queue = self.queue
        if queue:
            if (
                self.reading_paused
                and len(queue) <= MAX_PIPELINED // 2
                and not self.refusal
                and not self.eof
            ):
                self.reading_paused = False
                transport.resume_reading()
            # Run the next pipelined request from the loop, not recursively.
            head, body = queue.popleft()
            self.ctx.schedule(self._handle_queued, head, body)
            return
        refusal = self.refusal
        if refusal is not None:
            self._send_refusal(refusal)
            return
        if self.eof:
            # Half-closed: everything asked for is answered (a request cut by the
            # half-close can never complete).
            self._close()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if self.head is not None:
            # a body is arriving for the next request
            self._arm(_BODY, self.ctx.config.body_timeout)
        else:
            self.state = _IDLE
            self.idle_since = now = self.ctx.now
            self.deadline = now + self.ctx.config.keepalive_timeout + 1.0

    def has_work(self) -> bool:
        return self.busy or bool(self.queue)

    def _handle_queued(self, head: RequestHead, body: BodyBuffer | None) -> None:
        if self.closed:
            return
        if self.write_paused:
            # The client is not reading: run nothing more for it until the output
            # drains (reading stops too, once the queue is full).
            self.queue.appendleft((head, body))
            self.waiting_drain = True
            return
        self._handle(head, body)

    def drained(self) -> None:
        if self.queue and not self.closed:
            head, body = self.queue.popleft()
            self.ctx.schedule(self._handle_queued, head, body)

    def _refuse(self, exc: ProtocolError) -> None:
        """Answer a refused request with its status and close: the stream is no longer trusted."""
        transport = self.transport
        if transport is None or self.closed:
            return
        error_log.info("%s:%s refused: %s", self.remote_addr, self.remote_port, exc)
        if self.busy or self.queue:
            # Earlier requests own the response stream: answer them first, in
            # order, then this refusal (response_done sends it), as nginx does.
            # The parser is dead and nothing more is read.
            self.refusal = exc
            self.head = None
            if self.body is not None:
                self.body.discard()
                self.body = None
            if not self.reading_paused:
                transport.pause_reading()
                self.reading_paused = True
            return
        self._send_refusal(exc)

    def _send_refusal(self, exc: ProtocolError) -> None:
        """The error response and the close, after whatever was sent before (a batch's
        held sends included)."""
        status = exc.status
        self._send(error_response(f"{status} {_REASONS.get(status, 'Error')}", self.ctx.defaults))
        self._close()
        self.state = _BUSY
