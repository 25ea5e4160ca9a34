"""Proxying one client request to an upstream pool, with retries and a streamed response."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from gantry.config.front_model import Location, Upstream
from gantry.front.balancing import Peer, UpstreamPool, hash_key
from gantry.front.exchange import ProxyClient
from gantry.front.keepalive import KeepAlivePool
from gantry.front.upstream import (
    RESPONSE_DROP,
    Failure,
    FastCGIState,
    UpstreamConnection,
    UpstreamError,
    UpstreamResponse,
    connect_unix,
    open_upstream,
)
from gantry.front.upstream_request import (
    FASTCGI_REQUEST_ID,
    connection_named_fields,
    fastcgi_request,
    gantry_packet,
    http_request_head,
    uwsgi_packet,
    with_fields,
)
from gantry.front.upstream_tls import UpstreamTLS
from gantry.http.body import BodyBuffer
from gantry.protocol.fastcgi import STDIN, stream_records
from gantry.protocol.http1 import RequestHead

__all__ = ["Outcome", "ProxyRequest", "RequestBody", "StreamedBody", "spawn"]

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def _without_named(lines: list[bytes], connection: bytes) -> list[bytes]:
    """``lines`` (response fields, "name: value" and CRLF) without those ``connection``
    (a Connection value) names: hop-by-hop as Connection is (RFC 9110 7.6.1), they are
    not passed on, nor stored by a cache; the framing stays."""
    named = connection_named_fields(connection) - {b"content-length"}
    if not named:
        return lines
    return [line for line in lines if line.split(b":", 1)[0].lower() not in named]


def _codings(transfer_encoding: bytes) -> bytes:
    """The transfer codings of a response other than chunked (which the connection to the
    upstream took off, and the client side adds again), as "gzip, deflate"; b"" for none."""
    codings = [c.strip() for c in transfer_encoding.split(b",")]
    return b", ".join([c for c in codings if c and c.lower() != b"chunked"])


def _hide(head: bytes, hidden: frozenset[bytes]) -> bytes:
    """A whole response's head (status line and fields, each ending in CRLF) without the
    fields proxy_hide_header names."""
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [
        line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in hidden
    ]
    return b"\r\n".join(kept)


class Outcome(Enum):
    """How one attempt on one upstream server ended."""

    #: the response was relayed (or the attempt is over for good)
    DONE = "done"
    #: the client went away
    ABANDONED = "abandoned"
    #: failed in a way next_upstream says to try the next server for
    RETRY = "retry"
    #: a kept connection the upstream had closed meanwhile: try again on a new one
    STALE = "stale"
    #: failed in a way no other server is tried for
    FINAL = "final"


def spawn(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` as a task kept in ``tasks`` until it is done (the loop holds tasks
    only weakly: one nobody refers to may be collected mid-flight)."""
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


# Streamed body bytes held while no upstream connection takes them yet.
PENDING_LIMIT: Final = 64 * 1024
# Pieces a buffered (spooled) body is sent in.
BODY_PIECE: Final = 64 * 1024


class StreamedBody:
    """A request body relayed as it arrives (``request_buffering = false``).

    Until an upstream connection takes it, pieces wait here and the client is paused
    past ``PENDING_LIMIT`` bytes; once a byte went out, the request cannot be retried.
    """

    def __init__(self, client: ProxyClient, length: int) -> None:
        self.client = client
        self.length = length
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.conn: UpstreamConnection | None = None
        self.sent = 0
        self.complete = False

    def feed(self, data: bytes) -> None:
        """A piece from the client: to the upstream, or held until one is connected."""
        conn = self.conn
        if conn is None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size >= PENDING_LIMIT:
                self.client.pause_reading()
            return
        self.sent += len(data)
        conn.write_body(data)
        if conn.write_paused:
            self.client.pause_reading()  # resumed by the upstream's resume_writing

    def finish(self) -> None:
        """The client sent the last byte."""
        self.complete = True

    def attach(self, conn: UpstreamConnection) -> None:
        """``conn`` has the request head: send what is held and relay the rest."""
        self.conn = conn
        conn.on_drain = self.client.resume_reading
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_size = 0
            self.sent += len(data)
            conn.write_body(data)
        if not conn.write_paused:
            self.client.resume_reading()

    def detach(self) -> None:
        """The attempt is over."""
        if self.conn is not None:
            self.conn.on_drain = None
            self.conn = None


#: a request body as the proxy gets it: complete in memory, spooled, or streamed
RequestBody = bytes | BodyBuffer | StreamedBody


# What a request gets when no attempt could even start (replaced, never changed).
_NO_LIVE_SERVER: Final = UpstreamError(502, "no live server in the upstream", Failure.NO_SERVER)
_BAD_GATEWAY: Final = UpstreamError(502, "bad gateway", Failure.STATUS)


class _Verdict(Enum):
    """What the attempt loop does after an attempt."""

    DONE = "done"
    NEXT = "next"
    FAILED = "failed"


@dataclass
class _Attempts:
    """What the attempt loop of one request has gone through."""

    tried: list[Peer] = field(default_factory=list)
    last: UpstreamError = _NO_LIVE_SERVER
    stale_retries: int = 1
    fresh: bool = False  # after a stale kept connection, the retry opens a new one


class ProxyRequest(UpstreamResponse):
    """One client request on its way through the pool; relays the response to the client."""

    # Class-level defaults: a request sets only what changes (this is per request).
    peer: Peer | None = None
    conn: UpstreamConnection | None = None
    #: the attempt loop's wait for the current attempt (None: no loop awaits it)
    waiter: asyncio.Future[Outcome] | None = None
    #: no attempt in flight (set False by each attempt until it ends)
    settled = True
    #: the current attempt went out on a kept connection (it may have been stale)
    reused = False
    #: what the attempts so far went through, kept across the tasks that make them
    #: (made by the first attempt loop: the common request never needs one)
    state: _Attempts | None = None
    started_response = False
    retry_status = False
    attempt_start = 0.0
    attempt_open = False
    abandoned = False
    spooled_sent = False
    #: pass the upstream's Date on (the cache counts an answer's age from it)
    keep_date = False
    #: proxy_set_header's fields, filled for this request (b"" value: removed)
    set_fields: list[tuple[bytes, bytes]] | None = None
    #: a FastCGI request: the script's URL path (SCRIPT_NAME; the file is root + it)
    fastcgi_script = ""
    #: a FastCGI request: PATH_INFO, split off the path by fastcgi_split_path_info
    fastcgi_path_info = ""
    #: a FastCGI request: the client's own head (REQUEST_URI), when a rewrite changed it
    original: RequestHead | None = None

    def __init__(
        self,
        client: ProxyClient,
        head: RequestHead,
        body: RequestBody,
        upstream: Upstream,
        pool: UpstreamPool,
        location: Location | None,
        keepalive: KeepAlivePool,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.client = client
        self.keepalive = keepalive
        #: the worker's tasks, each kept until done
        self.tasks = tasks
        self.head_in = head
        self.body_in = body
        if isinstance(body, bytes):
            self.body_length = len(body)
        elif isinstance(body, BodyBuffer):
            self.body_length = body.size
        else:
            self.body_length = body.length
        self.upstream = upstream
        #: connections to this upstream may serve another request
        # Not to php-fpm: a kept connection holds one of its children (which waits for
        # the next request on it), so a pool smaller than the front's concurrency would
        # leave new connections unaccepted until a read timeout.
        protocol = pool.protocol  # the upstream's, as a compiled field
        self.reusable = (
            protocol == "http"
            or protocol == "https"
            or (protocol == "uwsgi" and pool.gantry_keepalive)
        )
        self.pool = pool
        self.location = location
        #: (client's port, listener's port), for FastCGI's REMOTE_PORT and SERVER_PORT
        self.ports = ("", "")

    # the attempt loop ----------------------------------------------------------

    def start(self) -> None:
        """A request whose body is in memory goes at once on an idle kept connection when
        there is one (no task, no future: the common case), else on a new connection to
        the server picked; a failed first attempt, or a body that is not in memory, takes
        the attempt loop."""
        if not isinstance(self.body_in, bytes):
            spawn(self.tasks, self.run())
            return
        peer = self.pool.pick(self.client.remote_addr, self._key(), ())
        if peer is None:
            self._fail(
                UpstreamError(
                    502, f"no live server in upstream {self.upstream.name!r}", Failure.NO_SERVER
                )
            )
            return
        if self.reusable:
            tls = self._tls(peer)
            key = tls[2] if tls is not None else peer.address
            conn = self.keepalive.take(key, self.upstream.keepalive_timeout)
            if conn is not None:
                self._send_on(peer, conn)
                self.reused = True
                return
        if peer.address.startswith("unix:") and self.pool.tls is None:
            self._connect_unix(peer)
            return
        spawn(self.tasks, self._first(peer))

    def _tls(self, peer: Peer) -> UpstreamTLS | None:
        """(client context, name) for a server of an https upstream, else None."""
        tls = self.pool.tls
        return tls[peer.server.address] if tls is not None else None

    def _connect_unix(self, peer: Peer) -> None:
        """The first attempt on a new unix connection to ``peer``, without a Task (to
        uWSGI, every request is one): the connect completes or fails at once."""
        keepalive = self.keepalive
        started = keepalive.loop.time()
        try:
            conn = connect_unix(keepalive.loop, peer.address, keepalive.active, keepalive.poller)
        except UpstreamError as exc:
            self._connected(peer, started, None, exc)
            return
        self._connected(peer, started, conn, None)

    async def _first(self, peer: Peer) -> None:
        """The first attempt on a new TCP connection to ``peer``, in one coroutine (the
        connect has a timeout to wait for); how it went comes to ``_connected``."""
        loop = self.keepalive.loop
        started = loop.time()
        try:
            conn = await open_upstream(
                loop,
                peer.server.address,
                self.upstream.connect_timeout,
                self.keepalive.active,
                self.keepalive.poller,
                self._tls(peer),
            )
        except UpstreamError as exc:
            self._connected(peer, started, None, exc)
            return
        self._connected(peer, started, conn, None)

    def _connected(
        self,
        peer: Peer,
        started: float,
        conn: UpstreamConnection | None,
        error: UpstreamError | None,
    ) -> None:
        """A first connect ended: send on ``conn``, or note ``error`` and go on to the
        attempt loop (the next server)."""
        if conn is None:
            assert error is not None
            self.state = _Attempts()
            self._connect_failed(peer, error, started, self.state)
            if not self._may_retry(error):
                self._fail(error)
                return
            spawn(self.tasks, self.run())
            return
        if self.reusable:
            conn.on_lost = self.keepalive.forget
        self._send_fresh(peer, conn, started)

    def _send_fresh(self, peer: Peer, conn: UpstreamConnection, connect_started: float) -> None:
        """Send on the connection this attempt got, unless the client went meanwhile."""
        if self.abandoned or self.client.closed:
            conn.abort()
            return
        self._send_on(peer, conn, connect_started)  # upstream time counts the connect too

    def _key(self) -> str:
        if not self.pool.hashed:
            return ""
        client = self.client
        return hash_key(self.upstream.hash_key, self.head_in, client.remote_addr, client.https)

    def _send_on(self, peer: Peer, conn: UpstreamConnection, started: float = -1.0) -> None:
        """One attempt: the request goes out on ``conn``; how it ends comes to ``_settle``.
        ``started``: when the attempt began (its connect), if not now."""
        self.peer = peer
        self.pool.started(peer)
        # the clock read once per attempt: a fresh connection's began with its connect
        self.attempt_start = started if started >= 0.0 else self.keepalive.loop.time()
        self.attempt_open = True
        self.settled = False
        self.conn = conn
        if self.pool.protocol == "fastcgi":
            # the body framed by write_body (spooled or streamed) is what is not in memory
            body = self.body_in
            whole = isinstance(body, bytes)
            conn.fcgi = FastCGIState(0 if whole else self.body_length)
            # The request is all in the payload and the connection is not kept (no
            # FCGI_KEEP_CONN): the write side closes once it is out. php-fpm's child,
            # its answer sent, shuts its side and reads until the peer's close before it
            # takes the next connection (fcgi_close): it finds it there, instead of
            # waiting for this worker to read the answer, relay it and close.
            conn.half_close = whole
        conn.send(
            self,
            self._payload(),
            self.pool.read_timeout,
            self.head_in.method == "HEAD",
            short_path=True,
        )
        if self.client.paused:
            conn.pause()  # the client is not reading: nothing more from the upstream yet

    def _settle(self, result: Outcome) -> None:
        """The current attempt ended: done, abandoned, or a failure to act on."""
        if self.settled:
            return
        self.settled = True
        waiter = self.waiter
        if waiter is not None:  # the attempt loop awaits it
            if not waiter.done():
                waiter.set_result(result)
            return
        # An attempt made by start() or _first(): over here, or the attempt loop takes it
        # from here.
        peer = self.peer
        if result is Outcome.ABANDONED:
            if peer is not None:
                self.pool.finished(peer, ok=True)
            return
        if result is not Outcome.DONE and peer is not None:
            spawn(self.tasks, self.run(resumed=(peer, result)))

    async def run(self, resumed: tuple[Peer, Outcome] | None = None) -> None:
        """Try the pool's servers in turn until one answers (bounded by max_tries).

        ``resumed``: the server an attempt made by start() went to, and how that went.
        """
        try:
            await self._attempts(resumed)
        finally:
            self.waiter = None
            if isinstance(self.body_in, BodyBuffer):
                self.body_in.discard()

    async def _attempts(self, resumed: tuple[Peer, Outcome] | None) -> None:
        upstream = self.upstream
        keepalive = self.keepalive
        loop = self.keepalive.loop
        stream = self.body_in if isinstance(self.body_in, StreamedBody) else None
        state = self.state
        if state is None:
            state = self.state = _Attempts()
        if resumed is not None:
            verdict = self._after(resumed[0], resumed[1], self.reused, state)
            if verdict is not _Verdict.NEXT:
                if verdict is _Verdict.FAILED:
                    self._fail(self._failure(state))
                return
        key = self._key()
        while len(state.tried) < upstream.max_tries:
            peer = self.pool.pick(self.client.remote_addr, key, state.tried)
            if peer is None:
                break
            self.peer = peer
            reused = False
            connect_started = loop.time()
            try:
                if self.reusable and stream is None and not state.fresh:
                    conn, reused = await keepalive.get(
                        peer.server.address,
                        upstream.connect_timeout,
                        upstream.keepalive_timeout,
                        self._tls(peer),
                    )
                else:
                    # a streamed body cannot be sent twice: never risk a stale connection
                    conn = await open_upstream(
                        loop,
                        peer.server.address,
                        upstream.connect_timeout,
                        keepalive.active,
                        keepalive.poller,
                        self._tls(peer),
                    )
            except UpstreamError as exc:
                self._connect_failed(peer, exc, connect_started, state)
                if not self._may_retry(exc):
                    break
                continue  # refused or slow to connect: nothing was sent, any method may retry
            if stream is None and not isinstance(self.body_in, BodyBuffer):
                # Everything goes out in one write: _settle takes it from here, and only
                # a failure needs a task again (no future, no wake-up per request).
                self._send_fresh(peer, conn, connect_started)
                self.reused = reused
                return
            if self.abandoned or self.client.closed:
                conn.abort()
                return
            self.waiter = loop.create_future()
            self._send_on(peer, conn)
            self.reused = reused
            self.attempt_start = connect_started  # upstream time counts the connect too
            if stream is not None:
                stream.attach(conn)
            elif isinstance(self.body_in, BodyBuffer):
                await self._send_spooled(conn)
            result = await self.waiter
            self.waiter = None
            if stream is not None:
                stream.detach()
            verdict = self._after(peer, result, reused, state)
            if verdict is _Verdict.DONE:
                return
            if verdict is _Verdict.FAILED:
                break
        self._fail(self._failure(state))

    def _fail(self, error: UpstreamError) -> None:
        """No server answered: the client gets ``error``'s status."""
        self.client.fail(error.status, error.reason)

    def _may_retry(self, error: UpstreamError) -> bool:
        """Whether next_upstream lets a request go on after ``error`` (nginx's "error"
        and "timeout" conditions; the method is checked apart)."""
        condition = error.kind.condition
        return bool(condition) and condition in self.upstream.next_upstream

    def _connect_failed(
        self, peer: Peer, error: UpstreamError, started: float, state: _Attempts
    ) -> None:
        """Note a connect that failed (an attempt of its own for the access log and the
        pool's passive health); the server is not tried again for this request."""
        self.pool.started(peer)
        self.attempt_start, self.attempt_open = started, True
        self._attempt_over()
        self.pool.finished(peer, ok=False)
        state.tried.append(peer)
        state.last = error
        self.client.log_error(f"upstream {peer.server.address}: {error.reason}")

    def _after(self, peer: Peer, result: Outcome, reused: bool, state: _Attempts) -> _Verdict:
        """What the attempt loop does after an attempt."""
        if result is Outcome.ABANDONED:
            self.pool.finished(peer, ok=True)
            return _Verdict.DONE
        if result is Outcome.DONE:
            return _Verdict.DONE
        self.pool.finished(peer, ok=result is Outcome.STALE)
        stream = self.body_in
        if isinstance(stream, StreamedBody) and stream.sent:
            return _Verdict.FAILED  # the body is gone: nothing left to send another server
        if result is Outcome.STALE and reused and state.stale_retries:
            state.stale_retries -= 1  # an idle kept connection the upstream had closed
            state.fresh = True  # its siblings may be closing too (a reload): a new one
            return _Verdict.NEXT
        state.tried.append(peer)
        if result is Outcome.STALE:
            # closed early on a new connection: an error like any other
            last = self._last_error
            if last is None or not self._may_retry(last):
                return _Verdict.FAILED
        if self.head_in.method not in IDEMPOTENT or result is Outcome.FINAL:
            return _Verdict.FAILED
        return _Verdict.NEXT

    def _failure(self, state: _Attempts) -> UpstreamError:
        if self.retry_status:
            return self._last_error or _BAD_GATEWAY
        return state.last

    #: the last attempt's failure, when it was a status worth another server
    #: (None, not an UpstreamError, by default: mypyc would make one per request)
    _last_error: UpstreamError | None = None

    async def _send_spooled(self, conn: UpstreamConnection) -> None:
        """A body too big for one write, in pieces, waiting while the upstream is behind."""
        assert isinstance(self.body_in, BodyBuffer)
        source = self.body_in.to_input()
        source.seek(0)
        self.spooled_sent = False
        while not conn.closed and self._attached(conn):
            piece = source.read(BODY_PIECE)
            if not piece:
                self.spooled_sent = True
                return
            conn.write_body(piece)
            try:
                await conn.drain(self.upstream.send_timeout)
            except UpstreamError as exc:
                if self._attached(conn):
                    conn.receiver = None
                    conn.abort()
                    self.failed(exc)
                return

    def _attached(self, conn: UpstreamConnection) -> bool:
        """Whether ``conn`` is still this request's. A method, not ``self.conn is conn``
        inline: mypy would narrow ``self.conn`` past the awaits that may clear it, and
        compiled code checks narrowed types (see gantry.compiled)."""
        return self.conn is conn

    def abandon(self) -> None:
        """The client went away: drop the upstream connection and end the attempt loop."""
        self.abandoned = True
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.receiver = None
            conn.abort()
        self._settle(Outcome.ABANDONED)

    def _body_sent(self, conn: UpstreamConnection) -> bool:
        body = self.body_in
        if isinstance(body, StreamedBody):
            return body.complete and body.sent == body.length
        if isinstance(body, BodyBuffer):
            return self.spooled_sent
        return True

    def _attempt_over(self) -> None:
        """Note this attempt's server and time for the access log, once."""
        if self.attempt_open and self.peer is not None:
            self.attempt_open = False
            attempts = self.client.upstream_log
            if attempts is None:
                return  # the times are for the access log only
            elapsed = self.keepalive.loop.time() - self.attempt_start
            attempts.append((self.peer.address, elapsed))

    def _payload(self) -> list[bytes]:
        """The bytes of the request: its head (a uwsgi packet, gantry's own when the
        upstream is gantry serve and the packet fits, or an HTTP/1.1 head), then its body."""
        body = self.body_in if isinstance(self.body_in, bytes) else b""
        client, head, location = self.client, self.head_in, self.location
        script_name = (location.script_name if location is not None else "") or ""
        fields = self.set_fields
        protocol = self.pool.protocol
        if protocol == "fastcgi":
            return [self._fastcgi_payload(body)]
        if protocol == "uwsgi":
            if fields is not None:
                head = with_fields(head, fields)
            path = client.request_path(head)
            gantry = self.pool.gantry_keepalive
            request = None
            if gantry:
                request = gantry_packet(
                    client.gantry_vars(), head, path, script_name, self.body_length
                )
            if request is None:
                request = uwsgi_packet(
                    client.fixed_vars(), head, path, script_name, self.body_length, gantry
                )
        else:
            request = http_request_head(
                head, client.remote_addr, self.body_length, script_name, fields, client.https
            )
        return [request, body] if body else [request]

    def _fastcgi_payload(self, body: bytes) -> bytes:
        """BEGIN_REQUEST and PARAMS records, then ``body`` (when in memory) as STDIN."""
        client, head, location = self.client, self.head_in, self.location
        request = fastcgi_request(
            head,
            self.original or head,
            self.fastcgi_script,
            (location.root if location is not None else None) or "/",
            client.remote_addr,
            self.ports,
            client.https,
            self.body_length,
            location.fastcgi_param if location is not None else (),
            self.fastcgi_path_info,
        )
        if body:
            request += stream_records(STDIN, FASTCGI_REQUEST_ID, body)
            request += stream_records(STDIN, FASTCGI_REQUEST_ID, b"")
        return request

    # UpstreamResponse -------------------------------------------------------------

    def head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        if (
            status >= 500
            and not self.started_response
            and self.head_in.method in IDEMPOTENT
            and f"http_{status}" in self.upstream.next_upstream
        ):
            # nginx's proxy_next_upstream http_502/503/504: try the next server instead
            self._attempt_over()
            self.retry_status = True
            self._last_error = UpstreamError(status, f"upstream answered {status}", Failure.STATUS)
            conn = self.conn
            self.conn = None
            if conn is not None:
                conn.receiver = None
                conn.abort()
            self._settle(Outcome.RETRY)
            return
        lines = []
        has_length = False
        codings = b""
        connection = b""
        location = self.location
        hidden = location.proxy_hide_header if location is not None else None
        for name, value in headers:
            lname = name.lower()
            if hidden and lname in hidden:
                continue  # proxy_hide_header
            if lname in RESPONSE_DROP:
                if lname == b"transfer-encoding":
                    codings = _codings(value)
                elif lname == b"date" and self.keep_date:
                    lines.append(name + b": " + value + b"\r\n")
                elif lname == b"connection":
                    connection += b"," + value
                continue
            if lname == b"content-length":
                has_length = True
            lines.append(name + b": " + value + b"\r\n")
        if connection:
            lines = _without_named(lines, connection)  # rare
        if codings:
            if self.head_in.version == "1.0":
                # no transfer coding may go to an HTTP/1.0 client (RFC 9112 6.1)
                message = f"transfer coding {codings!r} for an HTTP/1.0 client"
                self.failed(UpstreamError(502, message, Failure.MALFORMED), drop=True)
                return
            # the body keeps its codings; the client side adds chunked for its own framing
            lines.append(b"Transfer-Encoding: " + codings + b"\r\n")
        self.started_response = True
        self.client.start_response(status, reason, lines, has_length)

    def interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        # A 102 or 103 goes on to the client (RFC 9110 15.2: a proxy forwards 1xx), with
        # no hop-by-hop field; a 100 does not: the front answers Expect itself.
        if status == 100 or self.started_response:
            return
        lines = [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in RESPONSE_DROP]
        connection = b",".join([v for n, v in headers if n.lower() == b"connection"])
        if connection:
            lines = _without_named(lines, connection)
        self.client.interim(status, reason, lines)

    def whole(self, status: int, head: bytes, body: bytes) -> None:
        location = self.location
        if location is not None and location.proxy_hide_header:
            head = _hide(head, location.proxy_hide_header)
        self.started_response = True
        self.client.respond_whole(status, head, body)
        self.end(True)

    def body(self, data: bytes) -> None:
        self.client.write(data)

    def stderr(self, data: bytes) -> None:
        # bounded: a script may write a lot to stderr; the log gets the start of each record
        text = data[:2048].decode("utf-8", "replace").rstrip()
        head = self.head_in
        line = f"{head.method} {head.target.decode('latin-1')}"
        self.client.log_error(f"FastCGI sent in stderr: {text!r} while serving {line!r}")

    def end(self, reusable: bool) -> None:
        conn = self.conn
        peer = self.peer
        self.conn = None
        self._attempt_over()
        if peer is not None:
            self.pool.finished(peer, ok=True)
        if conn is not None:
            # an answer that came before the whole body went out leaves the rest unsent
            if reusable and self.reusable and self._body_sent(conn):
                conn.resume()
                self.keepalive.put(conn, self.upstream.keepalive)
            else:
                conn.abort()
        self.client.end()
        self._settle(Outcome.DONE)

    def failed(self, error: UpstreamError, drop: bool = False) -> None:
        conn = self.conn
        self.conn = None
        if drop and conn is not None:  # a response refused here: the connection goes too
            conn.receiver = None
            conn.abort()
        self._attempt_over()
        if self.started_response:
            # the head is out: the only way left to say it broke is to close
            if self.peer is not None:
                self.pool.finished(self.peer, ok=False)
            self.client.broken(error.reason)
            self._settle(Outcome.DONE)
            return
        self._last_error = error
        self.retry_status = True
        self.client.log_error(
            f"upstream {self.peer.server.address if self.peer else '?'}: {error.reason}"
        )
        if error.kind is Failure.CLOSED:
            result = Outcome.STALE  # perhaps a kept connection closed meanwhile: see _after
        elif self._may_retry(error):
            result = Outcome.RETRY
        else:
            result = Outcome.FINAL  # nginx goes on only on the conditions it is told
        self._settle(result)

    # back-pressure from the client -----------------------------------------------------

    def pause(self) -> None:
        """The client cannot keep up: stop reading the upstream."""
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        """The client drained: read the upstream again."""
        if self.conn is not None:
            self.conn.resume()
