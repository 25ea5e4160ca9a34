"""The limits step of the handler chain (after bans and access, before cache and
content): nginx's limit_req then limit_conn, over the zones every worker shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol

from gantry.config.front_model import LimitConn, LimitReq, Location, VirtualServer
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.limits.zones import (
    AGAIN,
    BUSY,
    REJECTED,
    LimitConnState,
    LimitReqState,
    LimitZones,
    now_ms,
)
from gantry.http.body import BodyBuffer

__all__ = ["LimitEvents", "LimitHandler"]

log: Final = logging.getLogger("gantry.front")

#: nginx's delay for nodelay: any excess within the burst passes at once
_NO_DELAY: Final = 1 << 62


class SharedCounters(Protocol):
    """limit_req counters kept elsewhere for several fronts (Redis: shared_redis)."""

    #: it answered last time (else the local zones count until it is back)
    up: bool
    #: refuse limited requests while it is down (else count them locally)
    fail_closed: bool

    def check(
        self, keys: Sequence[bytes], limits: Sequence[tuple[int, int]]
    ) -> Coroutine[Any, Any, list[int]]:
        """Count a request against every (microseconds per request, burst) limit at
        once: [0, index, excess] when limit ``index`` (from 1) refuses it, nothing
        counted; else [1, each limit's excess]."""

    def failed(self, exc: BaseException) -> None:
        """It did not answer: local counts until it is back."""


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
        #: counters shared with other fronts (Redis), when configured
        self.shared: SharedCounters | None = None
        #: tasks of shared checks, kept referenced until done
        self.tasks: set[asyncio.Task[list[int]]] = set()

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        reqs, conns = limits_of(server, location)
        return bool(reqs or conns)

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        reqs, conns = limits_of(exchange.server, exchange.location)
        if reqs:
            shared = self.shared
            if shared is not None:
                if shared.up:
                    return self._ask_shared(shared, exchange, body, reqs, conns)
                if shared.fail_closed:
                    exchange.error(503)
                    return True
            delay = self._limit_req(exchange, reqs)
            if delay < 0:
                return True  # refused
            if delay > 0:
                self.loop.call_later(delay / 1000, self._go_on, exchange, body)
                return True
        if conns and self._limit_conn(exchange, conns):
            return True
        return False

    def _ask_shared(
        self,
        shared: SharedCounters,
        exchange: Exchange,
        body: BodyBuffer | BodyStream | None,
        reqs: tuple[LimitReq, ...],
        conns: tuple[LimitConn, ...],
    ) -> bool:
        """The limit_req check of a request through the shared counters (one round trip,
        then the request goes on from _shared_answer)."""
        names = exchange.server.server_names
        server_name = names[0] if names else ""
        keyed: list[tuple[LimitReq, LimitReqState]] = []
        keys: list[bytes] = []
        limits: list[tuple[int, int]] = []
        for limit in reqs:
            state = self.zones.req[limit.zone]
            key = state.key.digest_of(exchange.head, exchange.remote_addr, server_name)
            if key:
                keyed.append((limit, state))
                # the zone's name too: two zones with the same key count apart
                keys.append(limit.zone.encode() + b":" + key)
                limits.append((1_000_000_000 // state.rate, limit.burst))
        if not keyed:
            return bool(conns) and self._limit_conn(exchange, conns)
        task = self.loop.create_task(shared.check(keys, limits))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(
            lambda done: self._shared_answer(done, shared, exchange, body, reqs, keyed)
        )
        return True

    def _shared_answer(
        self,
        done: asyncio.Task[list[int]],
        shared: SharedCounters,
        exchange: Exchange,
        body: BodyBuffer | BodyStream | None,
        reqs: tuple[LimitReq, ...],
        keyed: list[tuple[LimitReq, LimitReqState]],
    ) -> None:
        if done.cancelled() or exchange.closed:
            return
        exc = done.exception()
        if exc is not None:
            shared.failed(exc)
            if shared.fail_closed:
                exchange.error(503)
                return
            delay = self._limit_req(exchange, reqs)  # this host's own count meanwhile
        else:
            answer = done.result()
            if answer[0] == 0:
                limit, state = keyed[answer[1] - 1]
                state.count(REJECTED)  # counted in Redis: the stats are this host's
                delay = self._refuse(exchange, limit, state, answer[2])
            else:
                delay = 0
                chosen, chosen_state = keyed[0]
                for (limit, state), excess in zip(keyed, answer[1:], strict=False):
                    wait = _delay_of(limit, excess, state.rate)
                    if wait > delay:
                        delay, chosen, chosen_state = wait, limit, state
                if delay > 0:
                    delay = self._delay(exchange, chosen, chosen_state, delay)
                else:
                    exchange.limit_status = "PASSED"
        if delay < 0:
            return
        if delay > 0:
            self.loop.call_later(delay / 1000, self._go_on, exchange, body)
            return
        self._go_on(exchange, body)

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
        names = exchange.server.server_names
        server_name = names[0] if names else ""
        now = now_ms()
        if len(limits) == 1:  # the usual case, without the bookkeeping of several
            limit = limits[0]
            state = zones[limit.zone]
            key = state.key.digest_of(exchange.head, exchange.remote_addr, server_name)
            if not key:
                return 0
            rc, excess = state.lookup(key, limit.burst * 1000, now, True)
            if rc == BUSY:
                return self._refuse(exchange, limit, state, excess)
            delay = _delay_of(limit, excess, state.rate)
            if delay <= 0:
                exchange.limit_status = "PASSED"
                return 0
            return self._delay(exchange, limit, state, delay)
        rc = -1  # nginx's NGX_DECLINED: no limit had a key
        excess = 0
        checked: list[tuple[LimitReq, LimitReqState, bytes]] = []
        last = len(limits) - 1
        for n, limit in enumerate(limits):
            state = zones[limit.zone]
            key = state.key.digest_of(exchange.head, exchange.remote_addr, server_name)
            if not key:
                continue
            rc, excess = state.lookup(key, limit.burst * 1000, now, n == last)
            if rc == BUSY:
                return self._refuse(exchange, limit, state, excess)
            checked.append((limit, state, key))
        if rc == -1:
            return 0  # no key: not limited
        # the delay: the largest any limit asks for (nginx's ngx_http_limit_req_account);
        # the last limit counted the request already unless its key was empty
        delay = 0
        chosen, chosen_state, _ = checked[-1]
        to_account = checked
        if rc != AGAIN:
            delay = _delay_of(chosen, excess, chosen_state.rate)
            to_account = checked[:-1]
        for limit, state, key in to_account:
            stored = state.account(key, now)
            wait = _delay_of(limit, stored, state.rate)
            if wait > delay:
                delay, chosen, chosen_state = wait, limit, state
        if delay <= 0:
            exchange.limit_status = "PASSED"
            return 0
        return self._delay(exchange, chosen, chosen_state, delay)

    def _refuse(
        self, exchange: Exchange, limit: LimitReq, state: LimitReqState, excess: int
    ) -> int:
        """A request over ``limit``: refused (-1), or let through in a dry run (0)."""
        exchange.log_error(f"limiting requests, excess: {excess / 1000:.3f} by zone {limit.zone!r}")
        if self.events is not None:
            self.events.event(exchange.remote_addr, "limit_req")
        if limit.dry_run:
            exchange.limit_status = "REJECTED_DRY_RUN"
            return 0
        exchange.limit_status = "REJECTED"
        exchange.error(limit.status)
        return -1

    def _delay(self, exchange: Exchange, limit: LimitReq, state: LimitReqState, delay: int) -> int:
        """A request ``limit`` delays by ``delay`` ms (0 in a dry run)."""
        if limit.dry_run:
            exchange.limit_status = "DELAYED_DRY_RUN"
            return 0
        exchange.limit_status = "DELAYED"
        state.delayed()
        return delay

    def _limit_conn(self, exchange: Exchange, limits: tuple[LimitConn, ...]) -> bool:
        """nginx's limit_conn handler: True when refused (answered)."""
        zones = self.zones.conn
        server_name = exchange.server.server_names[0] if exchange.server.server_names else ""
        held: list[tuple[LimitConnState, bytes]] = []
        for limit in limits:
            state = zones[limit.zone]
            key = state.key.digest_of(exchange.head, exchange.remote_addr, server_name)
            if not key:
                continue
            if state.acquire(key, limit.limit):
                held.append((state, key))
                continue
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
