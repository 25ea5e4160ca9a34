"""Idle connections to upstream servers kept for the next request (nginx's upstream
keepalive), and the set of connections whose read deadline the worker's sweep checks."""

from __future__ import annotations

import asyncio

from gantry.front.upstream import UpstreamConnection, open_upstream
from gantry.front.upstream_poll import worker_poller
from gantry.front.upstream_tls import UpstreamTLS

__all__ = ["KeepAlivePool"]


class KeepAlivePool:
    """Idle HTTP connections to upstream servers, reused across requests (bounded per server)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: dict[str, list[UpstreamConnection]] = {}
        #: connections waiting on a response, whose read deadline ``sweep`` checks
        self.active: set[UpstreamConnection] = set()
        #: tells the worker's upstream connections when their sockets are ready
        self.poller = worker_poller(loop)

    def sweep(self) -> None:
        """Time out every upstream that has been silent past its read timeout."""
        now = self.loop.time()
        for conn in [c for c in self.active if c.deadline and now >= c.deadline]:
            conn.check_deadline(now)

    def take(self, address: str, max_idle: float) -> UpstreamConnection | None:
        """An idle connection to ``address`` (an https upstream's: its key, see
        UpstreamTLS) that has waited at most ``max_idle`` seconds."""
        idle = self.idle.get(address)
        if not idle:
            return None
        oldest_kept = self.loop.time() - max_idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= oldest_kept:
                return conn
            conn.abort()
        return None

    async def get(
        self,
        address: str,
        timeout: float,
        max_idle: float = 1.5,
        tls: UpstreamTLS | None = None,
    ) -> tuple[UpstreamConnection, bool]:
        """A connection to ``address`` (over TLS with ``tls``: see open_upstream); True when
        it is a reused one (it may be stale)."""
        conn = self.take(tls[2] if tls is not None else address, max_idle)
        if conn is not None:
            return conn, True
        conn = await open_upstream(self.loop, address, timeout, self.active, self.poller, tls)
        conn.on_lost = self.forget
        return conn, False

    def put(self, conn: UpstreamConnection, limit: int) -> None:
        """Keep ``conn`` for the next request, or close it past ``limit``."""
        idle = self.idle.setdefault(conn.pool_key or conn.address, [])
        if conn.closed or len(idle) >= limit:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """``conn`` closed: it is no longer one to take."""
        idle = self.idle.get(conn.pool_key or conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection (the worker is stopping)."""
        for idle in self.idle.values():
            for conn in list(idle):
                conn.abort()
        self.idle.clear()
        self.poller.close()
