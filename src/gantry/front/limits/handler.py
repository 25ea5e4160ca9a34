"""The limits step of the handler chain (after bans and access, before cache and
content): nginx's limit_req then limit_conn, over the zones every worker shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol

from gantry.config.front_model import LimitConn, LimitReq, Location, VirtualServer
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.limits.table import SharedTable
from gantry.front.limits.zones import (
    AGAIN,
    BUSY,
    NOW,
    REJECTED,
    LimitConnState,
    LimitReqState,
    LimitZones,
)
from gantry.http.body import BodyBuffer

__all__ = ["BanHandler", "Bans", "LimitEvents", "LimitHandler", "RouteLimits"]

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


class Bans(Protocol):
    """The addresses banned in every worker (autoban's BanTable)."""

    #: the shared table the bans are in
    table: SharedTable

    def banned(self, addr: str) -> bool:
        """Whether ``addr`` is banned now (counted as a blocked request if so)."""


class BanHandler(Handler):
    """A banned address gets 403 (after the blocklist, before access and the limits)."""

    def __init__(self, bans: Bans, remote: Callable[[str], bool] | None = None) -> None:
        self.bans = bans
        #: the bans' table, asked directly whether it holds any (compiled: a native call)
        self.table = bans.table
        #: asks another store (Redis) too
        self.remote = remote

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return True

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        # no ban at all, the usual case: no lock, no digest of the address (a racy read
        # of one int is harmless: a ban made this very moment applies from the next one)
        if not self.table.used() and self.remote is None:
            return False
        addr = exchange.remote_addr
        if self.bans.banned(addr) or (self.remote is not None and self.remote(addr)):
            exchange.error(403)
            return True
        return False


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
    """Refuses (503, or the limit's status), delays, or lets a request through. Each route
    with limits runs a :class:`RouteLimits` of its own (see ``for_route``)."""

    def __init__(
        self,
        zones: LimitZones,
        loop: asyncio.AbstractEventLoop,
        rest_of_chain: Callable[[Handler, Exchange], tuple[Handler, ...]],
        events: LimitEvents | None = None,
    ) -> None:
        self.zones = zones
        self.loop = loop
        #: the handlers after a route's limits on the exchange's route (run after a delay)
        self.rest_of_chain = rest_of_chain
        self.events = events
        #: counters shared with other fronts (Redis), when configured
        self.shared: SharedCounters | None = None
        #: tasks of shared checks, kept referenced until done
        self.tasks: set[asyncio.Task[list[int]]] = set()

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        reqs, conns = limits_of(server, location)
        return bool(reqs or conns)

    def for_route(self, server: VirtualServer, location: Location | None) -> Handler:
        reqs, conns = limits_of(server, location)
        names = server.server_names
        return RouteLimits(self, reqs, conns, names[0] if names else "")

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        # a chain runs the route's own handler (for_route); this serves any other caller
        return self.for_route(exchange.server, exchange.location).handle(exchange, body)

    def run(
        self, route: RouteLimits, exchange: Exchange, body: BodyBuffer | BodyStream | None
    ) -> bool:
        """The limits of ``route`` in general: several limit_req, shared counters, a
        request to refuse or delay; then limit_conn."""
        reqs = route.reqs
        if reqs:
            shared = self.shared
            if shared is not None:
                if shared.up:
                    return self._ask_shared(shared, route, exchange, body)
                if shared.fail_closed:
                    exchange.error(503)
                    return True
            delay = self._limit_req(exchange, route)
            if delay < 0:
                return True  # refused
            if delay > 0:
                self.loop.call_later(delay / 1000, self._go_on, route, exchange, body)
                return True
        conns = route.conns
        return bool(conns) and self.limit_conn(exchange, route)

    def _ask_shared(
        self,
        shared: SharedCounters,
        route: RouteLimits,
        exchange: Exchange,
        body: BodyBuffer | BodyStream | None,
    ) -> bool:
        """The limit_req check of a request through the shared counters (one round trip,
        then the request goes on from _shared_answer)."""
        keyed: list[tuple[LimitReq, LimitReqState]] = []
        keys: list[bytes] = []
        limits: list[tuple[int, int]] = []
        for limit, state in route.limited:
            key = state.key.digest_of(exchange.head, exchange.remote_addr, route.server_name)
            if key:
                keyed.append((limit, state))
                # the zone's name too: two zones with the same key count apart
                keys.append(limit.zone.encode() + b":" + key)
                limits.append((1_000_000_000 // state.rate, limit.burst))
        if not keyed:
            return bool(route.conns) and self.limit_conn(exchange, route)
        task = self.loop.create_task(shared.check(keys, limits))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(
            lambda done: self._shared_answer(done, shared, route, exchange, body, keyed)
        )
        return True

    def _shared_answer(
        self,
        done: asyncio.Task[list[int]],
        shared: SharedCounters,
        route: RouteLimits,
        exchange: Exchange,
        body: BodyBuffer | BodyStream | None,
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
            delay = self._limit_req(exchange, route)  # this host's own count meanwhile
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
            self.loop.call_later(delay / 1000, self._go_on, route, exchange, body)
            return
        self._go_on(route, exchange, body)

    def _go_on(
        self, route: RouteLimits, exchange: Exchange, body: BodyBuffer | BodyStream | None
    ) -> None:
        """A delayed request's turn: limit_conn, then the rest of the chain."""
        if exchange.closed:
            return
        if route.conns and self.limit_conn(exchange, route):
            return
        for handler in self.rest_of_chain(route, exchange):
            if handler.handle(exchange, body):
                return
        exchange.error(404)

    def _limit_req(self, exchange: Exchange, route: RouteLimits) -> int:
        """nginx's limit_req handler: -1 refused (answered), else the delay in ms."""
        now = request_ms(exchange)
        head, remote_addr, server_name = exchange.head, exchange.remote_addr, route.server_name
        rc = -1  # nginx's NGX_DECLINED: no limit had a key
        excess = 0
        checked: list[tuple[LimitReq, LimitReqState, bytes]] = []
        last = len(route.limited) - 1
        for n, (limit, state) in enumerate(route.limited):
            key = state.key.digest_of(head, remote_addr, server_name)
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

    def refuse_or_delay(
        self,
        route: RouteLimits,
        exchange: Exchange,
        body: BodyBuffer | BodyStream | None,
        excess: int,
    ) -> bool:
        """A route's only limit_req counted ``excess`` (thousandths) past what it lets
        through at once: the request is refused, or delayed, or (a dry run) goes on."""
        limit, state = route.limited[0]
        if excess > route.burst:
            delay = self._refuse(exchange, limit, state, excess)
        else:
            wait = (excess - _allowed(limit)) * 1000 // state.rate
            delay = self._delay(exchange, limit, state, wait)
        if delay < 0:
            return True
        if delay > 0:
            self.loop.call_later(delay / 1000, self._go_on, route, exchange, body)
            return True
        return bool(route.conns) and self.limit_conn(exchange, route)

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

    def limit_conn(self, exchange: Exchange, route: RouteLimits) -> bool:
        """nginx's limit_conn handler for ``route``'s limits: True when refused (answered)."""
        zones = self.zones.conn
        held: list[tuple[LimitConnState, bytes]] = []
        for limit in route.conns:
            state = zones[limit.zone]
            key = state.key.digest_of(exchange.head, exchange.remote_addr, route.server_name)
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


class RouteLimits(Handler):
    """The limits of one route (a location, or a server where no location matched), with
    what they need worked out once: each limit_req with its zone, the server name keys
    may use, and for the usual route (one limit_req, counted on this host) its burst
    and the excess it lets through at once, in nginx's thousandths. That route's
    passing requests take the short path of ``handle``: the key (remembered per
    address), one locked read and write of the zone's entry, no allocation."""

    def __init__(
        self,
        limits: LimitHandler,
        reqs: tuple[LimitReq, ...],
        conns: tuple[LimitConn, ...],
        server_name: str,
    ) -> None:
        self.limits = limits
        self.reqs = reqs
        self.conns = conns
        self.server_name = server_name
        #: (limit, its zone) for each limit_req, in order
        self.limited = tuple((limit, limits.zones.req[limit.zone]) for limit in reqs)
        #: the zone of the route's only limit_req (None: none, or several)
        self.one: LimitReqState | None = self.limited[0][1] if len(reqs) == 1 else None
        self.burst = reqs[0].burst * 1000 if reqs else 0
        #: the excess up to which a request passes at once, neither refused nor delayed
        self.passing = min(self.burst, _allowed(reqs[0])) if reqs else 0

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        state = self.one
        if state is None or self.limits.shared is not None:
            return self.limits.run(self, exchange, body)
        key = state.key
        if key.by_address:  # the usual key: its request need not be read
            keyed = key.of_address(exchange.remote_addr)
        else:
            keyed = key.keyed(exchange.head, exchange.remote_addr, self.server_name)
        if keyed.digest:  # (an empty key is not limited)
            # with the C helper, its own clock read costs less than the request's start
            # read through the exchange (the same clock, microseconds later)
            now = NOW if state.bucket_check is not None else request_ms(exchange)
            excess = state.check(keyed, self.burst, now)
            if excess > self.passing:
                return self.limits.refuse_or_delay(self, exchange, body, excess)
            exchange.limit_status = "PASSED"
        conns = self.conns
        return bool(conns) and self.limits.limit_conn(exchange, self)


def request_ms(exchange: Exchange) -> int:
    """When ``exchange`` began, on the monotonic clock in ms (as ``now_ms``, the same in
    every worker): the time its limits count it at in Python. nginx counts a request at
    the time its loop last read the clock, not at a clock read of its own; the request's
    start (taken anyway, for the log) is that, and costs no clock call. (The C helper
    of a remembered key reads the clock itself: a vDSO call there costs less than this
    read through the exchange.)"""
    return int(exchange.started * 1000.0)


def _allowed(limit: LimitReq) -> int:
    """The excess (thousandths) up to which ``limit`` lets a request through at once."""
    return _NO_DELAY if limit.nodelay else limit.delay * 1000


def _delay_of(limit: LimitReq, excess: int, rate: int) -> int:
    """Milliseconds a request with ``excess`` waits under ``limit`` (0: none)."""
    allowed = _allowed(limit)
    if excess <= allowed:
        return 0
    return (excess - allowed) * 1000 // rate


def _releaser(state: LimitConnState, key: bytes) -> Callable[[], None]:
    return lambda: state.release(key)
