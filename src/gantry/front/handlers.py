"""The request handlers of the front, in nginx's phase order, behind one interface.

A request goes through the worker's chain: access (and, later, limits, redirects,
cache), then the content handlers (static | proxy). Each handler sees the request
through an :class:`~gantry.front.exchange.Exchange` and either answers it (returns
True) or lets the next handler have it (False). A new feature is a new handler in
the chain, not a branch in the connection; an HTTP/2 stream drives the same chain.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from typing import Final, cast

from gantry.config.front_model import Location, Upstream, VirtualServer
from gantry.front.balancing import UpstreamPool
from gantry.front.compress import ResponseCoder, choose_coding
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.files import StaticHandler
from gantry.front.headers import proxy_fields
from gantry.front.keepalive import KeepAlivePool
from gantry.front.proxy import ProxyRequest, RequestBody, StreamedBody, spawn
from gantry.front.routing import client_allowed
from gantry.front.static import resolve, try_files
from gantry.front.websocket import (
    TunnelClient,
    WebSocketTunnel,
    handshake_error,
    is_websocket,
    upgrade_head,
)
from gantry.http.body import BodyBuffer

__all__ = [
    "AccessHandler",
    "CompressHandler",
    "Handler",
    "ProxyHandler",
    "fastcgi_script",
    "StaticHandler",
    "run_chain",
]

# Buffered request bodies up to this size go to the upstream with the head in one write.
SMALL_BODY: Final = 256 * 1024


class AccessHandler(Handler):
    """allow/deny of the server, then of the location (403).

    The server's rules apply even where no location matches, as nginx's do (the
    server's return may still answer such a request; else it is a 404).
    """

    rechecks_rewritten = True

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return bool(server.access) or (location is not None and bool(location.access))

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        server = exchange.server
        if server.access and not client_allowed(server.access, exchange.remote_addr):
            exchange.error(403)
            return True
        location = exchange.location
        if location is None:
            return False
        if location.access and not client_allowed(location.access, exchange.remote_addr):
            exchange.error(403)
            return True
        return False


class CompressHandler(Handler):
    """gzip = true: the request's response goes through a coder (see front.compress),
    which compresses it in the coding the client's Accept-Encoding takes best, and adds
    Vary to every variant (the identity one too, as nginx: a shared cache must not give
    it to a client that takes gzip). It answers nothing itself; a location without
    compression never runs it."""

    def __init__(self) -> None:
        #: id(compression) -> the stateless coder of requests that take no coding
        self.plain: dict[int, ResponseCoder] = {}

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        compression = location.compression if location is not None else server.compression
        return compression is not None

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        location = exchange.location
        compression = location.compression if location is not None else exchange.server.compression
        head = exchange.head
        if compression is None or head.method == "HEAD":
            return False
        coding = None
        for name, value in head.headers:
            if name.lower() == b"accept-encoding":
                coding = choose_coding(value, compression.codings)
                break
        if coding is not None:
            exchange.coder = ResponseCoder(compression, coding)
        else:
            # keeps no state (it only adds Vary): one per configuration is enough
            coder = self.plain.get(id(compression))
            if coder is None:
                coder = self.plain[id(compression)] = ResponseCoder(compression, None)
            exchange.coder = coder
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
        #: location's proxy name -> (its upstream, its pool)
        self.targets = {name: (upstreams[name], pools[name]) for name in upstreams}
        self.keepalive = keepalive
        #: the worker's running tasks, kept referenced until done
        self.tasks = tasks

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return location is not None and bool(location.proxy)

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        location = exchange.location
        if location is None or not location.proxy:
            return False
        target = self.targets.get(location.proxy)
        if target is None:
            exchange.error(502)
            return True
        upstream, pool = target
        head = exchange.head
        if head.upgrade and is_websocket(head):
            self._websocket(exchange, location, upstream, pool)
            return True
        script = ""
        path_info = ""
        if pool.protocol == "fastcgi":  # the upstream's, as a compiled field
            found = fastcgi_script(exchange, location)
            if found is None:
                return True  # answered: no such script
            script, path_info = found
        data: RequestBody = b""
        if body is None:
            pass  # the usual (a GET): no isinstance of a plain class to pay for
        elif isinstance(body, BodyBuffer):
            if body.size <= SMALL_BODY:
                data = body.to_input().read()  # with the head in one write
                body.discard()
            else:
                data = body  # spooled: sent in pieces, and again on a retry
        elif isinstance(body, StreamedBody):  # the connection makes no other kind
            data = body
        proxy = ProxyRequest(
            exchange, head, data, upstream, pool, location, self.keepalive, self.tasks
        )
        if location.proxy_set_header:
            proxy.set_fields = proxy_fields(exchange)
        if script:
            proxy.fastcgi_script = script
            proxy.fastcgi_path_info = path_info
            proxy.original = exchange.original
            proxy.ports = exchange.ports
        exchange.relay = proxy
        proxy.start()
        return True

    def _websocket(
        self, exchange: Exchange, location: Location, upstream: Upstream, pool: UpstreamPool
    ) -> None:
        """A WebSocket upgrade: checked, then tunnelled to a server of an HTTP upstream."""
        # the parser reads no HTTP after an upgrade request: whatever the answer, it is
        # the connection's last
        exchange.keep_alive = False
        if not location.websocket:
            exchange.log_error("WebSocket upgrade refused: websocket = false")
            exchange.error(403, close=True)
            return
        problem = handshake_error(exchange.head)
        if problem is not None:
            exchange.fail(400, problem[0], problem[1] or None)
            return
        if upstream.protocol in ("uwsgi", "fastcgi") or not hasattr(exchange, "open_tunnel"):
            # uwsgi upstreams would need uWSGI's own websocket API in the app, FastCGI has
            # no upgrade at all: not carried
            exchange.fail(
                502, f"WebSocket upgrade to {upstream.protocol} upstream {upstream.name!r}"
            )
            return
        peer = pool.pick(exchange.remote_addr, "", ())
        if peer is None:
            exchange.fail(502, f"no live server in upstream {upstream.name!r}")
            return
        client = cast(TunnelClient, exchange)
        fields = proxy_fields(exchange) if location.proxy_set_header else None
        request = upgrade_head(
            exchange.head, exchange.remote_addr, location.script_name or "", fields,
            exchange.https,
        )  # fmt: skip
        tls = pool.tls[peer.server.address] if pool.tls is not None else None
        pool.started(peer)
        tunnel = WebSocketTunnel(
            client, request, peer.server.address, upstream, tls, lambda ok: pool.finished(peer, ok)
        )
        exchange.relay = tunnel
        spawn(self.tasks, tunnel.open())


def fastcgi_script(exchange: Exchange, location: Location) -> tuple[str, str] | None:
    """The URL path of the script a FastCGI location runs for ``exchange`` (its file is
    root + it) and its PATH_INFO, or None when the request was answered instead (404,
    or try_files' status). fastcgi_split_path_info's groups split the path into the
    two (without it, or when it does not match, the path is the script). The script
    must be a regular file (try_files checks it; without try_files it is checked here,
    so php-fpm is never asked for a file that is not there) whose path matches a regex
    location's own pattern: ``/uploads/a.jpg/x.php`` never runs ``a.jpg`` (the classic
    nginx + PHP hole), whatever the split."""
    path = exchange.path
    script, path_info = path, ""
    checked = False
    split = location.fastcgi_split_path_info
    if split is not None:
        parts = split.search(path)
        if parts is not None:
            script, path_info = parts.group(1) or "", parts.group(2) or ""
    if location.try_files:
        fs_path, uri, status = try_files(location, path, script)
        if status is not None:
            exchange.error(status)
            return None
        if uri != script:
            path_info = ""  # another candidate ($uri, the front controller) runs as it is
        # with "=CODE" last, the file is a candidate's, which try_files found regular
        # (a candidate ending in "/" is a directory: stat'ed below, and refused)
        checked = location.try_files[-1].startswith("=") and not uri.endswith("/")
    else:
        fs_path, uri = resolve(location, location.path, script), script
    if location.modifier in ("~", "~*"):
        flags = re.IGNORECASE if location.modifier == "~*" else 0
        # the router compiled it already: re's own cache makes this a lookup
        if re.search(location.path, uri, flags) is None:
            fs_path = None
    if fs_path is not None and not checked:
        try:
            if not stat.S_ISREG(os.stat(fs_path).st_mode):
                fs_path = None
        except (OSError, ValueError):
            fs_path = None
    if fs_path is None:
        exchange.error(404)
        return None
    return uri, path_info


def run_chain(
    chain: tuple[Handler, ...], exchange: Exchange, body: BodyBuffer | BodyStream | None
) -> None:
    """Run ``exchange`` through ``chain`` (the handlers that apply to its route); a request
    no handler takes is a 404."""
    for handler in chain:
        if handler.handle(exchange, body):
            return
    exchange.error(404)
