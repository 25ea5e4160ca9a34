"""nginx's rewrite phase: ``rewrite`` and ``return`` of the server, then of the location.

The server's rules run once, before the location is chosen again for the URI they
leave; a location's rules then run, and a URI they change (no flag or ``last``)
chooses the location again, at most 10 times (then 500, as nginx's "rewrite or
internal redirection cycle"). ``break`` keeps the location with its new URI. A
redirect (``redirect``, ``permanent``, or a replacement starting with http://,
https:// or $scheme) and ``return`` answer the request here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Final
from urllib.parse import quote

from gantry.config.front_model import Location, ReturnRule, RewriteRules, VirtualServer
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.handlers import run_chain
from gantry.front.responses import REASONS
from gantry.front.routing import Router
from gantry.front.static import expand_fallback
from gantry.front.variables import expand, host
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import RequestHead

__all__ = ["MAX_URI_CHANGES", "RewriteHandler", "rewritten_head"]

#: times a location's rewrites may send the request to a location again (nginx's
#: NGX_HTTP_MAX_URI_CHANGES); one more is a 500
MAX_URI_CHANGES: Final = 10
#: statuses whose return text is a URL (Location)
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
#: what a URL keeps unescaped: RFC 3986's reserved and unreserved characters and "%"
#: (escapes already there stay as they are)
_URL_SAFE: Final = "!#$%&'()*+,/:;=?@[]~"
_PATH_SAFE: Final = "!$&'()*+,/:;=@~"
#: a path quote() would leave as it is (the common case: skip it)
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9._~!$&'()*+,/:;=@-]*")


class _Step(Enum):
    DONE = 0  # the rules ran to their end
    LAST = 1  # `last`: the rules stop, the location is chosen again
    BREAK = 2  # `break`: the rules stop, the location stays
    ANSWERED = 3  # a redirect or a return answered the request


class _Request:
    """How the rules went so far: the captures of the last regex matched, and whether
    the URI changed (the exchange holds the URI itself: variables read it there)."""

    __slots__ = ("captures", "changed", "moved")

    def __init__(self) -> None:
        self.captures: tuple[str | None, ...] = ()
        #: the URI differs from the client's
        self.changed = False
        #: the URI changed in the rules just run (the location is chosen again)
        self.moved = False


def _normalize(uri: str) -> str | None:
    """A rewritten URI with "." and ".." resolved; None if it climbs above "/"."""
    if not uri.startswith("/"):
        return None
    segments: list[str] = []
    for part in uri.split("/")[1:]:
        if part in ("", "."):
            continue
        if part == "..":
            if not segments:
                return None
            segments.pop()
            continue
        segments.append(part)
    path = "/" + "/".join(segments)
    if (uri.endswith("/") or uri.endswith("/.") or uri.endswith("/..")) and path != "/":
        path += "/"
    return path


def rewritten_head(head: RequestHead, path: str, args: bytes) -> RequestHead:
    """A copy of ``head`` whose target is ``path`` (escaped) and ``args``."""
    copy = RequestHead()  # field by field: a compiled RequestHead has no __dict__
    copy.method, copy.version, copy.keep_alive = head.method, head.version, head.keep_alive
    copy.expect_continue, copy.upgrade = head.expect_continue, head.upgrade
    copy.content_length, copy.chunked, copy.authority = (
        head.content_length,
        head.chunked,
        head.authority,
    )
    if _PLAIN_PATH.fullmatch(path):
        copy.path = path.encode("ascii")
    else:
        copy.path = quote(path, safe=_PATH_SAFE, errors="surrogateescape").encode("ascii")
    copy.query = args
    copy.target = copy.path + (b"?" + args if args else b"")
    copy.headers = head.headers
    return copy


class RewriteHandler(Handler):
    """The rewrite phase of servers and locations that have ``rewrite`` or ``return``."""

    def __init__(
        self,
        router: Router,
        chain_for: Callable[[VirtualServer, Location | None], tuple[Handler, ...]],
    ) -> None:
        self.router = router
        #: the handlers of a route (the worker's), for a request sent to another location
        self.chain_for = chain_for
        #: the handlers of the phases after this one (the worker sets them)
        self.later: frozenset[Handler] = frozenset()
        #: (server, location) ids -> (its access checks, its handlers after this phase)
        self._next: dict[tuple[int, int], tuple[tuple[Handler, ...], tuple[Handler, ...]]] = {}

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return bool(server.rewrite) or (location is not None and bool(location.rewrite))

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        server = exchange.server
        request = _Request()
        if server.rewrite:
            step = self._run(server.rewrite, request, exchange)
            if step is _Step.ANSWERED:
                return True
            if request.changed:
                exchange.location = self.router.location_for(server, exchange.path)
                if self._refused(exchange, body):
                    return True
        changes = MAX_URI_CHANGES
        location = exchange.location
        while location is not None and location.rewrite:
            request.captures = _location_captures(location, exchange.path)
            request.moved = False
            step = self._run(location.rewrite, request, exchange)
            if step is _Step.ANSWERED:
                return True
            if step is _Step.BREAK or not request.moved:
                break
            if changes == 0:
                exchange.log_error(
                    f"rewrite or internal redirection cycle while processing {exchange.path!r}"
                )
                exchange.error(500)
                return True
            changes -= 1
            location = exchange.location = self.router.location_for(server, exchange.path)
            if self._refused(exchange, body):
                return True
        if not request.changed:
            return False
        run_chain(self._handlers(server, exchange.location)[1], exchange, body)
        return True

    def internal_redirect(
        self, exchange: Exchange, target: str, body: BodyBuffer | BodyStream | None
    ) -> bool:
        """try_files' last entry ``target`` (a path with $uri, $is_args, $args) when the
        location it routes to is another: the request goes on there as nginx's internal
        redirect (that location's access checks, then its handlers after the rewrite
        phase). False: the same location, which serves it itself."""
        query = exchange.head.query.decode("latin-1")
        path, args = expand_fallback(target, exchange.path, query)
        normalized = _normalize(path)
        if normalized is None:
            return False
        location = self.router.location_for(exchange.server, normalized)
        if location is exchange.location:
            return False
        if self._redirects >= MAX_URI_CHANGES:
            exchange.log_error(f"internal redirection cycle while processing {path!r}")
            exchange.error(500)
            return True
        head = rewritten_head(exchange.head, normalized, args.encode("latin-1"))
        exchange.reroute(head, normalized, location)
        # the chain runs to its end here (a proxy only starts its request): a depth
        # counter bounds a cycle of locations redirecting to each other
        self._redirects += 1
        try:
            if not self._refused(exchange, body):
                run_chain(self._handlers(exchange.server, location)[1], exchange, body)
        finally:
            self._redirects -= 1
        return True

    #: internal redirects in progress (nested: a cycle of try_files between locations)
    _redirects = 0

    def _refused(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        """The access rules of the location a rewrite sent the request to, checked before
        its own rewrites run: a rewrite must not lead around a location's deny."""
        for handler in self._handlers(exchange.server, exchange.location)[0]:
            if handler.handle(exchange, body):
                return True
        return False

    def _handlers(
        self, server: VirtualServer, location: Location | None
    ) -> tuple[tuple[Handler, ...], tuple[Handler, ...]]:
        """The access checks of a route a rewrite leads to, and its handlers after this
        phase (remembered: one entry per location of the configuration)."""
        key = (id(server), id(location))
        found = self._next.get(key)
        if found is None:
            chain = self.chain_for(server, location)
            later = self.later
            checks = tuple(h for h in chain if h.rechecks_rewritten and h not in later)
            found = (checks, tuple(h for h in chain if h in later))
            self._next[key] = found
        return found

    def _run(self, rules: RewriteRules, request: _Request, exchange: Exchange) -> _Step:
        """One block's rewrites in order, then its return."""
        for rule in rules.rewrites:
            args = exchange.head.query
            match = rule.pattern.search(exchange.path)
            if match is None:
                continue
            request.captures = (match.group(0), *match.groups())
            replaced = expand(rule.replacement, exchange, request.captures)
            if rule.absolute or rule.flag == "redirect" or rule.flag == "permanent":
                if rule.keep_args and args:
                    replaced += ("&" if "?" in replaced else "?") + args.decode(
                        "utf-8", "surrogateescape"
                    )
                status = 301 if rule.flag == "permanent" else 302
                self._redirect(exchange, status, replaced)
                return _Step.ANSWERED
            uri, question, more = replaced.partition("?")
            if question:
                new_args = more.encode("utf-8", "surrogateescape")
                if rule.keep_args and args:
                    new_args += b"&" + args
                args = new_args
            elif not rule.keep_args:
                args = b""
            normalized = _normalize(uri)
            if normalized is None:
                exchange.log_error(f"rewrite to {uri!r}: not a path under '/'")
                exchange.error(400)
                return _Step.ANSWERED
            exchange.reroute(
                rewritten_head(exchange.head, normalized, args), normalized, exchange.location
            )
            request.changed = request.moved = True
            if rule.flag == "last":
                return _Step.LAST
            if rule.flag == "break":
                request.moved = False
                return _Step.BREAK
        if rules.return_ is not None:
            self._return(exchange, rules.return_, request)
            return _Step.ANSWERED
        return _Step.DONE

    def _return(self, exchange: Exchange, rule: ReturnRule, request: _Request) -> None:
        status = rule.status
        if rule.text is None:
            if status >= 300:
                exchange.error(status)
            else:
                exchange.respond(status, [(b"Content-Length", b"0")], b"")
            return
        value = expand(rule.text, exchange, request.captures)
        if status in _REDIRECTS:
            self._redirect(exchange, status, value)
            return
        body = value.encode("utf-8", "surrogateescape")
        fields = [
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", str(len(body)).encode()),
        ]
        exchange.respond(status, fields, b"" if exchange.head.method == "HEAD" else body)

    def _redirect(self, exchange: Exchange, status: int, url: str) -> None:
        """A redirect to ``url``: made absolute as nginx's absolute_redirect does (scheme,
        the request's host, the listener's port unless it is the scheme's own); relative
        when the request names no host and the server has no name."""
        name = host(exchange) if url.startswith("/") else ""
        if name:  # no name at all (HTTP/1.0, no server_name): the URL stays relative
            scheme = "https" if exchange.https else "http"
            port = exchange.ports[1]
            default = "443" if exchange.https else "80"
            authority = name + (f":{port}" if port and port != default else "")
            url = f"{scheme}://{authority}{url}"
        location = quote(url, safe=_URL_SAFE, errors="surrogateescape").encode("ascii")
        body = f"{status} {REASONS.get(status, '')}\n".encode()
        fields = [
            (b"Location", location),
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
        ]
        exchange.respond(status, fields, b"" if exchange.head.method == "HEAD" else body)


def _location_captures(location: Location, uri: str) -> tuple[str | None, ...]:
    """A regex location's captures on ``uri`` ($1 ...), as nginx sets them."""
    if location.modifier not in ("~", "~*"):
        return ()
    # re's own cache keeps the compiled pattern (the router compiled it at start)
    pattern = re.compile(location.path, re.IGNORECASE if location.modifier == "~*" else 0)
    match = pattern.search(uri)
    return (match.group(0), *match.groups()) if match is not None else ()
