"""Proxying one client request to an upstream pool, with retries and a streamed response."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gantry.front.balancing import Peer, UpstreamPool
from gantry.front.model import Upstream
from gantry.front.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamResponse,
    open_upstream,
    uwsgi_payload,
)
from gantry.protocol.http1 import RequestHead

if TYPE_CHECKING:
    from gantry.front.server import FrontConnection

__all__ = ["ProxyRequest", "KeepAlivePool"]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# Hop-by-hop fields (RFC 9110 7.6.1) and what a proxy hides by default (nginx's
# proxy_hide_header: the front sets its own Date and Server).
_RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-connection", b"date", b"server", b"x-accel-redirect"}
)  # fmt: skip
_REQUEST_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authorization", b"proxy-connection", b"expect", b"content-length",
     b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"}
)  # fmt: skip


class KeepAlivePool:
    """Idle HTTP connections to upstream servers, reused across requests (bounded per server)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: dict[str, list[UpstreamConnection]] = {}

    async def get(self, address: str, timeout: float) -> tuple[UpstreamConnection, bool]:
        """A connection to ``address``; True when it is a reused one (it may be stale)."""
        idle = self.idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        conn = await open_upstream(self.loop, address, timeout)
        conn.on_lost = self._forget
        return conn, False

    def put(self, conn: UpstreamConnection, limit: int) -> None:
        """Keep ``conn`` for the next request, or close it past ``limit``."""
        idle = self.idle.setdefault(conn.address, [])
        if conn.closed or len(idle) >= limit:
            conn.abort()
            return
        idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        idle = self.idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self.idle.values():
            for conn in idle:
                conn.abort()
        self.idle.clear()


class ProxyRequest(UpstreamResponse):
    """One client request on its way through the pool; relays the response to the client."""

    def __init__(
        self,
        client: FrontConnection,
        head: RequestHead,
        body: bytes,
        upstream: Upstream,
        pool: UpstreamPool,
    ) -> None:
        self.client = client
        self.head_in = head
        self.body_in = body
        self.upstream = upstream
        self.pool = pool
        self.peer: Peer | None = None
        self.conn: UpstreamConnection | None = None
        self.outcome: asyncio.Future[str] = client.loop.create_future()
        self.started_response = False
        self.retry_status = False

    # the attempt loop ----------------------------------------------------------

    async def run(self) -> None:
        """Try the pool's servers in turn until one answers (bounded by max_tries)."""
        head = self.head_in
        upstream = self.upstream
        retry_ok = head.method in IDEMPOTENT
        tried: list[Peer] = []
        last = UpstreamError(502, f"no live server in upstream {upstream.name!r}")
        stale_retries = 1
        while len(tried) < upstream.max_tries:
            peer = self.pool.pick(self.client.remote_addr, head.target.decode("latin-1"), tried)
            if peer is None:
                break
            self.peer = peer
            self.pool.started(peer)
            reused = False
            try:
                if upstream.protocol == "http":
                    conn, reused = await self.client.worker.keepalive.get(
                        peer.server.address, upstream.connect_timeout
                    )
                else:
                    conn = await open_upstream(
                        self.client.loop, peer.server.address, upstream.connect_timeout
                    )
            except UpstreamError as exc:
                self.pool.finished(peer, ok=False)
                tried.append(peer)
                last = exc
                self.client.log_error(f"upstream {peer.server.address}: {exc.reason}")
                continue  # refused or slow to connect: nothing was sent, any method may retry
            self.conn = conn
            self.outcome = self.client.loop.create_future()
            conn.send(self, self._payload(peer), upstream.read_timeout, head.method == "HEAD")
            result = await self.outcome
            if result == "done":
                return
            self.pool.finished(peer, ok=result == "stale")
            if result == "stale" and reused and stale_retries:
                stale_retries -= 1  # an idle keep-alive connection the upstream had closed
                continue
            tried.append(peer)
            if not retry_ok:
                break
        self.client.proxy_failed(last if not self.retry_status else self._last_error)

    _last_error = UpstreamError(502, "bad gateway")

    def _payload(self, peer: Peer) -> list[bytes]:
        if self.upstream.protocol == "uwsgi":
            return uwsgi_payload(self.client.uwsgi_vars(self.head_in, self.body_in), self.body_in)
        return [self.client.http_request_bytes(self.head_in, self.body_in)]

    # UpstreamResponse -------------------------------------------------------------

    def head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        codes = self.upstream.next_upstream
        if (
            not self.started_response
            and self.head_in.method in IDEMPOTENT
            and f"http_{status}" in codes
        ):
            # nginx's proxy_next_upstream http_502/503/504: try the next server instead
            self.retry_status = True
            self._last_error = UpstreamError(status, f"upstream answered {status}")
            conn = self.conn
            self.conn = None
            if conn is not None:
                conn.receiver = None
                conn.abort()
            if not self.outcome.done():
                self.outcome.set_result("retry")
            return
        self.started_response = True
        kept = [(n, v) for n, v in headers if n.lower() not in _RESPONSE_DROP]
        self.client.start_proxied_response(self, status, reason, kept, headers, framed)

    def body(self, data: bytes) -> None:
        self.client.relay_body(self, data)

    def end(self, reusable: bool) -> None:
        conn = self.conn
        peer = self.peer
        self.conn = None
        if peer is not None:
            self.pool.finished(peer, ok=True)
        if conn is not None:
            if reusable and self.upstream.protocol == "http":
                conn.resume()
                self.client.worker.keepalive.put(conn, self.upstream.keepalive)
            else:
                conn.abort()
        self.client.proxied_response_done(self)
        if not self.outcome.done():
            self.outcome.set_result("done")

    def failed(self, error: UpstreamError) -> None:
        self.conn = None
        if self.started_response:
            # the head is out: the only way left to say it broke is to close
            if self.peer is not None:
                self.pool.finished(self.peer, ok=False)
            self.client.proxied_response_broken(self, error)
            if not self.outcome.done():
                self.outcome.set_result("done")
            return
        self._last_error = error
        self.retry_status = True
        self.client.log_error(
            f"upstream {self.peer.server.address if self.peer else '?'}: {error.reason}"
        )
        if not self.outcome.done():
            self.outcome.set_result(
                "stale" if error.status == 502 and "early" in error.reason else "retry"
            )

    # back-pressure from the client -----------------------------------------------------

    def pause(self) -> None:
        """The client cannot keep up: stop reading the upstream."""
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        """The client drained: read the upstream again."""
        if self.conn is not None:
            self.conn.resume()
