"""The limits step of the handler chain (after access and bans, before cache and
content): nginx's limit_req then limit_conn, over the zones every worker shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from gantry.config.front_model import LimitConn, LimitReq, Location, VirtualServer
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.limits.zones import (
    AGAIN,
    BUSY,
    LimitConnState,
    LimitReqState,
    LimitZones,
    limit_key,
    now_ms,
)
from gantry.http.body import BodyBuffer

__all__ = ["LimitEvents", "LimitHandler"]

log: Final = logging.getLogger("gantry.front")

#: nginx's delay for nodelay: any excess within the burst passes at once
_NO_DELAY: Final = 1 << 62


class LimitEvents(Protocol):
    """Who is told of refusals (autoban counts them)."""

    def event(self, remote_addr: str, kind: str) -> None:
        """``remote_addr`` was refused by a limit of ``kind`` ("limit_req", "limit_conn")."""


def limits_of(
    server: VirtualServer, location: Location | None
) -> tuple[tuple[LimitReq, ...], tuple[LimitConn, ...]]:
    """The limits a route has: the location's, else the server's (nginx inherits a
    directive only into blocks that have none of it)."""
    reqs = location.limit_req if location is not None and location.limit_req else server.limit_req
    conns = (
        location.limit_conn if location is not None and location.limit_conn else server.limit_conn
    )
    return reqs, conns


class LimitHandler(Handler):
    """Refuses (503, or the limit's status), delays, or lets a request through."""

    def __init__(
        self,
        zones: LimitZones,
        loop: asyncio.AbstractEventLoop,
        rest_of_chain: Callable[[Handler, Exchange], tuple[Handler, ...]],
        events: LimitEvents | None = None,
    ) -> None:
        self.zones = zones
        self.loop = loop
        #: the handlers after this one on the exchange's route (run after a delay)
        self.rest_of_chain = rest_of_chain
        self.events = events

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        reqs, conns = limits_of(server, location)
        return bool(reqs or conns)

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        reqs, conns = limits_of(exchange.server, exchange.location)
        if reqs:
            delay = self._limit_req(exchange, reqs)
            if delay < 0:
                return True  # refused
            if delay > 0:
                self.loop.call_later(delay / 1000, self._go_on, exchange, body)
                return True
        if conns and self._limit_conn(exchange, conns):
            return True
        return False

    def _go_on(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> None:
        """A delayed request's turn: limit_conn, then the rest of the chain."""
        if exchange.closed:
            return
        reqs, conns = limits_of(exchange.server, exchange.location)
        if conns and self._limit_conn(exchange, conns):
            return
        for handler in self.rest_of_chain(self, exchange):
            if handler.handle(exchange, body):
                return
        exchange.error(404)

    def _limit_req(self, exchange: Exchange, limits: tuple[LimitReq, ...]) -> int:
        """nginx's limit_req handler: -1 refused (answered), else the delay in ms."""
        zones = self.zones.req
        server_name = exchange.server.server_names[0] if exchange.server.server_names else ""
        now = now_ms()
        rc = -1  # nginx's NGX_DECLINED: no limit had a key
        excess = 0
        checked: list[tuple[LimitReq, LimitReqState, bytes]] = []
        last = len(limits) - 1
        for n, limit in enumerate(limits):
            state = zones[limit.zone]
            key = limit_key(state.key, exchange.head, exchange.remote_addr, server_name)
            if not key:
                continue
            rc, excess = state.lookup(key, limit.burst * 1000, now, n == last)
            if rc == BUSY:
                state.rejected += 1
                exchange.log_error(
                    f"limiting requests, excess: {excess / 1000:.3f} by zone {limit.zone!r}"
                )
                if self.events is not None:
                    self.events.event(exchange.remote_addr, "limit_req")
                if limit.dry_run:
                    exchange.limit_status = "REJECTED_DRY_RUN"
                    return 0
                exchange.limit_status = "REJECTED"
                exchange.error(limit.status)
                return -1
            checked.append((limit, state, key))
        if rc == -1:
            return 0  # no key: not limited
        # the delay: the largest any limit asks for (nginx's ngx_http_limit_req_account);
        # the last limit counted the request already unless its key was empty
        delay = 0
        chosen = checked[-1][0]
        to_account = checked
        if rc != AGAIN:
            delay = _delay_of(chosen, excess, checked[-1][1].rate)
            to_account = checked[:-1]
        for limit, state, key in to_account:
            stored = state.account(key, now)
            wait = _delay_of(limit, stored, state.rate)
            if wait > delay:
                delay, chosen = wait, limit
        if delay <= 0:
            exchange.limit_status = "PASSED"
            return 0
        if chosen.dry_run:
            exchange.limit_status = "DELAYED_DRY_RUN"
            return 0
        exchange.limit_status = "DELAYED"
        zones[chosen.zone].delayed += 1
        return delay

    def _limit_conn(self, exchange: Exchange, limits: tuple[LimitConn, ...]) -> bool:
        """nginx's limit_conn handler: True when refused (answered)."""
        zones = self.zones.conn
        server_name = exchange.server.server_names[0] if exchange.server.server_names else ""
        held: list[tuple[LimitConnState, bytes]] = []
        for limit in limits:
            state = zones[limit.zone]
            key = limit_key(state.key, exchange.head, exchange.remote_addr, server_name)
            if not key:
                continue
            if state.acquire(key, limit.limit):
                held.append((state, key))
                continue
            state.rejected += 1
            exchange.log_error(f"limiting connections by zone {limit.zone!r}")
            if self.events is not None:
                self.events.event(exchange.remote_addr, "limit_conn")
            if limit.dry_run:
                continue
            for state, key in held:
                state.release(key)
            exchange.error(limit.status)
            return True
        for state, key in held:
            exchange.at_end(_releaser(state, key))
        return False


def _delay_of(limit: LimitReq, excess: int, rate: int) -> int:
    """Milliseconds a request with ``excess`` waits under ``limit`` (0: none)."""
    allowed = _NO_DELAY if limit.nodelay else limit.delay * 1000
    if excess <= allowed:
        return 0
    return (excess - allowed) * 1000 // rate


def _releaser(state: LimitConnState, key: bytes) -> Callable[[], None]:
    return lambda: state.release(key)
