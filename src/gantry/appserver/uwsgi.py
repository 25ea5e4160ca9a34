"""The uwsgi-protocol connection: one request per connection, as nginx's uwsgi_pass sends it.

Gantry's own front may ask to keep the connection for the next packet by sending
the var ``GANTRY_KEEPALIVE=1`` (as FastCGI's keep-conn flag): the response is then
framed (Content-Length or chunked) and the connection waits for the next packet,
idle for at most the keep-alive timeout. nginx never sends it and gets the close.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Final

from gantry.appserver.context import WorkerContext, error_log
from gantry.appserver.http import IDLE_STATE
from gantry.appserver.wsgi_connection import WSGIConnection
from gantry.http.body import BodyBuffer
from gantry.protocol.uwsgi import (
    GANTRY_MODIFIER2,
    UwsgiProtocolError,
    parse_gantry_packet,
    parse_packet,
)
from gantry.wsgi.environ import EnvironTemplate
from gantry.wsgi.input import EMPTY_INPUT
from gantry.wsgi.response import Response, error_response
from gantry.wsgi.uwsgi_environ import environ_from_fields, environ_from_uwsgi

KEEPALIVE_VAR: Final = b"GANTRY_KEEPALIVE"


class UwsgiConnection(WSGIConnection):
    """Reads a uwsgi packet and its body, runs the app, answers raw HTTP; closes unless the
    peer asked to keep the connection."""

    raw_response = True

    def __init__(
        self,
        ctx: WorkerContext,
        template: EnvironTemplate,
        allow_from: tuple[Any, ...] | None,
    ) -> None:
        super().__init__(ctx)
        self.template = template
        self.allow_from = allow_from
        self.buffer = bytearray()
        #: the current packet's vars (a standard packet's pairs, or gantry's own
        #: packet's environ), None between packets
        self.vars: list[tuple[bytes, bytes]] | dict[str, str] | None = None
        self.body: BodyBuffer | None = None
        self.remaining = 0
        #: the current packet asked to keep the connection
        self.reuse = False
        #: bytes of the next packet that came while a response was running
        self.early = b""
        #: when a kept connection went idle (0: a new connection, or a packet being read or run)
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        if self.allow_from is not None:
            peer = transport.get_extra_info("peername")
            try:
                address = ipaddress.ip_address(peer[0])
            except (TypeError, ValueError, IndexError):
                address = None
            if address is None or not any(address in net for net in self.allow_from):
                # The peer would set REMOTE_ADDR and every var itself: only the front may.
                error_log.warning("uwsgi: refused connection from %s (not in allow list)", peer)
                self.transport.abort()
                return
        self.deadline = self.loop.time() + self.ctx.config.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.body is not None:
            self.body.discard()

    @property
    def state(self) -> object:
        """IDLE_STATE between packets of a kept connection (a graceful stop closes it):
        ``idle_since`` is set when a response ends and cleared by the next byte. A new
        connection is not idle: whoever opened it is sending a packet, which a graceful
        stop waits for (bounded by the header timeout)."""
        return IDLE_STATE if self.idle_since else None

    def deadline_passed(self) -> None:
        """The packet or its body did not arrive in time (or a kept connection idled out)."""
        self.deadline = 0.0
        if self.busy or self.closed:
            return
        if self.state is not IDLE_STATE:
            error_log.info("uwsgi: timed out reading the request from %s", self.remote_addr)
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.vars is None:
            buffer = self.buffer
            if not buffer and self.idle_since:
                # a kept connection's next packet: the head timeout starts now
                self.idle_since = 0.0
                self.deadline = self.loop.time() + self.ctx.config.header_timeout
            buffer += data
            used = self._read_packet(buffer) if len(buffer) >= 4 else 0
            if not used:
                return  # more bytes needed, or the packet was refused
            data = bytes(buffer[used:])  # the start of the body
            self.buffer = bytearray()
            length = self.remaining
            if length > self.ctx.limits.max_body_size:
                self._reply_and_close("413 Content Too Large")
                return
            if length:
                self.body = BodyBuffer(self.ctx.config.body_spool_threshold)
            if not data and not length:
                self.busy = True
                self.ctx.schedule(self._start)
                return
        if self.busy:
            if self.reuse:
                self.early += data  # the next packet, read once this response is done
            return  # one request per connection: ignore anything past the body
        if self.body is not None and data:
            piece = data[: self.remaining]
            self.body.append(piece)
            self.remaining -= len(piece)
        if self.remaining == 0:
            self.busy = True
            self.ctx.schedule(self._start)
        else:
            # body timeout semantics: the limit is between reads
            self.deadline = self.loop.time() + self.ctx.config.body_timeout

    def _read_packet(self, buffer: bytearray) -> int:
        """The packet at the start of ``buffer``: its vars, body length and whether the
        connection is kept are noted; returns the bytes it took, or 0 if more are needed
        or the packet was refused. Gantry's own packet (its front's) is the environ in
        one split and always keeps the connection."""
        size = self.ctx.config.buffer_size
        length = ""
        packet: list[tuple[bytes, bytes]] | dict[str, str]
        try:
            if buffer[3] == GANTRY_MODIFIER2 and buffer[0] == 0:
                own = parse_gantry_packet(buffer, size)
                if own is None:
                    return 0
                fields, used = own
                packet = environ_from_fields(fields, self.template.mount_prefix)
                length = packet.get("CONTENT_LENGTH", "")
                self.reuse = True
            else:
                parsed = parse_packet(buffer, size)
                if parsed is None:
                    return 0
                header, pairs, used = parsed
                if header.modifier1 != 0:
                    self._malformed(f"unsupported modifier1 {header.modifier1}")
                    return 0
                for key, value in pairs:
                    if key == b"CONTENT_LENGTH":
                        length = value.decode("latin-1")
                    elif key == KEEPALIVE_VAR:
                        self.reuse = value == b"1"
                packet = pairs
        except UwsgiProtocolError as exc:
            self._malformed(str(exc))
            return 0
        if length and not (length.isascii() and length.isdigit()):
            self._malformed("invalid CONTENT_LENGTH")
            return 0
        self.vars = packet
        self.remaining = int(length or "0")
        return used

    def _start(self) -> None:
        self.deadline = 0.0
        packet = self.vars
        assert packet is not None
        environ: dict[str, Any] = self.template.base.copy()
        if isinstance(packet, dict):
            cgi = packet
        else:
            cgi = environ_from_uwsgi(packet, self.template.mount_prefix)
            if self.reuse:
                cgi.pop("GANTRY_KEEPALIVE", None)
        scheme = cgi.pop("UWSGI_SCHEME", None)
        environ.update(cgi)
        if scheme:
            environ["wsgi.url_scheme"] = scheme
        body = self.body
        environ["wsgi.input"] = body.to_input() if body is not None else EMPTY_INPUT
        self.body = None
        protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        response = Response(
            self.write_callable,
            keep_alive=self.reuse and not self.ctx.stopping,
            head_only=environ.get("REQUEST_METHOD") == "HEAD",
            http10=protocol == "HTTP/1.0",
            raw=True,
        )
        self.run_app(environ, response)

    def response_done(self, keep_alive: bool) -> None:
        if not (self.reuse and keep_alive) or self.closed:
            self._close()
            return
        # Ready for the next packet on this connection.
        self.busy = False
        self.vars = None
        self.reuse = False
        self.remaining = 0
        self.deadline = self.loop.time() + self.ctx.config.keepalive_timeout
        self.idle_since = self.ctx.now
        early, self.early = self.early, b""
        if early:
            self.loop.call_soon(self._resume_with, early)

    def _resume_with(self, data: bytes) -> None:
        if not self.closed and not self.busy and self.vars is None:
            self.data_received(data)

    def _malformed(self, reason: str) -> None:
        error_log.error("uwsgi: malformed packet from %s: %s", self.remote_addr or "unix", reason)
        assert self.transport is not None
        self.transport.close()

    def _reply_and_close(self, status: str) -> None:
        assert self.transport is not None
        self.transport.write(error_response(status, None, raw=True))
        self.transport.close()
