"""What one front worker's connections share: routes, pools, caches, the handler chain,
the clock, and the sweep that times out silent clients and upstreams."""

from __future__ import annotations

import asyncio

# The loop's default executor (the cache sweep, getaddrinfo) imports this on first use: it
# is imported here, with everything a worker may need, while the process may still read
# Python's library (a worker switches to its user before it serves; see front.run).
import concurrent.futures.thread  # noqa: F401
import logging
import os
import time
from typing import TYPE_CHECKING, Final, Protocol

from gantry.config.front_model import FrontConfig, Location, VirtualServer
from gantry.front.access_log import AccessLog
from gantry.front.balancing import UpstreamPool
from gantry.front.blocklist import POLL_EVERY, BlocklistHandler, WatchedBlocklist
from gantry.front.cache.handler import CacheHandler
from gantry.front.exchange import Exchange, Handler
from gantry.front.files import StaticHandler
from gantry.front.handlers import AccessHandler, CompressHandler, ProxyHandler
from gantry.front.health import run_health_checks
from gantry.front.keepalive import KeepAlivePool
from gantry.front.limits.autoban import Autoban
from gantry.front.limits.handler import BanHandler, LimitHandler
from gantry.front.limits.state import FrontLimits
from gantry.front.real_ip import RealAddressHandler, TrustedPeers
from gantry.front.responses import ErrorPages
from gantry.front.rewrite import RewriteHandler
from gantry.front.routing import Router, normalize_path
from gantry.http.head import HeadDefaults
from gantry.process.shared import SlotView, store_memory
from gantry.protocol.http1 import FieldBlockMemo, HTTPLimits

if TYPE_CHECKING:
    # Redis's client costs a process 12 MB: imported by the fronts that share through it
    # alone (front.run imports it, before a worker switches to its user)
    from gantry.front.limits.shared_redis import RedisShare

__all__ = ["AcceptSwitch", "ClientConnection", "FrontCounters", "FrontWorker", "Route"]

log: Final = logging.getLogger("gantry.front")

# Routes remembered per worker (cleared when full).
ROUTE_CACHE: Final = 4096

#: (normalized path, server, location, the handlers that apply there) of a request
Route = tuple[str, VirtualServer, Location | None, tuple[Handler, ...]]


class ClientConnection(Protocol):
    """What the worker's sweep and its graceful stop need of a client connection."""

    #: loop time past which check_deadline acts (0: none)
    deadline: float

    def check_deadline(self, now: float) -> None:
        """Act on a deadline that has passed."""

    def close_if_idle(self, now: float, quiet_for: float) -> None:
        """Close the connection if no request is on it or on its way."""

    def close(self) -> None:
        """Close the connection now."""


class AcceptSwitch(Protocol):
    """A worker's listeners, as a worker at its worker_connections ceiling stops and
    restarts accepting on them (front.run's, when other workers share them)."""

    def pause(self) -> None:
        """Stop accepting (the listen queue stays open to the other workers)."""

    def resume(self) -> None:
        """Accept again."""

    def clients_waiting(self) -> bool:
        """Whether clients wait in a listen queue (True when it cannot be known)."""


class FrontCounters:
    """A front worker's running totals in plain ints, copied into its slot once a second
    (so the request path never touches shared memory). Compiled, each request's update is
    a native attribute write, where the plain dataclass it replaced took generic attribute
    lookups (with the clock bound once, a refused request went from 7.4 to 7.0 us
    in-process)."""

    def __init__(self) -> None:
        self.requests = 0
        self.exceptions = 0
        self.tx = 0
        #: responses by status class: index 2 for 2xx ... 5 for 5xx
        self.status_counts = [0] * 6
        self.rt_total = 0.0  # seconds
        #: WebSocket tunnels and HTTP/2 connections open now; HTTP/2 streams answered
        self.websockets = 0
        self.http2_connections = 0
        self.http2_streams = 0

    def store(self, slot: SlotView) -> None:
        """Copy the totals into ``slot``."""
        slot.store_counters(
            self.requests,
            self.exceptions,
            self.tx,
            self.status_counts,
            self.rt_total,
            self.websockets,
            self.http2_connections,
            self.http2_streams,
        )


class FrontWorker:
    """What one front worker's connections share: routes, pools, caches, the clock."""

    def __init__(
        self,
        config: FrontConfig,
        loop: asyncio.AbstractEventLoop,
        defences: FrontLimits | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.router = Router(config.servers)
        #: per listener: its router and its remembered routes (the same objects for
        #: listeners every server answers on, which is all of them without `listen`)
        self.routers: list[Router] = []
        self.route_maps: list[dict[tuple[str | None, bytes], Route]] = []
        shared: dict[tuple[int, ...], tuple[Router, dict[tuple[str | None, bytes], Route]]] = {}
        for index in range(max(1, len(config.listeners))):
            servers = [s for s in config.servers if not s.listen or index in s.listen]
            key = tuple(id(s) for s in servers)
            if key not in shared:
                if len(servers) == len(config.servers):
                    shared[key] = (self.router, {})
                else:
                    shared[key] = (Router(servers), {})
            router, routes = shared[key]
            self.routers.append(router)
            self.route_maps.append(routes)
        self.pools = {name: UpstreamPool(upstream) for name, upstream in config.upstreams.items()}
        self.keepalive = KeepAlivePool(loop)
        #: this worker's shared-memory slot under a master (gantry top, stats, metrics)
        self.slot: SlotView | None = None
        self.counters = FrontCounters()
        #: (Host, raw path) -> route: routing is a pure function of the two and of the
        #: configuration, which never changes in a worker
        self.routes: dict[tuple[str | None, bytes], Route] = self.route_maps[0]
        self.static = StaticHandler()
        self.defaults = HeadDefaults()
        self.limits = HTTPLimits(max_body_size=config.client_max_body_size)
        #: the fast path's last field block and request line, shared by the connections'
        #: parsers
        self.field_memo = FieldBlockMemo()
        #: listener index -> its port (SERVER_PORT, $server_port), as its first
        #: connection found it: the same for all the others
        self.listener_ports: dict[int, str] = {}
        self.error_pages = ErrorPages(config.error_pages)
        self.connections: set[ClientConnection] = set()
        self.access_log = (
            AccessLog(config.access_log, config.access_log_format) if config.access_log else None
        )
        #: tasks this worker runs (proxy attempt loops, file streams, health probes), kept
        #: referenced until done: the loop holds them only weakly
        self.tasks: set[asyncio.Task[None]] = set()
        self.cache: CacheHandler | None = None
        if config.caches:  # only then: a front without a cache zone pays nothing for it
            self.cache = CacheHandler(
                config.caches, config.upstreams, self.pools, self.keepalive, self.tasks
            )
        #: limit zones, bans and autoban counts shared with the other workers (made by
        #: the master before forking; by this worker when it is alone)
        self.defences = defences
        self.autoban: Autoban | None = None
        self.limit_handler: LimitHandler | None = None
        #: the link to the Redis of [front.shared] (made by start_shared)
        self.redis: RedisShare | None = None
        defence_handlers: tuple[Handler, ...] = ()
        ban_handlers: tuple[Handler, ...] = ()
        if defences is None and FrontLimits.wanted(config):
            self.defences = defences = FrontLimits(config)
        if defences is not None:
            self.autoban = defences.autoban
            if defences.bans is not None and (config.autoban or config.ban_file or config.shared):
                # with the blocklist, before access (nginx's order is access then limits;
                # a ban is the blocklist's kind of refusal). Bans come from autoban, the
                # bans file (and `gantry ctl block`, which needs it) and Redis: without
                # them the table holds the blocklist's counters only, and no request asks.
                ban_handlers += (BanHandler(defences.bans),)
            self.limit_handler = LimitHandler(
                defences.zones, loop, self._rest_of_chain, defences.autoban
            )
            defence_handlers += (self.limit_handler,)
        # The client's address: whom to believe ([front.real_ip]), and the blocklist.
        real_ip = config.real_ip
        self.trusted_peers = TrustedPeers(real_ip) if real_ip.header else None
        self.real_ip_from_proxy_protocol = real_ip.header == "proxy_protocol"
        first: list[Handler] = []
        if self.trusted_peers is not None and not self.real_ip_from_proxy_protocol:
            first.append(RealAddressHandler(real_ip, self.trusted_peers))
        blocklist = config.blocklist
        counters = defences.bans if defences is not None else None
        self.blocklist = (
            WatchedBlocklist(blocklist, counters) if blocklist.files or blocklist.state else None
        )
        #: the blocklist's 403 (status line and fields, CRLF-ended; body), made once
        self.blocked_response = (b"", b"")
        if self.blocklist is not None:
            refusal = BlocklistHandler(self.blocklist, self.error_pages.page(403))
            self.blocked_response = (refusal.head, refusal.body)
            first.append(refusal)
        self._blocklist_poll: asyncio.TimerHandle | None = None
        # Slow and greedy clients.
        self.header_min_rate = config.client_header_min_rate
        self.body_min_rate = config.client_body_min_rate
        self.min_rate_grace = config.client_min_rate_grace
        self.keepalive_requests = config.keepalive_requests
        self.worker_connections = config.worker_connections
        #: this near its ceiling, a worker leaves new clients to the others (when they share
        #: its listeners): the loop accepts every client waiting at once, so one that
        #: stopped only when full took a burst past it and closed the rest
        self.accept_limit = config.worker_connections - config.worker_connections // 64
        self.max_per_address = config.max_connections_per_address
        #: open connections by client address (max_connections_per_address)
        self.per_address: dict[str, int] = {}
        self._refusals_logged = 0.0
        self._refusals = 0
        #: set when other workers share this one's listeners (see ceiling_reached)
        self.accept_switch: AcceptSwitch | None = None
        #: loop time the listeners were paused at (0: accepting)
        self.accept_paused_at = 0.0
        #: clients were waiting in the listen queue at the last tick (see _resume_accepting)
        self._queue_seen_waiting = False
        rewrite = RewriteHandler(self.router, self.chain_for)
        #: every handler, in the phase order of DESIGN.md (real address, blocklist, bans,
        #: access, limits, rewrites and return, cache, then content); a route runs those
        #: that apply to it (see chain_for)
        self.handlers: tuple[Handler, ...] = (
            *first,
            *ban_handlers,
            AccessHandler(),
            *defence_handlers,
            rewrite,
            CompressHandler(),  # a response filter: installed before the content handlers
            *((self.cache,) if self.cache is not None else ()),
            ProxyHandler(config.upstreams, self.pools, self.keepalive, self.tasks),
            self.static,
        )
        rewrite.later = frozenset(self.handlers[self.handlers.index(rewrite) + 1 :])
        self.static.redirect = rewrite.internal_redirect
        self._chains: dict[tuple[int, int], tuple[Handler, ...]] = {}
        self._tick: asyncio.TimerHandle | None = None
        self._sweep: asyncio.TimerHandle | None = None
        # Deadlines are checked this often (finer for short timeouts).
        client = (
            config.client_header_timeout,
            config.client_body_timeout,
            config.keepalive_timeout,
            config.send_timeout,
            config.websocket_idle_timeout,
            config.http2_idle_timeout,
        )
        reads = [u.read_timeout for u in config.upstreams.values()]
        self.sweep_every = min([1.0, *[t / 4 for t in (*reads, *client)]])
        # the client timeouts, read per request (here, not on each connection)
        self.header_timeout = config.client_header_timeout
        self.body_timeout = config.client_body_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.send_timeout = config.send_timeout
        self.websocket_idle_timeout = config.websocket_idle_timeout
        self.now = loop.time()
        #: set on a graceful stop: every response then says Connection: close
        self.stopping = False

    def route(self, host: str | None, raw_path: bytes, listener: int = 0) -> Route | None:
        """(normalized path, server, location, handlers) of a request on ``listener``;
        None for a path to refuse. Routing is a pure function of the listener, Host, the
        raw path and the configuration (which never changes in a worker), so it is
        remembered."""
        routes = self.route_maps[listener]
        route = routes.get((host, raw_path))
        if route is None:
            path = normalize_path(raw_path)
            if path is None:
                return None
            router = self.routers[listener]
            server = router.server_for(host)
            location = router.location_for(server, path)
            route = (path, server, location, self.chain_for(server, location))
            if len(routes) >= ROUTE_CACHE:
                routes.clear()
            routes[(host, raw_path)] = route
        return route

    def chain_for(self, server: VirtualServer, location: Location | None) -> tuple[Handler, ...]:
        """The handlers that apply to requests routed to ``location`` of ``server``."""
        key = (id(server), id(location))
        chain = self._chains.get(key)
        if chain is None:
            chain = tuple(
                h.for_route(server, location) for h in self.handlers if h.applies(server, location)
            )
            self._chains[key] = chain  # bounded: one per location of the configuration
        return chain

    def _rest_of_chain(self, handler: Handler, exchange: Exchange) -> tuple[Handler, ...]:
        """The handlers after ``handler`` on ``exchange``'s route (after a delay)."""
        chain = self.chain_for(exchange.server, exchange.location)
        return chain[chain.index(handler) + 1 :] if handler in chain else ()

    def start_shared(self) -> None:
        """With [front.shared] redis: limit counters through it, bans to and from it."""
        shared = self.config.shared
        defences = self.defences
        if shared is None or defences is None or defences.bans is None:
            return
        from gantry.front.limits.shared_redis import RedisShare

        bans = defences.bans

        def on_ban(addr: str, until: float) -> None:
            if until <= 0:  # lifted by `gantry ctl unblock` on some front
                bans.remove(addr)
            else:
                bans.add(addr, int(until * 1000))

        self.redis = RedisShare(shared, self.loop, on_ban)
        if self.limit_handler is not None:
            self.limit_handler.shared = self.redis
        if defences.banner is not None:
            defences.banner.on_ban = self.redis.publish_ban
        self.redis.start()

    def refuse_connection(self, why: str, address: str = "") -> None:
        """A new connection closed at once (a ceiling reached): said at most once a second
        (with how many since), so a flood does not flood the log too."""
        self._refusals += 1
        now = self.loop.time()
        if now - self._refusals_logged >= 1.0:
            self._refusals_logged = now
            who = f" ({address})" if address else ""
            log.warning("connection refused: %s reached%s; %d so far", why, who, self._refusals)

    def ceiling_reached(self) -> None:
        """This worker holds accept_limit connections or more now. With other workers on
        its listeners it stops accepting for a while, so that the kernel hands new
        clients to them: it took them and closed them while the others had room (nginx's
        workers share clients out by EPOLLEXCLUSIVE, which the event loop does not use)."""
        switch = self.accept_switch
        if switch is not None and not self.accept_paused_at:
            self.accept_paused_at = self.loop.time()
            switch.pause()

    def _resume_accepting(self) -> None:
        """Accept again once below accept_limit, or, still above it, when clients have
        waited in the listen queue at two ticks in a row: a worker with room would have
        taken them, so every worker is (nearly) full, and they are taken or refused
        (within two seconds) instead of waiting on. One look is not enough: a busy worker
        with room may not have reached its accept yet (seen under load: this one took
        clients past its margin while the other had room)."""
        switch = self.accept_switch
        if switch is None:
            return
        if len(self.connections) < self.accept_limit:
            resume = True
        elif switch.clients_waiting():
            resume = self._queue_seen_waiting
            self._queue_seen_waiting = True
        else:
            resume = self._queue_seen_waiting = False
        if resume:
            self._queue_seen_waiting = False
            self.accept_paused_at = 0.0
            switch.resume()

    def _poll_blocklist(self) -> None:
        blocklist = self.blocklist
        if blocklist is None:
            return
        try:
            blocklist.poll()
        except Exception:  # a bad file must not stop the watching
            log.exception("blocklist: reloading failed")
        blocklist.share_counts()
        self._blocklist_poll = self.loop.call_later(POLL_EVERY, self._poll_blocklist)

    def start_health_checks(self) -> None:
        """One prober task per upstream that asks for active health checks."""
        for name, upstream in self.config.upstreams.items():
            if upstream.health_check is not None:
                task = self.loop.create_task(
                    run_health_checks(self.loop, upstream, self.pools[name])
                )
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def start_clock(self) -> None:
        """Refresh ``Date`` and the clock once a second; sweep deadlines."""
        self.defaults.refresh(time.time())
        self.now = self.loop.time()
        self.static.now = self.now
        self.static.date_second = self.defaults.second
        self._tick = self.loop.call_later(1.0, self.start_clock)
        if self.slot is not None:
            self.counters.store(self.slot)
            store_memory(self.slot)
        if self._sweep is None:
            self._sweep_deadlines()
        if self.accept_paused_at:
            self._resume_accepting()
        if self.blocklist is not None:
            if self._blocklist_poll is None:
                self._blocklist_poll = self.loop.call_later(POLL_EVERY, self._poll_blocklist)
            self.blocklist.report(str(os.getpid()))

    def _sweep_deadlines(self) -> None:
        now = self.now = self.loop.time()
        self.keepalive.sweep()
        for conn in [c for c in self.connections if c.deadline and now >= c.deadline]:
            conn.check_deadline(now)
        self._sweep = self.loop.call_later(self.sweep_every, self._sweep_deadlines)

    def close(self) -> None:
        """Release pooled connections, cached files, timers and tasks."""
        if self._tick is not None:
            self._tick.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
        if self._blocklist_poll is not None:
            self._blocklist_poll.cancel()
        if self.blocklist is not None:
            self.blocklist.share_counts()
        for task in list(self.tasks):
            task.cancel()
        if self.redis is not None:
            self.redis.close()
        self.keepalive.close()
        self.static.close()
        if self.cache is not None:
            self.cache.close()
        if self.access_log is not None:
            self.access_log.close()
