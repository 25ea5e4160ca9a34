"""WebSocket through the front (RFC 6455): the upgrade request checked and passed to an
HTTP upstream, then, after the upstream's 101, a byte tunnel both ways. Frames are not
parsed: the client and the upstream speak WebSocket to each other through it."""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Callable
from typing import Final, Protocol

import httptools

from gantry.config.front_model import Upstream
from gantry.front.responses import status_line
from gantry.front.upstream_request import http_request_head
from gantry.front.upstream_tls import UpstreamTLS
from gantry.protocol.http1 import RequestHead

__all__ = ["TunnelClient", "WebSocketTunnel", "handshake_error", "is_websocket", "upgrade_head"]

log: Final = logging.getLogger("gantry.front")

#: an upstream's answer to the upgrade (head and, when it refuses, body) is kept to this
UPSTREAM_ANSWER_LIMIT: Final = 1 << 20
#: the tunnel's write buffer toward the upstream: reading the client pauses above it
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024

#: fields of a refusing upstream's answer that the client side frames anew
_ANSWER_DROP: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"content-length",
     b"proxy-connection", b"date", b"server"}
)  # fmt: skip


def is_websocket(head: RequestHead) -> bool:
    """An upgrade request that asks for WebSocket: ``Upgrade: websocket`` named by
    Connection (other upgrades, h2c for one, are served as plain requests). The parser's
    ``upgrade`` flag (Connection names upgrade and an Upgrade is there) spares the
    common request the look at its fields."""
    if not head.upgrade:
        return False
    upgrade = connection = False
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"upgrade":
            upgrade = any(p.strip().lower() == b"websocket" for p in value.split(b","))
        elif lname == b"connection":
            connection = connection or any(
                p.strip().lower() == b"upgrade" for p in value.split(b",")
            )
    return upgrade and connection


def handshake_error(head: RequestHead) -> tuple[str, list[tuple[bytes, bytes]]] | None:
    """What is wrong with a WebSocket opening handshake (RFC 6455 4.1: GET, a
    Sec-WebSocket-Key of 16 bytes in base64, Sec-WebSocket-Version 13), and the fields to
    answer the 400 with; None when it may go on."""
    if head.method != "GET":
        return f"WebSocket upgrade with method {head.method}", []
    key = b""
    version = b""
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"sec-websocket-key":
            key = value.strip()
        elif lname == b"sec-websocket-version":
            version = value.strip()
    if version != b"13":
        # RFC 6455 4.4: the versions the server speaks go with the refusal
        return "WebSocket upgrade without Sec-WebSocket-Version 13", [
            (b"Sec-WebSocket-Version", b"13")
        ]
    try:
        valid = len(binascii.a2b_base64(key)) == 16 and len(key) == 24
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return "WebSocket upgrade without a valid Sec-WebSocket-Key", []
    return None


def upgrade_head(
    head: RequestHead,
    remote_addr: str,
    script_name: str,
    fields: list[tuple[bytes, bytes]] | None,
    https: bool,
) -> bytes:
    """The upgrade request for the upstream: the proxied request's head (X-Forwarded-*,
    X-Real-IP, no hop-by-hop fields), with Upgrade and Connection passed on for this
    request only."""
    plain = http_request_head(head, remote_addr, 0, script_name, fields, https)
    return plain[:-2] + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"


class TunnelClient(Protocol):
    """What the tunnel needs from the client side of the connection."""

    remote_addr: str
    closed: bool
    #: (address, seconds) of each upstream attempt, for the access log (None: not kept)
    upstream_log: list[tuple[str, float]] | None

    def open_tunnel(self, tunnel: WebSocketTunnel, head: bytes) -> None:
        """The upstream switched protocols: ``head`` (its 101 and any bytes after it) goes
        to the client, then the client's bytes go to ``tunnel.from_client``."""

    def tunnel_write(self, data: bytes) -> None:
        """Bytes from the upstream for the client."""

    def close_tunnel(self) -> None:
        """The upstream side ended: log the tunnel and close the client."""

    def pause_reading(self) -> None:
        """Stop reading the client (the upstream is not taking its bytes)."""

    def resume_reading(self) -> None:
        """Read the client again."""

    def respond_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response (the upstream refused the upgrade)."""

    def end(self) -> None:
        """The response is complete."""

    def fail(
        self, status: int, message: str, fields: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """An error response of the front's own."""

    def log_error(self, message: str) -> None:
        """One error-log line about this request."""


class WebSocketTunnel(asyncio.Protocol):
    """The upstream side of one WebSocket: sends the upgrade, reads the answer, then
    carries bytes both ways, each side paused while the other's output is full."""

    def __init__(
        self,
        client: TunnelClient,
        request: bytes,
        address: str,
        upstream: Upstream,
        tls: UpstreamTLS | None,
        ended: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = client
        #: told once when the tunnel is over (whether it opened): least_conn counts
        #: an open tunnel as a request in flight
        self.ended = ended
        self.request = request
        self.address = address
        self.upstream = upstream
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        #: the upstream said 101: bytes flow unchanged from here on
        self.upgraded = False
        self.abandoned = False
        #: the answer so far, while it is not a 101
        self.answer = bytearray()
        self.parser = httptools.HttpResponseParser(self)
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        #: bytes carried from the client to the upstream
        self.received = 0

    # opening ----------

    async def open(self) -> None:
        """Connect (within connect_timeout) and send the upgrade; a failure is the client's
        502 or 504."""
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        address = self.address
        try:
            if address.startswith("unix:"):
                connect = loop.create_unix_connection(
                    lambda: self,
                    address[5:],
                    ssl=self.tls[0] if self.tls else None,
                    server_hostname=self.tls[1] if self.tls else None,
                )
            else:
                host, _, port = address.rpartition(":")
                connect = loop.create_connection(
                    lambda: self,
                    host.strip("[]"),
                    int(port),
                    ssl=self.tls[0] if self.tls else None,
                    server_hostname=self.tls[1] if self.tls else None,
                )
            await asyncio.wait_for(connect, self.upstream.connect_timeout)
        except TimeoutError:
            self._failed(504, f"connecting to {address} timed out")
        except (OSError, ValueError) as exc:
            self._failed(502, f"connecting to {address} failed: {exc}")

    def _end(self, ok: bool) -> None:
        ended = self.ended
        if ended is not None:
            self.ended = None
            ended(ok)

    def _failed(self, status: int, message: str) -> None:
        self._end(False)
        self._log_attempt()
        if not self.abandoned and not self.client.closed:
            self.client.fail(status, message)

    def _log_attempt(self) -> None:
        attempts = self.client.upstream_log
        if attempts is not None and self.started:
            loop = asyncio.get_running_loop()
            attempts.append((self.address, loop.time() - self.started))
            self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.abandoned:
            transport.close()
            return
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        self.transport.write(self.request)  # type: ignore[union-attr]
        self.timer = asyncio.get_running_loop().call_later(
            self.upstream.read_timeout, self._answer_timed_out
        )

    def _answer_timed_out(self) -> None:
        self.timer = None
        if not self.upgraded and not self.abandoned:
            self._close_upstream()
            self._failed(504, f"{self.address} did not answer the upgrade in time")

    def _close_upstream(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    # the upstream's bytes ----------

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.client.tunnel_write(data)
            return
        if self.abandoned or self.complete:
            return
        self.answer += data
        if len(self.answer) > UPSTREAM_ANSWER_LIMIT:
            self._close_upstream()
            self._failed(502, f"{self.address} answered the upgrade with too large a response")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.parser.get_status_code() != 101:
                self._close_upstream()
                self._failed(502, f"{self.address} upgraded without a 101")
                return
            self._switched(int(exc.args[0]), data)
            return
        except httptools.HttpParserError as exc:
            self._close_upstream()
            self._failed(502, f"{self.address} sent a malformed answer to the upgrade: {exc}")
            return
        if self.complete:
            self._refused()

    def _switched(self, offset: int, data: bytes) -> None:
        """The 101: its head and what follows go to the client, then bytes flow."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._log_attempt()
        self.upgraded = True
        # the head may have come in several reads: everything before this one's offset
        head = bytes(self.answer[: len(self.answer) - len(data) + offset])
        rest = data[offset:]
        self.answer = bytearray()
        self.client.open_tunnel(self, head)
        if rest:
            self.client.tunnel_write(rest)

    def _refused(self) -> None:
        """The upstream answered the upgrade with a plain response: it goes to the client
        as the front's other proxied answers do (framed anew, the connection closed)."""
        self._close_upstream()
        self._log_attempt()
        if self.abandoned or self.client.closed:
            return
        status = self.parser.get_status_code()
        lines = [status_line(status)]
        for name, value in self.fields:
            if name.lower() not in _ANSWER_DROP:
                lines.append(name + b": " + value + b"\r\n")
        lines.append(b"Content-Length: %d\r\n" % len(self.body))
        self.client.respond_whole(status, b"".join(lines), bytes(self.body))
        self.client.end()

    # httptools callbacks (the answer when it is not a 101)
    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(self.upgraded or self.complete or self.abandoned)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.abandoned:
            return
        if self.upgraded:
            self.client.close_tunnel()
        elif not self.complete:
            self._failed(502, f"{self.address} closed the connection before a 101")

    # back-pressure: the upstream's output full -> hold the client, and back
    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()

    # Relay: the client side's back-pressure and its going away
    def pause(self) -> None:
        """The client is not reading: stop reading the upstream."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        """The client drained: read the upstream again."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The client went away (or the tunnel timed out): close the upstream."""
        self.abandoned = True
        self._close_upstream()

    def from_client(self, data: bytes) -> None:
        """Bytes from the client for the upstream."""
        self.received += len(data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
