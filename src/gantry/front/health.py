"""Active health checks: each server of a pool probed on a timer, rise/fall counted."""

from __future__ import annotations

import asyncio
import logging

from gantry.config.front_model import HealthCheck, Upstream
from gantry.front.balancing import HealthTracker, Peer, UpstreamPool
from gantry.front.upstream import UpstreamError, UpstreamResponse, open_upstream, uwsgi_payload

__all__ = ["run_health_checks"]

log = logging.getLogger("gantry.front")


class _Probe(UpstreamResponse):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: asyncio.Future[int] = loop.create_future()

    def head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framed: bool
    ) -> None:
        if not self.status.done():
            self.status.set_result(status)

    def failed(self, error: UpstreamError) -> None:
        if not self.status.done():
            self.status.set_result(0)


async def _probe(
    loop: asyncio.AbstractEventLoop,
    upstream: Upstream,
    pool: UpstreamPool,
    peer: Peer,
    check: HealthCheck,
) -> bool:
    try:
        tls = pool.tls[peer.server.address] if pool.tls is not None else None
        conn = await open_upstream(loop, peer.server.address, check.timeout, None, tls=tls)
    except UpstreamError:
        return False
    probe = _Probe(loop)
    if upstream.protocol == "uwsgi":
        pairs = [(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", check.path.encode()),
                 (b"REQUEST_URI", check.path.encode()), (b"QUERY_STRING", b""),
                 (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"SERVER_NAME", b"health"),
                 (b"SERVER_PORT", b"80"), (b"REMOTE_ADDR", b"127.0.0.1"),
                 (b"SCRIPT_NAME", b""), (b"HTTP_HOST", b"health")]  # fmt: skip
        payload = uwsgi_payload(pairs, b"")
    else:
        payload = [f"GET {check.path} HTTP/1.1\r\nHost: health\r\nConnection: close\r\n\r\n"
                   .encode("latin-1")]  # fmt: skip
    conn.send(probe, payload, check.timeout, head_request=False)
    try:
        status = await asyncio.wait_for(probe.status, check.timeout)
    except TimeoutError:
        status = 0
    finally:
        conn.receiver = None
        conn.abort()
    return status == check.expect_status


async def run_health_checks(
    loop: asyncio.AbstractEventLoop, upstream: Upstream, pool: UpstreamPool
) -> None:
    """Probe every server of ``pool`` each interval until cancelled."""
    check = upstream.health_check
    if check is None:
        return
    tracker = HealthTracker(pool, check)
    while True:
        results = await asyncio.gather(
            *(_probe(loop, upstream, pool, peer, check) for peer in pool.peers())
        )
        for peer, passed in zip(pool.peers(), results, strict=True):
            if tracker.record(peer, passed):
                state = "up" if peer.healthy else "down"
                log.warning("health check: %s in upstream %s is %s",
                            peer.server.address, upstream.name, state)  # fmt: skip
        await asyncio.sleep(check.interval)
