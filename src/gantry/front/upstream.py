"""Talking to one upstream server: an HTTP/1.1 or uwsgi request out, a streamed response back.

The connection drives its own non-blocking socket, told when it is ready by the
worker's poller (gantry.front.upstream_poll), not an asyncio Transport: uWSGI closes
after each response, so a proxied request to it is one connection, and a Transport +
Protocol pair per request (with the connect's future and callbacks) was a quarter of
the proxy's time.

The response head is parsed with httptools' response parser; body bytes are
handed to the client side as they come, and reading from the upstream pauses
while the client's transport is above its high-water mark.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import re
import socket
import ssl
from collections.abc import Callable
from enum import Enum
from typing import Any, Final

import httptools
from mypy_extensions import mypyc_attr

from gantry.front.upstream_poll import LoopPoller, PolledSocket, UpstreamPoller
from gantry.front.upstream_tls import UpstreamTLS
from gantry.protocol.fastcgi import (
    END_REQUEST,
    REQUEST_COMPLETE,
    STDERR,
    STDIN,
    STDOUT,
    FastCGIProtocolError,
    Record,
    RecordDecoder,
    parse_cgi_head,
    parse_end_request,
    stream_records,
)
from gantry.protocol.uwsgi import encode_packet

# The C socket type: ``socket.socket`` is a Python subclass whose constructor and
# close() run Python code, for nothing a connection per request needs.
RawSocket = _socket.socket
# plain ints: the socket module's are enums, whose "|" runs Python code (per request)
_AF_UNIX: Final = int(socket.AF_UNIX)
_UNIX_STREAM: Final = int(socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
# An https upstream's handshaken session: the SSLObject, and its incoming and outgoing
# memory BIOs (ciphertext)
_TLSSession = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]

__all__ = [
    "FastCGIState",
    "Failure",
    "TLSUpstreamConnection",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamResponse",
    "connect_unix",
    "open_upstream",
    "uwsgi_payload",
]

# A response head (status line and fields) larger than this is refused with 502, as
# nginx's proxy_buffer_size does (nginx's default is one page; a larger one is kinder).
MAX_RESPONSE_HEAD: Final = 64 * 1024
# Request-body bytes buffered toward one upstream before the sender waits for it.
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
# The most read from the upstream at once (one piece of body toward the client).
READ_SIZE: Final = 64 * 1024
# PolledSocket.poll_mask: the poller watches the socket for writing
_WRITE: Final = 0x004
# The most pieces of the outbox given to one sendmsg (the system's limit is 1024).
_MAX_PIECES: Final = 64
# Hop-by-hop fields (RFC 9110 7.6.1) and what a proxy hides by default (nginx's
# proxy_hide_header: the front sets its own Date and Server).
RESPONSE_DROP: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-connection", b"date", b"server", b"x-accel-redirect"}
)  # fmt: skip
# A whole response that may skip the parser (see UpstreamConnection._whole): a head the
# parser's path would give the client byte for byte, with one Content-Length and none
# of the fields that path drops or reframes. The status line has a reason; each field
# is "name: value" (a token, one space, a value of visible characters with no space
# around it): no obs-fold, no bare CR or LF, no NUL, nothing to trim.
# Possessive repeats and a look-behind for the last character, not a group that backs
# off: sre then keeps no backtracking state (800 -> 550 ns for a three-field head).
_VISIBLE: Final = rb"[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*+(?<![\t ])"
_OTHER_FIELD: Final = (
    rb"(?!(?i:"
    + b"|".join([re.escape(name) for name in sorted(RESPONSE_DROP | {b"content-length"})])
    + rb"):)[!#$%&'*+.^_`|~0-9A-Za-z-]+: "
    + _VISIBLE
    + rb"\r\n"
)
_WHOLE: Final = re.compile(
    rb"HTTP/1\.1 ([2-4][0-9][0-9]) " + _VISIBLE + rb"\r\n"
    rb"(?:" + _OTHER_FIELD + rb")*+"
    rb"Content-Length: ([0-9]{1,18})\r\n"
    rb"(?:" + _OTHER_FIELD + rb")*+"
    rb"\r\n"
)  # fmt: skip


class _HeadMemo:
    """The head of the last whole response _WHOLE accepted, and what it found in it.

    An upstream app answers one URL with the same head again and again (uWSGI closes
    after each response, so the memo is the worker's, not a connection's): a response
    that starts with these very bytes and has the same length needs no regex. The
    bytes decide alone (the match ends at the head's blank line), so the memo is never
    stale, only missed."""

    __slots__ = ("head", "passed", "status", "size")

    def __init__(self) -> None:
        #: status line, fields and the blank line, as received (b"": none yet)
        self.head = b""
        #: what the receiver gets as the head (without the blank line)
        self.passed = b""
        self.status = 0
        #: the whole response's length: head and Content-Length's body (-1: none yet)
        self.size = -1


_HEAD_MEMO: Final = _HeadMemo()


class Failure(Enum):
    """What went wrong with an upstream; retries decide on this, never on message text."""

    #: the connect failed (refused, no such socket, queue full): nothing was sent
    REFUSED = "refused"
    #: the connect did not complete in time: nothing was sent
    CONNECT_TIMEOUT = "connect timeout"
    #: the connection closed (or was reset) before the whole response came
    CLOSED = "closed"
    #: the response could not be parsed, or its head was too large
    MALFORMED = "malformed"
    #: the upstream was silent past the read or send timeout
    TIMEOUT = "timeout"
    #: the upstream answered a status next_upstream asks to retry on
    STATUS = "status"
    #: no server of the pool could be tried
    NO_SERVER = "no server"

    @property
    def sent_nothing(self) -> bool:
        """Nothing of the request reached the upstream: any method may go elsewhere."""
        return self is Failure.REFUSED or self is Failure.CONNECT_TIMEOUT

    @property
    def condition(self) -> str:
        """The proxy_next_upstream condition (nginx's names) this failure falls under."""
        if self is Failure.TIMEOUT or self is Failure.CONNECT_TIMEOUT:
            return "timeout"
        if self is Failure.STATUS or self is Failure.NO_SERVER:
            return ""
        return "error"


class UpstreamError(Exception):
    """The upstream failed: ``status`` is what the client gets (502 or 504), ``kind`` what
    happened, ``reason`` the text for the error log."""

    def __init__(self, status: int, reason: str, kind: Failure) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind


#: the FastCGI request id of the front's requests (one at a time on a connection)
_FCGI_ID: Final = 1


class FastCGIState:
    """One FastCGI request on a connection: the record decoder, the CGI head read so
    far, and the request-body bytes still to be framed as STDIN records."""

    __slots__ = ("decoder", "head", "stdin_left")

    def __init__(self, stdin_left: int) -> None:
        self.decoder = RecordDecoder()
        self.head = b""
        #: body bytes write_body still frames; the empty STDIN record follows the last
        self.stdin_left = stdin_left


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamResponse:
    """What the client side is told as the response arrives (health checks and tests
    subclass it in plain Python, hence the mypyc attribute)."""

    def head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        """The response head; ``framed`` is False when the body ends with the connection."""

    def body(self, data: bytes) -> None:
        """A piece of the response body."""

    def end(self, reusable: bool) -> None:
        """The response is complete; ``reusable`` if the connection may serve another request."""

    def whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response: ``head`` is its status line and fields (each ending in CRLF,
        none a proxy hides), ``body`` all of its body; the connection may be reused."""

    def interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """An interim response (1xx but 101) before the final one (none by default)."""

    def failed(self, error: UpstreamError) -> None:
        """The upstream broke before or during the response."""

    def stderr(self, data: bytes) -> None:
        """What a FastCGI application wrote to its stderr stream (for the error log)."""


class UpstreamConnection(PolledSocket):
    """One connection to an upstream server, on its own non-blocking socket; reused for
    HTTP keep-alive."""

    # Class-level defaults: a connection sets only what changes (one per request to
    # an upstream that closes after each response, as uWSGI does).
    deadline = 0.0
    #: the connected socket (None until ``attach``, and once closed)
    sock: RawSocket | None = None
    #: read the socket when it has bytes (not while the client is behind)
    reading = False
    #: request bytes not written yet, in order (None: none)
    outbox: list[bytes] | None = None
    outbox_size = 0
    #: no request was sent on this connection yet (see UpstreamPoller.send_soon)
    fresh = True
    #: the outbox is written in the next loop turn (UpstreamPoller.send_soon)
    queued = False
    receiver: UpstreamResponse | None = None
    parser: Any = None
    closed = False
    head_done = False
    framed = False
    status = 0
    reason = b""
    keep_alive = False
    head_request = False
    #: the head being read is an interim one (1xx but 101): the final one follows it
    interim = False
    timer: asyncio.TimerHandle | None = None
    read_timeout = 60.0
    on_lost: Callable[[UpstreamConnection], None] | None = None
    #: True while the upstream is not taking request-body bytes fast enough
    write_paused = False
    #: called when a paused write side drains (or the connection is lost)
    on_drain: Callable[[], None] | None = None
    _drain_waiter: asyncio.Future[None] | None = None
    #: when it was put back in the keep-alive pool
    idle_since = 0.0
    #: the current response may take the short path (see ``send``)
    short_path = False
    #: bytes of the current response fed to the parser before its head was complete
    head_seen = 0
    #: what the keep-alive pool files it under when not its address (https upstreams)
    pool_key = ""
    #: the current request's FastCGI state (None: an HTTP or uwsgi upstream)
    fcgi: FastCGIState | None = None
    #: shut the write side once the outbox is written: the request is all in it and the
    #: connection is not kept (see ProxyRequest._send_on)
    half_close = False

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        watch: set[UpstreamConnection] | None = None,
        poller: UpstreamPoller | None = None,
    ) -> None:
        self.loop = loop
        self.address = address
        #: tells the connection when its socket is ready (the worker's, shared)
        self.poller = poller if poller is not None else LoopPoller(loop)
        #: the worker's set of connections whose ``deadline`` a once-a-tick sweep checks
        #: (None: a timer of its own, for the odd connection such as a health probe)
        self.watch = watch
        #: the fields of the response being parsed (see on_message_begin)
        self.headers: list[tuple[bytes, bytes]] = []

    # the socket ---------------------------------------------------------------------

    def attach(self, sock: RawSocket) -> None:
        """Take ``sock`` (connected, non-blocking) and read from it."""
        self.sock = sock
        self.fd = sock.fileno()
        self.reading = True
        self.poller.watch(self, True, False)

    def on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset by the upstream
            self._close()
            self.connection_lost(exc)
            return
        if not data:
            self._close()
            self.connection_lost(None)
            return
        self.data_received(data)

    def on_writable(self) -> None:
        """Write what waits in the outbox, as much as the socket takes."""
        self.queued = False
        sock, outbox = self.sock, self.outbox
        if sock is None or outbox is None:
            return
        if len(outbox) > _MAX_PIECES:
            outbox[:] = [b"".join(outbox)]  # sendmsg takes a bounded number of pieces
        try:
            sent = sock.send(outbox[0]) if len(outbox) == 1 else sock.sendmsg(outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # the upstream closed or reset: say so from the loop
            self._lose_later(exc)
            return
        self.outbox_size -= sent
        while sent:
            piece = outbox[0]
            if sent < len(piece):
                outbox[0] = piece[sent:]
                break
            sent -= len(piece)
            del outbox[0]
        if outbox:
            if not self.poll_mask & _WRITE:
                self.poller.watch(self, self.reading, True)
        else:
            self.outbox = None
            if self.poll_mask & _WRITE:
                self.poller.watch(self, self.reading, False)
            if self.half_close:
                self.half_close = False
                try:
                    sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass  # reset meanwhile: the read side says so
        if self.outbox_size > WRITE_HIGH_WATER:
            self.write_paused = True
        elif self.write_paused and self.outbox_size <= WRITE_LOW_WATER:
            self.write_paused = False
            self._wake_writer()

    def _write(self, data: bytes) -> None:
        """Send ``data`` after what the outbox holds."""
        if self.sock is None:
            return
        self.outbox_size += len(data)
        if self.outbox is not None:
            self.outbox.append(data)
            if self.outbox_size > WRITE_HIGH_WATER:
                self.write_paused = True
            if self.poll_mask & _WRITE or self.queued:
                return  # written when the socket takes more, or in the next loop turn
        else:
            self.outbox = [data]
        self.on_writable()

    def _close(self) -> bool:
        """Stop watching the socket and close it; False if it was closed already."""
        sock = self.sock
        if sock is None:
            return False
        self.sock = None
        self.closed = True
        self.reading = False
        self.outbox = None
        self.outbox_size = 0
        self.poller.forget(self)
        sock.close()
        return True

    def _lose_later(self, exc: Exception | None) -> None:
        """Close now; tell the receiver and the others from the loop, as a transport
        does (the caller is in the middle of something)."""
        if self._close():
            self.loop.call_soon(self.connection_lost, exc)

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_drain is not None:
            self.on_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: the response ends there (close-delimited) or broke."""
        self.closed = True
        if self.deadline or self.timer is not None:
            self._cancel_timer()
        if self._drain_waiter is not None or self.on_drain is not None:
            self._wake_writer()
        receiver = self.receiver
        self.receiver = None
        if receiver is not None:
            if self.head_done and not self.framed:
                receiver.end(False)  # close-delimited body: the close is its end
            else:
                receiver.failed(
                    UpstreamError(502, "upstream closed the connection early", Failure.CLOSED)
                )
        if self.on_lost is not None:
            self.on_lost(self)
        self._release()

    def _release(self) -> None:
        # The parser holds our bound methods: let reference counting free a closed
        # connection (one per request to uWSGI) instead of the cycle collector.
        self.parser = None
        self.on_lost = None
        self.on_drain = None

    def data_received(self, data: bytes) -> None:
        # `self.receiver` is read, not narrowed: the parser's callbacks may clear it,
        # and compiled code checks narrowed types (see gantry.compiled)
        if self._no_receiver():
            # bytes nobody asked for: the connection cannot be trusted for reuse
            self.abort()
            return
        if self.fcgi is not None:
            self._fastcgi_received(self.fcgi, data)
            return
        if self.short_path and not self.head_done and self._whole(data):
            return
        parser = self.parser
        if parser is None:
            # one parser for the connection (kept-alive responses follow each other),
            # made when a response first needs it: most take the short path
            parser = self.parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
            if not self.head_done and self._head_too_large(len(data)):
                return
        except httptools.HttpParserError as exc:
            self._fail_malformed(f"malformed response from upstream: {exc}")
            return
        if self.receiver is not None:
            self._arm_timer()  # activity: the read timeout starts again

    def _no_receiver(self) -> bool:
        return self.receiver is None

    def _fastcgi_received(self, fcgi: FastCGIState, data: bytes) -> None:
        """FastCGI records: STDOUT carries a CGI head (its Status: the status) then the
        body, STDERR goes to the error log, END_REQUEST ends the response."""
        try:
            records = fcgi.decoder.feed(data)
            if records and records[-1].type == END_REQUEST and self.sock is not None:
                # Closed before the response goes on: php-fpm's child, its request
                # ended without FCGI_KEEP_CONN, shuts its side and waits for this close
                # before it accepts the next connection (fcgi_close), so with one child
                # every request waited for the front to relay the previous answer.
                self._close()
                receiver = self.receiver
                if not self.head_done and receiver is not None:
                    if self._fastcgi_whole(fcgi, records, receiver):
                        return
            for record in records:
                receiver = self.receiver
                if receiver is None:
                    return  # ended or given up meanwhile
                if record.request_id != _FCGI_ID:
                    raise FastCGIProtocolError(f"a record for request {record.request_id}")
                kind = record.type
                if kind == STDOUT:
                    if self.head_done:
                        if record.content and not self.head_request:
                            receiver.body(record.content)
                        continue
                    fcgi.head += record.content
                    head = parse_cgi_head(fcgi.head)
                    if head is None:
                        if len(fcgi.head) > MAX_RESPONSE_HEAD:
                            raise FastCGIProtocolError(
                                f"a CGI response head over {MAX_RESPONSE_HEAD} bytes"
                            )
                        continue
                    fcgi.head = b""
                    self.head_done = True
                    self.framed = True  # END_REQUEST ends it: a close before is a failure
                    self.status = head.status
                    receiver.head(head.status, head.reason, head.headers, True)
                    if head.rest and not self.head_request and self.receiver is receiver:
                        receiver.body(head.rest)
                elif kind == STDERR:
                    if record.content:
                        receiver.stderr(record.content)
                elif kind == END_REQUEST:
                    status = parse_end_request(record.content)
                    if not self.head_done:
                        reason = "without a response"
                        if status.protocol_status != REQUEST_COMPLETE:
                            reason = f"refused (protocol status {status.protocol_status})"
                        raise FastCGIProtocolError(f"FastCGI request ended {reason}")
                    self._cancel_timer()
                    self.receiver = None
                    self.fcgi = None
                    # bytes after the end would be a peer out of step: not reused then
                    receiver.end(not self.closed and fcgi.decoder.pending == 0)
                    return
                else:
                    raise FastCGIProtocolError(f"unexpected FastCGI record type {kind}")
        except FastCGIProtocolError as exc:
            self._fail_malformed(f"malformed FastCGI response: {exc.reason}")
            return
        if self.receiver is not None:
            self._arm_timer()  # activity: the read timeout starts again

    def _fastcgi_whole(
        self, fcgi: FastCGIState, records: list[Record], receiver: UpstreamResponse
    ) -> bool:
        """A whole FastCGI response in one read (the CGI head, the body, END_REQUEST) with
        a status of 200-499 and no framing of its own: passed on with a Content-Length,
        so the client gets one write instead of a chunked head, body and last chunk.
        False, having done nothing: the record loop takes the records."""
        out = [fcgi.head]
        errors = []
        for record in records[:-1]:
            if record.request_id != _FCGI_ID:
                return False
            if record.type == STDOUT:
                out.append(record.content)
            elif record.type == STDERR:
                if record.content:
                    errors.append(record.content)
            else:
                return False
        end = records[-1]
        if end.request_id != _FCGI_ID:
            return False
        if parse_end_request(end.content).protocol_status != REQUEST_COMPLETE:
            return False
        head = parse_cgi_head(b"".join(out))  # malformed: the caller's 502
        if head is None or not 200 <= head.status < 500 or head.status in (204, 304):
            return False  # 5xx: the record loop, whose head() may try the next server
        for name, _ in head.headers:
            lname = name.lower()
            if lname == b"content-length" or lname == b"transfer-encoding":
                return False
        for content in errors:
            receiver.stderr(content)
        self._cancel_timer()
        self.receiver = None
        self.fcgi = None
        self.head_done = True
        self.framed = True
        self.status = head.status
        body = head.rest
        head.headers.append((b"Content-Length", str(len(body)).encode()))
        receiver.head(head.status, head.reason, head.headers, True)
        if body and not self.head_request:
            receiver.body(body)
        receiver.end(False)  # closed already (see _fastcgi_received)
        return True

    def _head_too_large(self, fed: int) -> bool:
        """Count ``fed`` bytes toward a head still incomplete; past MAX_RESPONSE_HEAD the
        response is refused (the parser keeps a partial field in memory: it must not grow)."""
        self.head_seen += fed
        if self.head_seen <= MAX_RESPONSE_HEAD:
            return False
        self._fail_malformed(f"upstream sent a response head over {MAX_RESPONSE_HEAD} bytes")
        return True

    def _fail_malformed(self, reason: str) -> None:
        """The response cannot be trusted (HTTP or FastCGI): drop the connection and
        answer the waiting request 502 with ``reason``."""
        receiver = self.receiver
        self.receiver = None
        self.fcgi = None
        self._cancel_timer()
        self.abort()
        if receiver is not None:
            receiver.failed(UpstreamError(502, reason, Failure.MALFORMED))

    def _whole(self, data: bytes) -> bool:
        """A whole response in ``data`` that needs no parsing: a plain HTTP/1.1 head
        (see _WHOLE) with status 200-499 (the slow path decides retries), the body all
        here and nothing after it. It goes to the receiver as is; False: the parser
        takes ``data``."""
        memo = _HEAD_MEMO
        if len(data) == memo.size and data.startswith(memo.head):
            # the same head as the last whole response (an app answers alike): what
            # _WHOLE would find in it is known
            status, head, end = memo.status, memo.passed, len(memo.head)
        else:
            match = _WHOLE.match(data)
            if match is None:
                return False
            end = match.end()
            size = end + int(match[2])
            if len(data) != size:
                return False
            status, head = int(match[1]), data[: end - 2]
            memo.head, memo.passed, memo.status, memo.size = data[:end], head, status, size
        receiver = self.receiver
        assert receiver is not None
        watch = self.watch
        if watch is not None:  # _cancel_timer, inline: this is per request
            self.deadline = 0.0
            watch.discard(self)
        else:
            self._cancel_timer()
        self.receiver = None
        receiver.whole(status, head, data[end:])
        return True

    # sending ------------------------------------------------------------------------

    def send(
        self,
        receiver: UpstreamResponse,
        payload: list[bytes],
        read_timeout: float,
        head_request: bool,
        short_path: bool = False,
    ) -> None:
        """Write the request and wait for the response through ``receiver``.

        ``short_path``: a whole response in one read may skip the parser (see
        ``_whole``).
        """
        self.receiver = receiver
        self.short_path = short_path and not head_request
        self.read_timeout = read_timeout
        self.head_done = False
        self.head_seen = 0
        self.framed = False
        self.head_request = head_request
        self._arm_timer()
        if self.sock is None:
            return  # closed meanwhile: the receiver hears of it from the loop
        if self.outbox is not None:
            self.outbox.extend(payload)
        else:
            self.outbox = payload  # the caller's list is the connection's from now on
        for piece in payload:
            self.outbox_size += len(piece)
        if self.fresh:
            # the first request on a new connection: written in the next loop turn
            self.fresh = False
            self.queued = True
            self.poller.send_soon(self)
        elif not self.queued and not self.poll_mask & _WRITE:
            self.on_writable()

    def write_body(self, data: bytes) -> None:
        """Send a piece of the request body; the upstream reading it counts as activity.
        To a FastCGI upstream it goes as STDIN records, the empty one after the last byte."""
        fcgi = self.fcgi
        if fcgi is not None and data:
            fcgi.stdin_left -= len(data)
            data = stream_records(STDIN, _FCGI_ID, data)
            if fcgi.stdin_left <= 0:
                data += stream_records(STDIN, _FCGI_ID, b"")
        if self.sock is not None:
            self._write(data)
            if self.receiver is not None and not self.head_done:
                self._arm_timer()

    async def drain(self, timeout: float) -> None:
        """Wait until the upstream takes the buffered body bytes; UpstreamError 504 past
        ``timeout`` (nginx's proxy_send_timeout)."""
        if not self.write_paused or self.closed:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiter = waiter
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            waiter.cancel()

        timer = self.loop.call_later(timeout, expire)
        try:
            await waiter
        except asyncio.CancelledError:
            if not expired:
                raise
            raise UpstreamError(
                504, "upstream timed out reading the request body", Failure.TIMEOUT
            ) from None
        finally:
            timer.cancel()

    def abort(self) -> None:
        """Drop the connection at once (what is still waiting on it hears from the loop)."""
        if (
            self.receiver is None
            and self.on_lost is None
            and self.on_drain is None
            and self._drain_waiter is None
        ):
            # nobody to tell (a finished request to uWSGI): no callback to schedule
            if self._close():
                if self.deadline or self.timer is not None:
                    self._cancel_timer()
                self._release()
            return
        self._lose_later(None)

    def pause(self) -> None:
        """Stop reading: the client is slower than the upstream."""
        if self.reading:
            self.reading = False
            self.poller.watch(self, False, self.poll_mask & _WRITE != 0)

    def resume(self) -> None:
        """Read again."""
        if not self.reading and self.sock is not None:
            self.reading = True
            self.poller.watch(self, True, self.poll_mask & _WRITE != 0)

    # timeouts -------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        watch = self.watch
        if watch is not None:
            self.deadline = self.loop.time() + self.read_timeout
            watch.add(self)
            return
        self._cancel_timer()
        self.timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.watch is not None:
            self.deadline = 0.0
            self.watch.discard(self)
        elif self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check_deadline(self, now: float) -> None:
        """Called by the worker's sweep: time out if the upstream has been silent too long."""
        if self.deadline and now >= self.deadline:
            self._timed_out()

    def _timed_out(self) -> None:
        self._cancel_timer()
        self.timer = None
        receiver = self.receiver
        self.receiver = None
        self.abort()
        if receiver is not None:
            receiver.failed(UpstreamError(504, "upstream timed out", Failure.TIMEOUT))

    # httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> bool | None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            # An interim response (100 Continue, 103 Early Hints: RFC 9110 15.2) is not
            # the answer: taken as one, it ended the request and left the connection to
            # the pool with the final answer still to come, which the next request sent
            # on it then got as its own. It is passed on as interim; the final one follows.
            self.interim = True
            receiver = self.receiver
            if receiver is not None:
                receiver.interim(status, self.reason, self.headers)
            self.headers = []
            self.reason = b""
            return None
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        framed = self.head_request or self.status in (204, 304) or self.status < 200
        if not framed:
            for name, value in self.headers:
                lname = name.lower()
                if lname == b"content-length":
                    framed = True
                    break
                if lname == b"transfer-encoding":
                    # framed only when chunked is the last coding; otherwise the close
                    # ends the body (RFC 9112 6.3), as llhttp reads it
                    framed = value.rpartition(b",")[2].strip().lower() == b"chunked"
                    break
        self.framed = framed
        self.head_done = True
        receiver = self.receiver
        if receiver is not None:
            receiver.head(self.status, self.reason, self.headers, self.framed)
        self.reason = b""
        if self.head_request and receiver is not None and self.receiver is receiver:
            # httptools cannot be told that a HEAD response has no body: end it
            # here, and do not reuse a connection whose parser expects more.
            self._cancel_timer()
            self.receiver = None
            receiver.end(False)
            self.abort()
        return None

    def on_body(self, body: bytes) -> None:
        if self.receiver is not None:
            self.receiver.body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False  # the final answer is still to come
            return
        self._cancel_timer()
        receiver = self.receiver
        self.receiver = None
        if receiver is not None:
            receiver.end(self.keep_alive and not self.closed)


class TLSUpstreamConnection(UpstreamConnection):
    """A connection to an https upstream: the same socket driven by the same poller, the
    bytes going through an ssl.SSLObject and its memory BIOs (handshaken by open_upstream).
    Plain HTTP and uwsgi upstreams never pay for it: they are UpstreamConnection's own."""

    tls: ssl.SSLObject | None = None
    #: the SSLObject's ends: ciphertext received, and to send
    incoming: ssl.MemoryBIO | None = None
    outgoing: ssl.MemoryBIO | None = None

    def attach_tls(self, sock: RawSocket, session: _TLSSession) -> None:
        """Take ``sock`` with its handshaken TLS session and read from it."""
        self.tls, self.incoming, self.outgoing = session
        self.attach(sock)

    def _seal(self, data: bytes) -> bytes:
        """``data`` encrypted: the records to send."""
        tls, outgoing = self.tls, self.outgoing
        assert tls is not None and outgoing is not None
        tls.write(data)
        return outgoing.read()

    def send(
        self,
        receiver: UpstreamResponse,
        payload: list[bytes],
        read_timeout: float,
        head_request: bool,
        short_path: bool = False,
    ) -> None:
        """See UpstreamConnection.send: the request goes out encrypted; the parser reads
        every response (a TLS read may end anywhere in a record, so no short path)."""
        if self.sock is not None:
            payload = [self._seal(b"".join(payload))]
        UpstreamConnection.send(self, receiver, payload, read_timeout, head_request, False)

    def _write(self, data: bytes) -> None:
        if self.sock is not None:
            UpstreamConnection._write(self, self._seal(data))

    def on_readable(self) -> None:
        sock, tls, incoming = self.sock, self.tls, self.incoming
        if sock is None or tls is None or incoming is None:
            return
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset by the upstream
            self._close()
            self.connection_lost(exc)
            return
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()
        # Everything this read decrypts is handed on now, paused or not: bytes left in
        # the SSLObject would wait for a socket event that may never come.
        while self.sock is not None:
            try:
                plain = tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the end, as a FIN would be
                plain = b""
            except ssl.SSLError as exc:  # a bad record, or a close without close_notify
                self._close()
                self.connection_lost(exc)
                return
            if not plain:
                self._close()
                self.connection_lost(None)
                return
            self.data_received(plain)
        if self.sock is None:
            return
        if not data:
            self._close()
            self.connection_lost(None)
            return
        outgoing = self.outgoing
        if (
            outgoing is not None and outgoing.pending
        ):  # TLS 1.3's post-handshake answers (a key update)
            UpstreamConnection._write(self, outgoing.read())


def connect_error(address: str, exc: Exception) -> UpstreamError:
    """The 502 for a connect to ``address`` that failed with ``exc`` (the request may go to
    another server: nothing was sent)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return UpstreamError(502, f"cannot connect to {address}: {reason}", Failure.REFUSED)


#: "unix:/path" -> the path as connect() takes it (the addresses are the config's: few)
_unix_paths: Final[dict[str, bytes]] = {}


def _unix_path(address: str) -> bytes:
    """The socket path of ``address`` ("unix:/path") encoded once, as connect() would
    encode a str each time (every request to uWSGI connects)."""
    if len(_unix_paths) >= 1024:
        _unix_paths.clear()
    path = _unix_paths[address] = os.fsencode(address[5:])
    return path


def connect_unix(
    loop: asyncio.AbstractEventLoop,
    address: str,
    watch: set[UpstreamConnection] | None = None,
    poller: UpstreamPoller | None = None,
) -> UpstreamConnection:
    """A connection to ``address`` ("unix:/path"), now: a unix connect completes or fails
    at once (a full listen queue is EAGAIN), so it needs no wait, no timer and no task.
    UpstreamError (502, nothing sent) if it fails. ``watch``, ``poller``: see
    open_upstream."""
    path = _unix_paths.get(address)
    if path is None:
        path = _unix_path(address)
    sock = RawSocket(_AF_UNIX, _UNIX_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise connect_error(address, exc) from None
    conn = UpstreamConnection(loop, address, watch, poller)
    conn.attach(sock)
    return conn


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    address: str,
    timeout: float,
    watch: set[UpstreamConnection] | None = None,
    poller: UpstreamPoller | None = None,
    tls: UpstreamTLS | None = None,
) -> UpstreamConnection:
    """Connect to ``address`` ("HOST:PORT" or "unix:/path"); UpstreamError if refused or slow.

    ``watch`` is the set a sweep checks read deadlines in (see UpstreamConnection.watch);
    ``poller`` the worker's (None: the connection watches its socket on its own).
    ``tls``: (client context, server name, pool key) for an https upstream; a handshake
    that fails (a certificate not trusted) is a 502 like a refused connection, within
    ``timeout``.
    """
    if tls is None and address.startswith("unix:"):
        return connect_unix(loop, address, watch, poller)
    host, _, port = address.rpartition(":")
    # A timer rather than asyncio.wait_for: no extra task per connection.
    # The timer says it fired: comparing its time with loop.time() misses when the loop
    # runs it a hair early (then the request was cancelled and never answered).
    task = asyncio.current_task(loop)
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        if task is not None:
            task.cancel()

    timer = loop.call_later(timeout, expire) if task is not None else None
    tls_object: _TLSSession | None = None
    try:
        if tls is None:
            sock = await _connect_tcp(loop, host.strip("[]"), int(port))
        else:
            if address.startswith("unix:"):
                sock = RawSocket(_AF_UNIX, _UNIX_STREAM)
                try:
                    sock.connect(address[5:])
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = await _connect_tcp(loop, host.strip("[]"), int(port))
            try:
                tls_object = await _handshake(loop, sock, tls[0], tls[1])
            except BaseException:
                sock.close()
                raise
    except asyncio.CancelledError:
        if expired:
            raise UpstreamError(
                504, f"connecting to {address} timed out", Failure.CONNECT_TIMEOUT
            ) from None
        raise
    except OSError as exc:
        raise connect_error(address, exc) from None
    finally:
        if timer is not None:
            timer.cancel()
    if tls is None:
        conn = UpstreamConnection(loop, address, watch, poller)
        conn.attach(sock)
        return conn
    tls_conn = TLSUpstreamConnection(loop, address, watch, poller)
    tls_conn.pool_key = tls[2]
    assert tls_object is not None
    tls_conn.attach_tls(sock, tls_object)
    return tls_conn


async def _connect_tcp(loop: asyncio.AbstractEventLoop, host: str, port: int) -> RawSocket:
    """A non-blocking socket connected to ``host``:``port``, trying each address the name
    resolves to in turn (as loop.create_connection does); the last OSError if none takes."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"{host} resolves to no address")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = RawSocket(family, kind | socket.SOCK_NONBLOCK, proto)
        try:
            # small request writes go out at once, as asyncio's TCP transports send them
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)  # type: ignore[arg-type]
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled (the connect timeout): no socket left open
            sock.close()
            raise
        return sock
    assert error is not None
    raise error


async def _handshake(
    loop: asyncio.AbstractEventLoop, sock: RawSocket, context: ssl.SSLContext, name: str
) -> _TLSSession:
    """The TLS handshake of an https upstream on ``sock`` (connected, non-blocking), through
    memory BIOs so that the connection then goes on driving its own socket; ssl.SSLError
    (an OSError: a 502) when the certificate is not trusted or the peer breaks off."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    # an IP address is checked against the certificate's IP entries, never sent as SNI
    # (the ssl module leaves SNI out for an address on its own)
    tls = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=name)
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                await loop.sock_sendall(sock, pending)  # type: ignore[arg-type]
            data = await loop.sock_recv(sock, READ_SIZE)  # type: ignore[arg-type]
            if not data:
                raise ConnectionResetError(
                    errno.ECONNRESET, "the upstream closed the connection in the TLS handshake"
                ) from None
            incoming.write(data)
            continue
        break
    pending = outgoing.read()
    if pending:
        await loop.sock_sendall(sock, pending)  # type: ignore[arg-type]
    return tls, incoming, outgoing


def uwsgi_payload(pairs: list[tuple[bytes, bytes]], body: bytes = b"") -> list[bytes]:
    """The bytes of a uwsgi request: header, vars, then the body (or its first piece)."""
    return [encode_packet(pairs), body] if body else [encode_packet(pairs)]
