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
#: bytes of a kept connection's next packet(s) read while a response runs; past
#: this, reading stops until the response is done
EARLY_LIMIT: Final = 128 * 1024  # above the largest packet head (4 + 65535)


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
        #: reading stopped: the next packet's bytes passed EARLY_LIMIT during a response
        self.reading_paused = False
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
        buffer = self.buffer
        if self.busy:
            if self.reuse:
                # The next packet, read once this response is done; past a bound,
                # stop reading until then (a peer that pipelines waits its turn).
                buffer += data
                if len(buffer) > EARLY_LIMIT and not self.reading_paused:
                    assert self.transport is not None
                    self.transport.pause_reading()
                    self.reading_paused = True
            return  # one request per connection: ignore anything past the body
        if self.waiting_drain:
            # The peer has not read its last answer: its next packet waits (no
            # timeout meanwhile) until the output drains, as one sent during it.
            buffer += data
            self.idle_since = self.deadline = 0.0
            if len(buffer) > EARLY_LIMIT and not self.reading_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.reading_paused = True
            return
        if self.vars is not None and not buffer:
            # A piece of the body, as most arrive: no copy through the buffer.
            self._take_body(data)
            return
        if not buffer and self.idle_since:
            # a kept connection's next packet: the head timeout starts now
            self.idle_since = 0.0
            self.deadline = self.loop.time() + self.ctx.config.header_timeout
        buffer += data
        self._consume()

    def _consume(self) -> None:
        """Read the packet, then its body, from the buffer; start the request when whole.

        Bytes past the packet and its body stay in the buffer (the next packet of
        a kept connection); consumed bytes leave from its front, which a bytearray
        does without moving the rest.
        """
        buffer = self.buffer
        if self.vars is None:
            if len(buffer) < 4:
                return
            used = self._read_packet(buffer)
            if not used:
                return  # more bytes needed, or the packet was refused
            del buffer[:used]
            length = self.remaining
            if length > self.ctx.limits.max_body_size:
                self._reply_and_close("413 Content Too Large")
                return
            if length:
                self.body = BodyBuffer(self.ctx.config.body_spool_threshold)
        remaining = self.remaining
        if remaining and buffer:
            taken = min(remaining, len(buffer))
            body = self.body
            assert body is not None
            body.append(bytes(buffer[:taken]))
            del buffer[:taken]
            self.remaining = remaining - taken
        self._body_progress()

    def _take_body(self, data: bytes) -> None:
        remaining = self.remaining
        body = self.body
        if body is not None and remaining:
            if len(data) <= remaining:
                body.append(data)
                self.remaining = remaining - len(data)
            else:
                body.append(data[:remaining])
                self.remaining = 0
                if self.reuse:
                    self.buffer += data[remaining:]
        elif self.reuse:
            self.buffer += data
        self._body_progress()

    def _body_progress(self) -> None:
        if self.remaining == 0:
            if not self.reuse:
                self.buffer.clear()  # one request per connection: the rest is ignored
            self.busy = True
            self.ctx.schedule(self._start, self.vars)
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

    def _start(self, packet: list[tuple[bytes, bytes]] | dict[str, str]) -> None:
        self.deadline = 0.0
        environ: dict[str, Any] = self.template.base.copy()
        if isinstance(packet, dict):
            cgi = packet
        else:
            cgi = environ_from_uwsgi(packet, self.template.mount_prefix)
            if self.reuse:
                cgi.pop("GANTRY_KEEPALIVE", None)
        scheme = cgi.pop("UWSGI_SCHEME", None)
        if scheme is None and isinstance(packet, dict) and cgi.get("HTTPS") == "on":
            scheme = "https"  # gantry's packet: as environ_from_uwsgi does for the other
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
        if not (self.reuse and keep_alive) or self.closed or (self.eof and not self.buffer):
            self._close()
            return
        # Ready for the next packet on this connection.
        self.busy = False
        self.vars = None
        self.reuse = False
        self.remaining = 0
        self.deadline = self.loop.time() + self.ctx.config.keepalive_timeout
        self.idle_since = self.ctx.now
        if self.write_paused:
            # The peer is not reading: the next packet waits until it does, with
            # no timeout if it is here already (it is not an idle connection).
            self.waiting_drain = True
            if self.buffer:
                self.idle_since = self.deadline = 0.0
            return
        self.drained()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.busy:
            return True
        if self.buffer and self.vars is None:
            # Whole packets may wait in the buffer (a response just ended): read
            # them; _resume closes once nothing more can complete.
            self.loop.call_soon(self._resume)
            return True
        return None

    def drained(self) -> None:
        if self.closed or self.busy:
            return
        if self.reading_paused and len(self.buffer) <= EARLY_LIMIT and not self.eof:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        if self.buffer:
            self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if not self.closed and not self.busy and self.vars is None:
            self.idle_since = 0.0
            self.deadline = self.loop.time() + self.ctx.config.header_timeout
            self._consume()
            if self.eof and not self.busy and self.transport is not None:
                # half-closed: a packet cut short can never complete
                self.transport.close()

    def _malformed(self, reason: str) -> None:
        error_log.error("uwsgi: malformed packet from %s: %s", self.remote_addr or "unix", reason)
        assert self.transport is not None
        self.transport.close()

    def _reply_and_close(self, status: str) -> None:
        assert self.transport is not None
        self.transport.write(error_response(status, None, raw=True))
        self.transport.close()
