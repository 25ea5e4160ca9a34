"""What a request handler talks to: one request and the way its answer goes back.

An HTTP/1 connection is one today (front.connection); an HTTP/2 stream will be
another. Handlers see only this interface, never the transport under it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mypy_extensions import mypyc_attr

from gantry.config.front_model import Location, VirtualServer
from gantry.front.compress import ResponseCoder
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import RequestHead

__all__ = ["BodyStream", "Exchange", "FilePiece", "Handler", "ProxyClient", "Relay"]

#: a piece of a file response: bytes to send as they are, or an inclusive (start, end)
#: span of the file
FilePiece = bytes | tuple[int, int]


class BodyStream(Protocol):
    """A request body still arriving as the request is handled (request_buffering =
    false): ``length`` bytes in all."""

    length: int

    def feed(self, data: bytes) -> None:
        """A piece of the body from the client."""

    def finish(self) -> None:
        """The client sent the last byte."""


class Relay(Protocol):
    """A response being relayed from elsewhere (the proxy): the client side tells it when
    to hold and when to go on, and when the client went away."""

    def pause(self) -> None:
        """The client is not taking the response: stop reading its source."""

    def resume(self) -> None:
        """The client drained: read the source again."""

    def abandon(self) -> None:
        """The client went away: drop the source."""


class ProxyClient(Protocol):
    """What a proxied request needs from the client side it answers."""

    remote_addr: str
    #: the client came through TLS ($scheme https)
    https: bool
    #: the client went away: nothing more can be sent
    closed: bool
    #: the client is not taking the response fast enough (its output is above the mark)
    paused: bool
    #: (address, seconds) of each upstream attempt, for the access log (None: not kept)
    upstream_log: list[tuple[str, float]] | None

    def request_path(self, head: RequestHead) -> str:
        """The normalized path of ``head``."""

    def fixed_vars(self) -> bytes:
        """The uwsgi vars that are the same for each request of this client."""

    def gantry_vars(self) -> bytes:
        """The same, for gantry's own packet."""

    def pause_reading(self) -> None:
        """Stop reading the request body: the upstream is behind."""

    def resume_reading(self) -> None:
        """Read the request body again."""

    def start_response(
        self, status: int, reason: bytes, lines: list[bytes], has_length: bool
    ) -> None:
        """The upstream's head: ``lines`` are its fields to pass on, each ending in CRLF."""

    def respond_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response: ``head`` is its status line and fields (each ending in CRLF);
        the client side adds its own Connection, Server and Date. ``end`` follows."""

    def interim(self, status: int, reason: bytes, lines: list[bytes]) -> None:
        """An interim response (102, 103: RFC 9110 15.2) before the final one, passed on
        to a client that can take it; ``lines`` as start_response's."""

    def write(self, data: bytes) -> None:
        """A piece of the response body."""

    def end(self) -> None:
        """The response is complete."""

    def broken(self, message: str) -> None:
        """The upstream broke after the head went out: the only way to say so is to close."""

    def fail(self, status: int, message: str) -> None:
        """No upstream could answer: an error response of the front's own."""

    def log_error(self, message: str) -> None:
        """One error-log line about this request."""


class Exchange(ProxyClient, Protocol):
    """One request being answered: its head and route, and the ways to answer it.

    ``remote_addr`` is the one client address every handler, the log and the upstream
    see: the real client's behind a trusted proxy ([front.real_ip]), else the peer's."""

    #: the peer's own address (TCP, or the PROXY protocol's), whatever real_ip says
    peer_addr: str
    #: the peer is a trusted proxy ([front.real_ip] from)
    peer_trusted: bool
    head: RequestHead
    #: the normalized path
    path: str
    server: VirtualServer
    location: Location | None
    #: the connection stays open after this response
    keep_alive: bool
    #: the relay answering this request, if one does (told of back-pressure and of a
    #: client that went away)
    relay: Relay | None
    #: when the request began (time.monotonic(); the time its limits count it at)
    started: float
    #: nginx's $limit_req_status of this request: PASSED, DELAYED, REJECTED,
    #: DELAYED_DRY_RUN, REJECTED_DRY_RUN ("" when no limit_req applied)
    limit_status: str
    #: how a cached location's cache answered (nginx's $upstream_cache_status: HIT,
    #: MISS, ...), for the access log; "-" elsewhere
    cache_status: str
    #: the request as the client sent it, when a rewrite changed ``head`` ($request_uri,
    #: the access log); None: unchanged
    original: RequestHead | None
    #: (client's port, listener's port); "" for a unix socket
    ports: tuple[str, str]
    #: the compression of this request's response (gzip = true and an Accept-Encoding);
    #: None: sent as it is
    coder: ResponseCoder | None

    def reroute(self, head: RequestHead, path: str, location: Location | None) -> None:
        """The request goes on as ``head`` (a rewritten URI whose normalized path is
        ``path``) in ``location``; the client's own head stays ``original``."""

    def respond(
        self, status: int, fields: list[tuple[bytes, bytes]], body: bytes, reason: bytes = b""
    ) -> None:
        """A whole response with these fields (Connection, Server and Date are added)."""

    def respond_prepared(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response whose status line and fields (each ending in CRLF) the handler
        prepared; Connection, Server and Date are added."""

    def respond_refused(self, head: bytes, body: bytes) -> None:
        """The blocklist's refusal: respond_prepared(403, head, body), which the exchange
        may give again to the same request bytes without asking the chain (while the
        blocklist refuses the address it named)."""

    def error(self, status: int, close: bool = False) -> None:
        """An error response of the front's own (its error page), then close if ``close``."""

    def at_end(self, release: Callable[[], None]) -> None:
        """Call ``release`` once when this request ends: answered, or its client gone."""

    def drop(self) -> None:
        """No answer at all: close the connection (nginx's 444, logged with that status)."""

    def fail(
        self, status: int, message: str, fields: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """No upstream could answer: an error response of the front's own, with ``fields``
        added to it."""

    def send_file(
        self, status: int, fields: list[tuple[bytes, bytes]], fd: int, pieces: list[FilePiece]
    ) -> None:
        """A response whose body is ``pieces`` of the open file ``fd`` (not taken over: the
        caller keeps it open until this returns), sent as fast as the client reads."""


# compiled (gantry.compiled): the handlers of compiled modules are native classes, their
# handle() a direct call from run_chain; the others (rewrite, real_ip, ...) subclass it
# as plain Python
@mypyc_attr(allow_interpreted_subclasses=True)
class Handler:
    """One step of the request chain (see front.handlers): it answers a request through
    its exchange, or leaves it to the next step."""

    #: a handler before the rewrite phase that runs again for a request a rewrite sent
    #: to another location (access rules: a rewrite must not lead around a deny)
    rechecks_rewritten = False

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        """Whether this handler has anything to do for requests routed to ``location`` of
        ``server``: decided once per route, so a request runs only the handlers that apply
        (as nginx registers a module's handler only where it is configured)."""
        return True

    def for_route(self, server: VirtualServer, location: Location | None) -> Handler:
        """The handler a route's chain runs for requests routed to ``location`` of
        ``server`` (where it applies): this one, or one made for that route that holds
        what it needs worked out in advance (asked once per route, as ``applies``)."""
        return self

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        """Answer the request (True), or leave it to the next handler (False). ``body`` is
        the request body: buffered, still arriving, or none."""
        return False
