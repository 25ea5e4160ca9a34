"""Talking to one upstream server: an HTTP/1.1 or uwsgi request out, a streamed response back.

The response head is parsed with httptools' response parser; body bytes are
handed to the client side as they come, and reading from the upstream pauses
while the client's transport is above its high-water mark.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from enum import Enum
from typing import Any, Final

import httptools
from mypy_extensions import mypyc_attr

from gantry.front.upstream_tls import UpstreamTLS
from gantry.protocol.uwsgi import encode_packet

__all__ = [
    "Failure",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamResponse",
    "connect_unix",
    "open_upstream",
]

# A response head (status line and fields) larger than this is refused with 502, as
# nginx's proxy_buffer_size does (nginx's default is one page; a larger one is kinder).
MAX_RESPONSE_HEAD: Final = 64 * 1024
# Request-body bytes buffered toward one upstream before the sender waits for it.
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024
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

    def failed(self, error: UpstreamError) -> None:
        """The upstream broke before or during the response."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream server; reused for HTTP keep-alive."""

    # Class-level defaults: a connection sets only what changes (one per request to
    # an upstream that closes after each response, as uWSGI does).
    deadline = 0.0
    transport: asyncio.Transport | None = None
    receiver: UpstreamResponse | None = None
    parser: Any = None
    closed = False
    head_done = False
    framed = False
    status = 0
    reason = b""
    keep_alive = False
    head_request = False
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

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        watch: set[UpstreamConnection] | None = None,
    ) -> None:
        self.loop = loop
        self.address = address
        #: the worker's set of connections whose ``deadline`` a once-a-tick sweep checks
        #: (None: a timer of its own, for the odd connection such as a health probe)
        self.watch = watch
        #: the fields of the response being parsed (see on_message_begin)
        self.headers: list[tuple[bytes, bytes]] = []

    # asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_drain is not None:
            self.on_drain()

    def connection_lost(self, exc: Exception | None) -> None:
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
        # The parser holds our bound methods and the transport holds us: let reference
        # counting free a closed connection (one per request to uWSGI) instead of the
        # cycle collector.
        self.parser = None
        self.transport = None
        self.on_lost = None
        self.on_drain = None

    def data_received(self, data: bytes) -> None:
        # `self.receiver` is read, not narrowed: the parser's callbacks may clear it,
        # and compiled code checks narrowed types (see gantry.compiled)
        if self._no_receiver():
            # bytes nobody asked for: the connection cannot be trusted for reuse
            self.abort()
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
            receiver = self.receiver
            self.receiver = None
            self.abort()
            if receiver is not None:
                receiver.failed(
                    UpstreamError(
                        502, f"malformed response from upstream: {exc}", Failure.MALFORMED
                    )
                )
            return
        if self.receiver is not None:
            self._arm_timer()  # activity: the read timeout starts again

    def _no_receiver(self) -> bool:
        return self.receiver is None

    def _head_too_large(self, fed: int) -> bool:
        """Count ``fed`` bytes toward a head still incomplete; past MAX_RESPONSE_HEAD the
        response is refused (the parser keeps a partial field in memory: it must not grow)."""
        self.head_seen += fed
        if self.head_seen <= MAX_RESPONSE_HEAD:
            return False
        receiver = self.receiver
        self.receiver = None
        self._cancel_timer()
        self.abort()
        if receiver is not None:
            receiver.failed(
                UpstreamError(
                    502,
                    f"upstream sent a response head over {MAX_RESPONSE_HEAD} bytes",
                    Failure.MALFORMED,
                )
            )
        return True

    def _whole(self, data: bytes) -> bool:
        """A whole response in ``data`` that needs no parsing: a plain HTTP/1.1 head
        (see _WHOLE) with status 200-499 (the slow path decides retries), the body all
        here and nothing after it. It goes to the receiver as is; False: the parser
        takes ``data``."""
        match = _WHOLE.match(data)
        if match is None or len(data) != match.end() + int(match[2]):
            return False
        receiver = self.receiver
        assert receiver is not None
        watch = self.watch
        if watch is not None:  # _cancel_timer, inline: this is per request
            self.deadline = 0.0
            watch.discard(self)
        else:
            self._cancel_timer()
        self.receiver = None
        end = match.end()
        receiver.whole(int(match[1]), data[: end - 2], data[end:])
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
        assert self.transport is not None
        if len(payload) == 1:
            self.transport.write(payload[0])
        else:
            self.transport.writelines(payload)
        self._arm_timer()

    def write_body(self, data: bytes) -> None:
        """Send a piece of the request body; the upstream reading it counts as activity."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)
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
        """Drop the connection at once."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def pause(self) -> None:
        """Stop reading: the client is slower than the upstream."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

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
        self.status = parser.get_status_code()
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
        self._cancel_timer()
        receiver = self.receiver
        self.receiver = None
        if receiver is not None:
            receiver.end(self.keep_alive and not self.closed)


def connect_error(address: str, exc: Exception) -> UpstreamError:
    """The 502 for a connect to ``address`` that failed with ``exc`` (the request may go to
    another server: nothing was sent)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return UpstreamError(502, f"cannot connect to {address}: {reason}", Failure.REFUSED)


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    address: str,
    timeout: float,
    watch: set[UpstreamConnection] | None = None,
    tls: UpstreamTLS | None = None,
) -> UpstreamConnection:
    """Connect to ``address`` ("HOST:PORT" or "unix:/path"); UpstreamError if refused or slow.

    ``watch`` is the set a sweep checks read deadlines in (see UpstreamConnection.watch).
    ``tls``: (client context, server name) for an https upstream; a handshake that fails
    (a certificate not trusted) is a 502 like a refused connection, within ``timeout``.
    """

    def factory() -> UpstreamConnection:
        return UpstreamConnection(loop, address, watch)

    if tls is not None:
        context, name, key = tls
        if address.startswith("unix:"):
            coro = loop.create_unix_connection(
                factory, address[5:], ssl=context, server_hostname=name
            )
        else:
            host, _, port = address.rpartition(":")
            coro = loop.create_connection(
                factory, host.strip("[]"), int(port), ssl=context, server_hostname=name
            )
    elif address.startswith("unix:"):
        # A unix connect completes or fails at once (a full queue is EAGAIN): no timer.
        try:
            _, unix_protocol = await loop.create_unix_connection(factory, address[5:])
        except OSError as exc:
            raise connect_error(address, exc) from None
        return unix_protocol
    else:
        host, _, port = address.rpartition(":")
        coro = loop.create_connection(factory, host.strip("[]"), int(port))
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
    try:
        _, protocol = await coro
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
    if tls is not None:
        protocol.pool_key = tls[2]
    return protocol


def connect_unix(
    loop: asyncio.AbstractEventLoop,
    address: str,
    watch: set[UpstreamConnection] | None,
    done: Callable[[UpstreamConnection | None, UpstreamError | None], None],
) -> None:
    """:func:`open_upstream` for a "unix:/path" address, without a Task: ``done`` gets the
    connection, or the UpstreamError (502, not connected), from a loop callback.

    Each request to an upstream that takes one connection per request (uWSGI) connects
    anew; a Task per connect cost more than the connect's own Python (asyncio registers
    every Task in a WeakSet), so the connect coroutine is stepped here instead. A unix
    connect completes or fails at once: no timer, nothing else to cancel it.
    """
    _UnixConnect(loop, address, watch, done).step()


class _UnixConnect:
    """The steps of one unix connect (see :func:`connect_unix`)."""

    __slots__ = ("loop", "address", "done", "coro")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        watch: set[UpstreamConnection] | None,
        done: Callable[[UpstreamConnection | None, UpstreamError | None], None],
    ) -> None:
        self.loop = loop
        self.address = address
        self.done = done

        def factory() -> UpstreamConnection:
            return UpstreamConnection(loop, address, watch)

        self.coro = loop.create_unix_connection(factory, address[5:])

    def step(self, _waited: object = None) -> None:
        """Run the coroutine to its next wait (as a Task would: a future it waited on
        gives its result or raises inside it)."""
        try:
            waiting = self.coro.send(None)
        except StopIteration as stop:
            self.done(stop.value[1], None)
            return
        except Exception as exc:  # OSError mostly: refused, no such socket, queue full
            self.done(None, connect_error(self.address, exc))
            return
        if waiting is None:  # a bare yield: go on at the next turn
            self.loop.call_soon(self.step)
            return
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(self.step)


def uwsgi_payload(pairs: list[tuple[bytes, bytes]], body: bytes = b"") -> list[bytes]:
    """The bytes of a uwsgi request: header, vars, then the body (or its first piece)."""
    return [encode_packet(pairs), body] if body else [encode_packet(pairs)]
