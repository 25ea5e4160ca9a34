"""The front's TLS termination: the loop's plain TCP transport carries the ciphertext, the
ssl module's connection object over two memory BIOs (front.tls_steps) turns it into the
plaintext the HTTP/1 and HTTP/2 connections read, and their writes back into records, as
nginx drives OpenSSL itself.

Measured against uvloop's own TLS transport (``create_server(ssl=...)``, bench/front.py
and bench/tls_transport.py), this costs less a request and a handshake: no second
transport object and its handshake future, no task per connection, one SSL write and
one socket write for what a response writes at once (with the session tickets and
close_notify when they go at the same time), and a close that does not wait for the
peer's close_notify.

Each connection's first byte is seen before any handshake, as nginx does: a TLS client
opens with a handshake record (first byte 0x16); anything else is plain HTTP sent to the
HTTPS port and gets nginx's answer, 400 "The plain HTTP request was sent to HTTPS port",
and the close, where a TLS server would fail the handshake and close without a word.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

from gantry.front.tls_steps import TLSConnection, handshake_step, ssl_object

__all__ = ["PLAIN_HTTP_ANSWER", "TLSListener", "TLSStream"]

log: Final = logging.getLogger("gantry.front")

#: the first byte of a TLS record that carries a handshake: every ClientHello opens with it
TLS_HANDSHAKE: Final = 0x16
#: bytes of a plain-HTTP head read before the answer (the rest is not waited for)
PLAIN_HEAD_LIMIT: Final = 16 * 1024
#: the most plaintext one record carries: a read is asked for no more
RECORD_PLAINTEXT: Final = 16 * 1024

_MESSAGE: Final = b"400 The plain HTTP request was sent to HTTPS port\n"
#: nginx's status and words; the connection closes after it
PLAIN_HTTP_ANSWER: Final = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_MESSAGE)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _MESSAGE
)

# Where a TLSStream is.
_NEW: Final = 0  # no byte yet
_HANDSHAKE: Final = 1  # a ClientHello came: the handshake is under way
_OPEN: Final = 2  # handshake done: the connection's protocol has it
_CLOSING: Final = 3  # closed on our side (close_notify sent): the socket closes
_CLOSED: Final = 4  # the socket is closed


class PlainHTTPAnswer(asyncio.Protocol):
    """A plain-HTTP client on a TLS listener: its head is read (bounded, within the
    timeout), then it gets PLAIN_HTTP_ANSWER and the close. Reading the head first keeps
    the close from resetting the connection before the client has read the answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, address: str) -> None:
        self.loop = loop
        self.timeout = timeout
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        # a client that sends no whole head is answered when the time is up
        self.timer = self.loop.call_later(self.timeout, self.answer)

    def data_received(self, data: bytes) -> None:
        start = max(0, len(self.head) - 3)
        self.head += data[: PLAIN_HEAD_LIMIT - len(self.head)]
        if b"\r\n\r\n" in self.head[start:] or len(self.head) >= PLAIN_HEAD_LIMIT:
            self.answer()

    def answer(self) -> None:
        """Say 400 once and close (the loop sends what is written first)."""
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        log.info("client %s sent a plain HTTP request to an HTTPS port", self.address)
        transport.write(PLAIN_HTTP_ANSWER)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class TLSStream(asyncio.Protocol):
    """One TLS connection: the protocol of the plain TCP transport and the transport of
    the connection's own protocol (made by ``factory`` once the handshake is done), with
    the transport calls FrontConnection and Http2Connection make.

    The handshake has the listener's timeout (client_header_timeout) from the accept, as
    the first request head would have, kept by the listener's sweep (see TLSListener);
    the SNI callback and the session tickets are the context's.
    """

    def __init__(self, listener: TLSListener) -> None:
        # the listener's loop, context, factory and timeout are the same for each of its
        # connections: found through it, not copied into each
        self.listener = listener
        self.state = _NEW
        self.raw: asyncio.Transport | None = None
        self.app: asyncio.Protocol | None = None
        #: made with the first byte (a silent or plain-HTTP client costs none of them)
        self.incoming: ssl.MemoryBIO | None = None
        self.outgoing: ssl.MemoryBIO | None = None
        self.tls: TLSConnection | None = None
        #: the ssl.SSLObject around ``tls``, made when asked for (get_extra_info)
        self.view: ssl.SSLObject | None = None
        #: loop time past which the handshake is given up (the listener's sweep)
        self.deadline = 0.0
        #: the protocol is reading what we gave it: its writes wait in the outgoing BIO
        #: and go to the socket together when it returns
        self.delivering = False

    # the plain TCP transport's protocol ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        self.raw = cast(asyncio.Transport, transport)
        self.listener.watch(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _OPEN:
            self._receive(data)
        elif state == _HANDSHAKE:
            self._handshake(data)
        elif state == _NEW:
            if data[0] != TLS_HANDSHAKE:
                self._plain(data)
                return
            self.state = _HANDSHAKE
            self.incoming = ssl.MemoryBIO()
            self.outgoing = ssl.MemoryBIO()
            self.tls = self.listener.wrap_bio(self.incoming, self.outgoing, True, None)
            self._handshake(data)

    def eof_received(self) -> bool | None:
        app = self.app
        if app is not None and self.state == _OPEN:
            app.eof_received()  # a TLS connection cannot stay half-open: it closes anyway
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state < _OPEN:
            self.listener.handshaking.discard(self)
        self.state = _CLOSED
        app = self.app
        if app is not None:
            self.app = None
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        app = self.app
        if app is not None:
            app.pause_writing()

    def resume_writing(self) -> None:
        app = self.app
        if app is not None:
            app.resume_writing()

    # the handshake and the records -----------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        tls = self.tls
        incoming = self.incoming
        assert tls is not None and incoming is not None
        incoming.write(data)
        try:
            # the usual "wants more" comes back as a value (see front.tls_steps)
            done = handshake_step(tls)
        except (ssl.SSLError, ValueError) as exc:
            # a client we do not speak with (an old version, no common cipher): our alert
            # goes, then the close, as a failed handshake ends in nginx
            log.debug("TLS handshake failed: %s", exc)
            self.state = _CLOSING
            self._flush()
            if self.raw is not None:
                self.raw.close()
            return
        if not done:  # the client's next flight is needed: ours goes now
            self._flush()
            return
        listener = self.listener
        listener.handshaking.discard(self)
        self.state = _OPEN
        app = listener.factory()
        self.app = app
        app.connection_made(cast(asyncio.BaseTransport, self))
        # a request sent with the client's Finished is in the BIO already; the session
        # tickets wait in ours to go with its response
        if incoming.pending and self.state == _OPEN:
            self._receive(b"")
        else:
            self._flush()

    def _receive(self, data: bytes) -> None:
        """Records in: their plaintext to the protocol in one call, then out what it
        wrote meanwhile in one socket write."""
        tls = self.tls
        incoming = self.incoming
        assert tls is not None and incoming is not None
        if data:
            incoming.write(data)
        plain = b""
        pieces: list[bytes] | None = None
        ended = False
        while True:
            try:
                piece = tls.read(RECORD_PLAINTEXT)
            except ssl.SSLWantReadError:  # the rest of a record is on its way
                break
            except ssl.SSLZeroReturnError:
                ended = True
                break
            except ssl.SSLError as exc:
                log.debug("TLS record refused: %s", exc)
                self.abort()
                return
            if not piece:  # the client's close_notify
                ended = True
                break
            if not plain:
                plain = piece
            elif pieces is None:
                pieces = [plain, piece]
            else:
                pieces.append(piece)
            # one read takes one whole record: with no ciphertext left, another read
            # would only raise SSLWantReadError
            if not incoming.pending:
                break
        app = self.app
        if app is None:
            return
        if plain:
            self.delivering = True
            try:
                app.data_received(plain if pieces is None else b"".join(pieces))
            finally:
                self.delivering = False
        if ended and self.state == _OPEN:
            app.eof_received()
            self.close()
        self._flush()

    def _flush(self) -> None:
        """The ciphertext made so far to the socket, in one write."""
        outgoing = self.outgoing
        raw = self.raw
        if outgoing is not None and outgoing.pending and raw is not None:
            raw.write(outgoing.read())

    def timed_out(self) -> None:
        """No ClientHello, or no finished handshake, within client_header_timeout."""
        raw = self.raw
        if self.state < _OPEN and raw is not None:
            self.state = _CLOSING
            raw.abort()

    def _plain(self, data: bytes) -> None:
        """Plain HTTP on the HTTPS port: PlainHTTPAnswer takes the socket over."""
        raw = self.raw
        assert raw is not None
        listener = self.listener
        listener.handshaking.discard(self)
        self.state = _CLOSING
        peer = raw.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else "unix:"
        answer = PlainHTTPAnswer(listener.loop, listener.timeout, address)
        raw.set_protocol(answer)
        answer.connection_made(raw)
        answer.data_received(data)

    # the protocol's transport ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Plaintext out: encrypted now, sent now or when the protocol returns."""
        tls = self.tls
        if self.state != _OPEN or tls is None or not data:
            return
        tls.write(data)
        if not self.delivering:
            self._flush()

    def writelines(self, pieces: Any) -> None:
        """Several pieces, in one SSL write and one socket write."""
        self.write(b"".join(pieces))

    def close(self) -> None:
        """close_notify and what was written go, then the socket closes; the client's
        close_notify is not waited for (nginx does not wait either)."""
        if self.state >= _CLOSING:
            return
        self.state = _CLOSING
        tls = self.tls
        incoming = self.incoming
        if tls is not None and incoming is not None:
            # our close_notify into the outgoing BIO. shutdown() calls SSL_shutdown a
            # second time, to read the client's close_notify, and raised
            # SSLWantReadError when it had not come (the usual case; ~9 us with the
            # exception, caught here). With the end of the incoming BIO marked and the
            # context's OP_IGNORE_UNEXPECTED_EOF (TLSListener sets it), that read ends
            # the connection as the client's close_notify would, without an error.
            # Any ssl error left is of a connection that is closing anyway.
            incoming.write_eof()
            try:
                tls.shutdown()
            except ssl.SSLError:
                pass
        self._flush()
        raw = self.raw
        if raw is not None:
            raw.close()

    def abort(self) -> None:
        """Close at once, nothing more sent."""
        if self.state == _CLOSED:
            return
        self.state = _CLOSING
        self.outgoing = None  # nothing more goes to the socket
        raw = self.raw
        if raw is not None:
            raw.abort()

    def is_closing(self) -> bool:
        """Closed or closing on either side."""
        raw = self.raw
        return self.state >= _CLOSING or raw is None or raw.is_closing()

    def pause_reading(self) -> None:
        """No more bytes from the client until resume_reading."""
        raw = self.raw
        if raw is not None and self.state == _OPEN:
            raw.pause_reading()

    def resume_reading(self) -> None:
        """Read the client again."""
        raw = self.raw
        if raw is not None and self.state == _OPEN:
            raw.resume_reading()

    def is_reading(self) -> bool:
        """Whether bytes from the client are read."""
        raw = self.raw
        return raw is not None and raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The socket's buffer limits (ciphertext is plaintext and ~30 bytes a record)."""
        raw = self.raw
        if raw is not None:
            raw.set_write_buffer_limits(high=high, low=low)

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the client."""
        raw = self.raw
        outgoing = self.outgoing
        size = raw.get_write_buffer_size() if raw is not None else 0
        return size + outgoing.pending if outgoing is not None else size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The socket's (low, high)."""
        raw = self.raw
        return raw.get_write_buffer_limits() if raw is not None else (0, 0)

    def can_write_eof(self) -> bool:
        """TLS has no half-close."""
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Another protocol reads and writes from now on (HTTP/2 chosen by ALPN)."""
        self.app = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        """The protocol reading and writing."""
        return self.app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's TLS names (ssl_object, sslcontext, cipher, peercert, compression),
        then the socket's."""
        tls = self.tls
        if tls is not None:
            if name == "ssl_object":
                view = self.view
                if view is None:
                    view = self.view = ssl_object(tls)
                return view
            if name == "sslcontext":
                return tls.context
            if name == "cipher":
                return tls.cipher()
            if name == "peercert":
                return tls.getpeercert()
            if name == "compression":
                return tls.compression()
        raw = self.raw
        return raw.get_extra_info(name, default) if raw is not None else default


class TLSListener:
    """One listening socket of an ssl listener: the loop's plain TCP server, each
    connection a TLSStream (or PlainHTTPAnswer's after its first byte).

    The handshakes under way are the listener's to time out: one sweep a fraction of the
    timeout apart while any is under way, not a timer made and cancelled for each
    connection (a handshake is given up between ``timeout`` and a quarter more after the
    accept, at most a second more)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext,
        factory: Callable[[], asyncio.Protocol],
        timeout: float,
    ) -> None:
        self.loop = loop
        self.sock = sock
        # close()'s end of the incoming BIO ends a connection without an exception
        # (see TLSStream.close); the connections copy the option when made
        context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        self.context = context
        #: the connection maker under SSLContext.wrap_bio (see front.tls_steps):
        #: (incoming, outgoing, server_side, server_hostname) -> TLSConnection
        self.wrap_bio: Callable[[ssl.MemoryBIO, ssl.MemoryBIO, bool, str | None], TLSConnection] = (
            cast(Any, context)._wrap_bio
        )
        self.factory = factory
        self.timeout = timeout
        self.server: asyncio.Server | None = None
        self.closed = False
        #: the connections whose handshake is under way
        self.handshaking: set[TLSStream] = set()
        self.sweeper: asyncio.TimerHandle | None = None
        self.sweep_every = min(1.0, max(0.05, timeout / 4))

    def stream(self) -> TLSStream:
        """A new connection's protocol."""
        return TLSStream(self)

    def watch(self, stream: TLSStream) -> None:
        """A new connection: its handshake has ``timeout`` from now."""
        stream.deadline = self.loop.time() + self.timeout
        self.handshaking.add(stream)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    def _sweep(self) -> None:
        """Give up the handshakes past their deadline; again later while any is left."""
        self.sweeper = None
        now = self.loop.time()
        handshaking = self.handshaking
        late = [stream for stream in handshaking if stream.deadline <= now]
        for stream in late:
            handshaking.discard(stream)
            stream.timed_out()
        if handshaking:
            self.sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    async def start(self) -> None:
        """Accept from now on."""
        self.server = await self.loop.create_server(self.stream, sock=self.sock)

    def close(self) -> None:
        """Stop accepting (handshakes under way and connections made go on, as with the
        loop's own server)."""
        if self.closed:
            return
        self.closed = True
        if self.server is not None:
            self.server.close()
