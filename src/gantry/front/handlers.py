"""The request handlers of the front, in nginx's phase order, behind one interface.

A request goes through the worker's chain: access (and, later, limits, redirects,
cache), then the content handlers (static | proxy). Each handler sees the request
through an :class:`~gantry.front.exchange.Exchange` and either answers it (returns
True) or lets the next handler have it (False). A new feature is a new handler in
the chain, not a branch in the connection; an HTTP/2 stream drives the same chain.
"""

from __future__ import annotations

import asyncio
from typing import Final

from gantry.config.front_model import Location, Upstream, VirtualServer
from gantry.front.balancing import UpstreamPool
from gantry.front.exchange import Exchange
from gantry.front.files import StaticFiles
from gantry.front.proxy import KeepAlivePool, ProxyRequest, RequestBody, StreamedBody
from gantry.front.routing import client_allowed
from gantry.http.body import BodyBuffer

__all__ = ["AccessHandler", "Handler", "ProxyHandler", "StaticHandler", "run_chain"]

# Buffered request bodies up to this size go to the upstream with the head in one write.
SMALL_BODY: Final = 256 * 1024


class Handler:
    """One step of the chain."""

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        """Whether this handler has anything to do for requests routed to ``location`` of
        ``server``: decided once per route, so a request runs only the handlers that apply
        (as nginx registers a module's handler only where it is configured)."""
        return True

    def handle(self, exchange: Exchange, body: BodyBuffer | StreamedBody | None) -> bool:
        """Answer the request (True), or leave it to the next handler (False)."""
        return False


class AccessHandler(Handler):
    """allow/deny of the server, then of the location (403); no location is a 404.

    The server's rules apply even where no location matches, as nginx's do.
    """

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return bool(server.access) or (location is not None and bool(location.access))

    def handle(self, exchange: Exchange, body: BodyBuffer | StreamedBody | None) -> bool:
        server = exchange.server
        if server.access and not client_allowed(server.access, exchange.remote_addr):
            exchange.error(403)
            return True
        location = exchange.location
        if location is None:
            exchange.error(404)
            return True
        if location.access and not client_allowed(location.access, exchange.remote_addr):
            exchange.error(403)
            return True
        return False


class ProxyHandler(Handler):
    """A location with ``proxy``: the request goes to the upstream pool."""

    def __init__(
        self,
        upstreams: dict[str, Upstream],
        pools: dict[str, UpstreamPool],
        keepalive: KeepAlivePool,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.upstreams = upstreams
        self.pools = pools
        self.keepalive = keepalive
        #: the worker's running tasks, kept referenced until done
        self.tasks = tasks

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return location is not None and bool(location.proxy)

    def handle(self, exchange: Exchange, body: BodyBuffer | StreamedBody | None) -> bool:
        location = exchange.location
        if location is None or not location.proxy:
            return False
        upstream = self.upstreams.get(location.proxy)
        pool = self.pools.get(location.proxy)
        if upstream is None or pool is None:
            exchange.error(502)
            return True
        data: RequestBody = b""
        if isinstance(body, StreamedBody):
            data = body
        elif body is not None and body.size <= SMALL_BODY:
            data = body.to_input().read()  # with the head in one write
            body.discard()
        elif body is not None:
            data = body  # spooled: sent in pieces, and again on a retry
        proxy = ProxyRequest(
            exchange, exchange.head, data, upstream, pool, location, self.keepalive, self.tasks
        )
        exchange.relay = proxy
        proxy.start()
        return True


class StaticHandler(Handler):
    """A location with ``root`` or ``alias``: a file from disk."""

    def __init__(self, files: StaticFiles) -> None:
        self.files = files

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return location is not None and bool(location.root or location.alias)

    def handle(self, exchange: Exchange, body: BodyBuffer | StreamedBody | None) -> bool:
        location = exchange.location
        if location is None or not (location.root or location.alias):
            return False
        self.files.serve(exchange, location)
        return True


def run_chain(
    chain: tuple[Handler, ...], exchange: Exchange, body: BodyBuffer | StreamedBody | None
) -> None:
    """Run ``exchange`` through ``chain`` (the handlers that apply to its route); a request
    no handler takes is a 404."""
    for handler in chain:
        if handler.handle(exchange, body):
            return
    exchange.error(404)
