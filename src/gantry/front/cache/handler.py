"""The cache's step in the front's handler chain, for locations with ``cache``.

Varnish's states, with the decisions taken by ``policy``: a request is looked up
(hit: answered from the store, with Age and Cache-Status), or passed to the proxy
through a :class:`CacheFill`, which relays the upstream's answer to the client and
writes it to the store as it goes (miss), refreshes a stored entry with a 304
(revalidation), or hands a stale entry out when the upstream failed. A location
without ``cache`` never reaches this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Generator
from dataclasses import replace
from email.utils import formatdate
from typing import Final

from gantry.config.front_model import CacheZone, Location, Upstream, VirtualServer
from gantry.front.balancing import UpstreamPool
from gantry.front.cache.counters import (
    BYPASS,
    EXPIRED,
    HIT,
    MISS,
    REVALIDATED,
    STALE,
    STATUSES,
    UPDATING,
    CacheCounters,
)
from gantry.front.cache.policy import (
    Controls,
    Fields,
    Freshness,
    Usable,
    bypassed,
    cache_key,
    cache_status,
    current_age,
    directives,
    field_value,
    freshness,
    initial_age,
    invalidates,
    merge_not_modified,
    not_modified,
    parse_http_date,
    response_controls,
    stale_on_error,
    storable,
    usable,
    validators,
    vary_names,
    vary_values,
)
from gantry.front.cache.store import CacheStore, Entry, EntryWriter, HeadTail, KeyLock
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.headers import proxy_fields
from gantry.front.keepalive import KeepAlivePool
from gantry.front.proxy import ProxyRequest, RequestBody, StreamedBody, spawn
from gantry.front.responses import status_line
from gantry.front.static import parse_ranges
from gantry.http.body import BodyBuffer
from gantry.protocol.http1 import RequestHead

__all__ = ["CacheFill", "CacheHandler"]

# Buffered request bodies up to this size go to the upstream with the head in one write.
SMALL_BODY: Final = 256 * 1024
#: request fields a conditional request to the origin replaces with the entry's validators
_CONDITIONALS: Final = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range",
     b"range"}
)  # fmt: skip
#: stored fields never sent from the cache (the front adds its own, or sets them per answer)
_NOT_SERVED: Final = frozenset(
    {b"date", b"age", b"cache-status", b"content-length", b"transfer-encoding", b"connection"}
)
#: fields a 304 answered from the cache carries (RFC 9110 15.4.5)
_NOT_MODIFIED_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"etag", b"expires", b"vary", b"last-modified"}
)
#: request fields that change what a hit answers (304, 206, 416): without any of them, a
#: GET is answered with the entry's prepared head
_SHAPING: Final = frozenset({b"if-none-match", b"if-modified-since", b"range"})
#: request fields that ask something of the cache (RFC 9111 5.2.1, 3.5) or shape the
#: answer: a GET with none of them and a fresh entry in memory is answered at once
_ASKING: Final = _SHAPING | {b"cache-control", b"pragma", b"authorization", b"if-range"}
#: how often a waiter looks at a key another request is filling
LOCK_POLL: Final = 0.01
#: how often a worker sweeps its zones (one worker at a time does it)
SWEEP_EVERY: Final = 10.0
#: between two pieces of a sweep (each a folder of entries or a slice of the index)
SWEEP_TICK: Final = 0.005
#: keys whose last response was not storable, remembered per worker so their requests
#: do not queue on the fill lock (Varnish's hit-for-pass)
PASS_SECONDS: Final = 10.0
PASS_KEYS: Final = 4096
#: keys whose uses are counted for min_uses (forgotten all at once past it)
USES_KEYS: Final = 65536
#: response heads worked out for misses (see _Shape), per zone (forgotten all at once
#: past it)
SHAPES: Final = 64
#: request fields that bear on whether a response may be stored (RFC 9111 3, 3.5)
_STORING: Final = frozenset({b"cache-control", b"authorization"})


#: the Cache-Status line of a forwarded answer, by (a stale entry was there, it is stored)
_FORWARDED: Final = {
    (stale, stored): b"Cache-Status: "
    + cache_status(False, detail="stale" if stale else "uri-miss")
    + (b"; stored" if stored else b"")
    + b"\r\n"
    for stale in (False, True)
    for stored in (False, True)
}


def _field_lines(fields: Fields) -> list[bytes]:
    return [name + b": " + value + b"\r\n" for name, value in fields]


def _head_copy(head: RequestHead, target: bytes | None = None) -> RequestHead:
    copy = RequestHead()
    copy.method, copy.version, copy.keep_alive = head.method, head.version, head.keep_alive
    copy.content_length, copy.chunked, copy.authority = (
        head.content_length,
        head.chunked,
        head.authority,
    )
    copy.target, copy.path, copy.query = head.target, head.path, head.query
    if target is not None:
        path, _, query = target.partition(b"?")
        copy.target, copy.path, copy.query = target, path, query
    copy.headers = list(head.headers)
    return copy


def _parse_whole(head: bytes) -> tuple[int, bytes, list[bytes]]:
    """Status, reason and field lines of a whole response's head (the proxy's fast path)."""
    lines = head.split(b"\r\n")
    _, status, reason = (lines[0].split(b" ", 2) + [b""])[:3]
    return int(status), reason, [line + b"\r\n" for line in lines[1:] if line]


class _Shape:
    """What a whole response's head (the upstream's bytes, see CacheFill.respond_whole)
    says to a miss that stores it, worked out once per head and zone: an origin answers
    its URLs with a few heads over and over. Parsing its fields, their storability and
    freshness, its tags and the stored entry's head took a miss about 8 us."""

    def __init__(self, zone: CacheZone, head: bytes) -> None:
        status, reason, lines = _parse_whole(head)
        self.status = status
        self.reason = reason
        fields: Fields = []
        for line in lines:
            name, _, value = line.rstrip(b"\r\n").partition(b":")
            fields.append((name, value.strip()))
        self.fields = fields
        self.parsed = response_controls(fields)
        controls, targeted = self.parsed
        self.tags = _tags(fields)
        length = field_value(fields, b"content-length")
        self.body_length = int(length) if length is not None and length.isdigit() else -1
        #: a plain miss of this head is stored by the short path (else by start_response):
        #: no Date or transfer coding of the upstream's (the front's Date is stored), no
        #: Vary (a variant is a file), a length, and storable for a GET that asks nothing
        self.fast = (
            self.body_length >= 0
            and field_value(fields, b"date") is None
            and field_value(fields, b"transfer-encoding") is None
            and vary_names(fields) == ()
            and storable("GET", status, [], fields, zone.valid, self.parsed)
        )
        #: its freshness when the directives decide it alone (not Expires less Date)
        self.freshness: Freshness | None = None
        if not targeted and ("s-maxage" in controls or "max-age" in controls):
            self.freshness = freshness(status, fields, zone.valid, self.parsed)
        #: the client's head when the entry is stored (the front adds its own fields)
        self.client_head = head + _FORWARDED[False, True]
        #: the fields as stored (the front's Date added) in the clock's second ``second``,
        #: and the stored head's part after the key (the same for them all)
        self.second = -1
        self.stored: Fields = []
        self.tail: HeadTail | None = None


def _tags(fields: Fields) -> tuple[str, ...]:
    """The purge tags of a response (Surrogate-Key, Cache-Tag)."""
    tags: list[str] = []
    for name in (b"surrogate-key", b"cache-tag"):
        value = field_value(fields, name)
        if value is not None:
            tags += value.replace(b",", b" ").decode("latin-1").split()
    return tuple(tags)


def _asks_storing(request: Fields) -> bool:
    """Whether a request has fields that bear on storing its response (see _STORING)."""
    for name, _ in request:
        if name.lower() in _STORING:
            return True
    return False


class CacheHandler(Handler):
    """A location with ``cache``: answered from the zone's store, or through the proxy
    with the answer stored. Holds one worker's view of every zone."""

    def __init__(
        self,
        zones: dict[str, CacheZone],
        upstreams: dict[str, Upstream],
        pools: dict[str, UpstreamPool],
        keepalive: KeepAlivePool,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.zones = zones
        self.stores = {name: CacheStore(zone) for name, zone in zones.items()}
        self.targets = {name: (upstreams[name], pools[name]) for name in upstreams}
        self.keepalive = keepalive
        self.tasks = tasks
        #: key -> until when its requests pass without waiting for the fill lock
        self.passing: dict[str, float] = {}
        #: key -> requests seen for it while missing (min_uses)
        self.uses: dict[str, int] = {}
        self._sweep: asyncio.Handle | None = None
        #: the zones' sweeps under way: (zone, its counters' base, its pieces)
        self._sweeps: list[
            tuple[str, tuple[int, int], Generator[tuple[int, int] | None, None, None]]
        ] = []
        #: the zones' figures: this worker's own until share_counters gives the master's
        self.counters = CacheCounters(list(zones.values()), 1)
        self.tallies: dict[str, memoryview] = {}
        self.share_counters(self.counters, 0)
        self._date_second = -1
        self._date = b""
        #: the response heads of each zone's misses lately (see _Shape)
        self.shapes: dict[str, dict[bytes, _Shape]] = {name: {} for name in zones}

    def http_date(self, when: float) -> bytes:
        """The Date field for ``when`` (made once a second, not per response)."""
        second = int(when)
        if second != self._date_second:
            self._date = _http_date(second)
            self._date_second = second
        return self._date

    def shape(self, zone: CacheZone, head: bytes) -> _Shape:
        """What ``head`` says to a miss of ``zone`` that stores it (made once)."""
        shapes = self.shapes[zone.name]
        shape = shapes.get(head)
        if shape is None:
            shape = _Shape(zone, head)
            if len(shapes) >= SHAPES:
                shapes.clear()
            shapes[head] = shape
        return shape

    def share_counters(self, counters: CacheCounters, slot: int) -> None:
        """Count into worker ``slot`` of ``counters`` (the master's, read for stats)."""
        self.counters = counters
        self.tallies = {name: counters.worker(slot, name) for name in self.zones}
        for name, store in self.stores.items():
            store.usage = self.tallies[name]

    def count(self, exchange: Exchange, zone: CacheZone, status: int) -> None:
        """How the cache answered ``exchange``: counted for the zone, and logged
        ($upstream_cache_status)."""
        exchange.cache_status = STATUSES[status]
        self.tallies[zone.name][status] += 1

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return location is not None and location.cache is not None and bool(location.proxy)

    _closed = False

    def close(self) -> None:
        """Stop the sweep timer."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        sweeps, self._sweeps = self._sweeps, []
        for _, _, steps in sweeps:
            steps.close()  # its zone's sweep lock goes
        for store in self.stores.values():
            store.close()

    def _sweep_zones(self) -> None:
        """Begin a sweep of every zone (one worker at a time sweeps a zone): a piece of
        each per turn of the loop, ``SWEEP_TICK`` apart (see CacheStore.sweep_steps), so
        that no turn walks a whole zone."""
        self._sweeps = [
            (name, self.counters.sweep_begins(name), store.sweep_steps())
            for name, store in self.stores.items()
        ]
        self._sweep_piece()

    def _sweep_piece(self) -> None:
        """One piece of each zone's sweep under way; the next piece, or the next sweep,
        armed."""
        self._sweep = None
        if self._closed:
            return
        going: list[tuple[str, tuple[int, int], Generator[tuple[int, int] | None, None, None]]]
        going = []
        for name, base, steps in self._sweeps:
            try:
                step = next(steps, (-1, -1))
            except OSError:
                continue  # a zone's folder gone: each lookup is a miss meanwhile
            if step is None:
                going.append((name, base, steps))
            elif step[0] >= 0:
                self.counters.swept(name, step[0], step[1], base)
        self._sweeps = going
        loop = self.keepalive.loop
        if going:
            self._sweep = loop.call_later(SWEEP_TICK, self._sweep_piece)
        else:
            self._sweep = loop.call_later(SWEEP_EVERY, self._sweep_zones)

    def start(self) -> None:
        """Sweep the zones soon after the worker starts (one worker does), so their
        entries and bytes are known before the first request."""
        if self._sweep is None:
            self._sweep = self.keepalive.loop.call_soon(self._sweep_zones)

    # the request ------------------------------------------------------------

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        location = exchange.location
        if location is None or location.cache is None:
            return False
        if self._sweep is None:
            self._sweep = self.keepalive.loop.call_later(SWEEP_EVERY, self._sweep_zones)
        zone = self.zones[location.cache]
        store = self.stores[location.cache]
        head = exchange.head
        method = head.method
        if method == "PURGE":
            self._purge(exchange, zone, store)
            return True
        key = cache_key(zone.key, head, exchange.remote_addr, exchange.https)
        if method == "GET" and not zone.bypass and key in store.hot_keys and _plain(head.headers):
            # The common hit, decided in short: a GET that asks nothing of the cache and
            # whose entry is in memory and fresh (what _lookup and serve would conclude).
            now = time.time()
            entry = store.lookup(key, head.headers, now)
            if entry is not None and entry.body is not None and not entry.purged:
                age = current_age(entry.initial_age, entry.response_time, now)
                left = entry.freshness.lifetime - age
                if left > 0 and not entry.freshness.no_cache:
                    own = b"Age: %d\r\nCache-Status: gantry; hit; ttl=%d\r\n" % (
                        int(age),
                        int(left),
                    )
                    self.count(exchange, zone, HIT)
                    exchange.respond_prepared(entry.status, _served_head(entry) + own, entry.body)
                    return True
        if method not in ("GET", "HEAD"):
            fill = CacheFill(self, exchange, zone, store, key, head)
            fill.invalidating = True
            fill.status_value = cache_status(False, detail="method")
            fill.log_status = BYPASS
            self._forward(exchange, fill, head, body)
            return True
        if bypassed(zone.bypass, head, exchange.remote_addr):
            fill = CacheFill(self, exchange, zone, store, key, head)
            fill.status_value = cache_status(False, detail="bypass")
            fill.log_status = BYPASS
            self._forward(exchange, fill, head, body)
            return True
        self._lookup(exchange, zone, store, key, head, body, waited=False)
        return True

    def _lookup(
        self,
        exchange: Exchange,
        zone: CacheZone,
        store: CacheStore,
        key: str,
        head: RequestHead,
        body: BodyBuffer | BodyStream | None,
        waited: bool,
    ) -> None:
        now = time.time()
        request = head.headers
        entry = store.lookup(key, request, now)
        if entry is not None and not self._may_serve(entry, request):
            fill = CacheFill(self, exchange, zone, store, key, head)
            fill.status_value = cache_status(False, detail="request")
            fill.log_status = BYPASS
            self._forward(exchange, fill, head, body)
            return
        if entry is None:
            wanted = directives(field_value(request, b"cache-control"))
            if "only-if-cached" in wanted:
                self.count(exchange, zone, MISS)
                fields = [(b"Cache-Status", cache_status(False)), (b"Content-Length", b"0")]
                exchange.respond(504, fields, b"")
                return
            self._miss(exchange, zone, store, key, head, body, waited)
            return
        age = current_age(entry.initial_age, entry.response_time, now)
        decision = usable(entry.freshness, age, request)
        if entry.purged and decision in (Usable.FRESH, Usable.STALE_WHILE_REVALIDATE):
            decision = Usable.REVALIDATE  # soft-purged: stale from now on
        if decision is Usable.FRESH or decision is Usable.STALE:
            self.count(exchange, zone, HIT if decision is Usable.FRESH else STALE)
            self.serve(exchange, entry, age, cache_status(True, entry.freshness.lifetime - age))
            return
        stale_status = cache_status(True, entry.freshness.lifetime - age)
        if decision is Usable.STALE_WHILE_REVALIDATE:
            self.count(exchange, zone, STALE)
            self.serve(exchange, entry, age, stale_status)
            self._background(exchange, zone, store, key, head, entry)
            return
        # Revalidate; or, when another request is at it already, serve it stale if the
        # zone says "updating" (or serve it stale and refresh it in the background).
        lock: KeyLock | None = None
        updating = "updating" in zone.use_stale and _may_be_stale(entry)
        if zone.lock or updating:
            lock = store.try_lock(key)
            if lock is None and updating:
                self.count(exchange, zone, UPDATING)  # another request refreshes it
                self.serve(exchange, entry, age, stale_status)
                return
        if updating and zone.background_update and lock is not None:
            self.count(exchange, zone, STALE)
            self.serve(exchange, entry, age, stale_status)
            self._background(exchange, zone, store, key, head, entry, lock)
            return
        fill = CacheFill(self, exchange, zone, store, key, _conditional(head, entry))
        fill.log_status = EXPIRED
        fill.client_head = head
        fill.stale = entry
        fill.stale_age = age
        fill.lock = lock
        self._forward(exchange, fill, fill.head, body)

    def _may_serve(self, entry: Entry, request: Fields) -> bool:
        """RFC 9111 3.5: a request with Authorization only gets a stored response that
        says it may."""
        if field_value(request, b"authorization") is None:
            return True
        controls = directives(field_value(entry.fields, b"cache-control"))
        return "public" in controls or "s-maxage" in controls or "must-revalidate" in controls

    def _miss(
        self,
        exchange: Exchange,
        zone: CacheZone,
        store: CacheStore,
        key: str,
        head: RequestHead,
        body: BodyBuffer | BodyStream | None,
        waited: bool,
    ) -> None:
        lock: KeyLock | None = None
        if zone.lock and head.method == "GET" and not self._passing(key):
            lock = store.try_lock(key)
            if lock is None and not waited:
                spawn(self.tasks, self._wait(exchange, zone, store, key, head, body))
                return
        fill = CacheFill(self, exchange, zone, store, key, head)
        fill.lock = lock
        if zone.min_uses > 1 and not self._used_enough(key, zone.min_uses):
            fill.release()
            fill.status_value = cache_status(False, detail="uri-miss")  # not stored yet
        self._forward(exchange, fill, head, body)

    def _used_enough(self, key: str, min_uses: int) -> bool:
        """Whether ``key`` was asked for ``min_uses`` times (counted per worker, so with
        several workers it may take up to that many requests on each)."""
        uses = self.uses.get(key, 0) + 1
        if len(self.uses) >= USES_KEYS:
            self.uses.clear()
        self.uses[key] = uses
        return uses >= min_uses

    def _passing(self, key: str) -> bool:
        until = self.passing.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self.passing[key]
            return False
        return True

    def pass_key(self, key: str) -> None:
        """``key``'s response was not storable: its next requests go on without waiting."""
        if len(self.passing) >= PASS_KEYS:
            self.passing.clear()
        self.passing[key] = time.monotonic() + PASS_SECONDS

    async def _wait(
        self,
        exchange: Exchange,
        zone: CacheZone,
        store: CacheStore,
        key: str,
        head: RequestHead,
        body: BodyBuffer | BodyStream | None,
    ) -> None:
        """Another request (of this worker or another) fills ``key``: wait until it is
        stored or the lock is free, at most lock_timeout, then look again."""
        loop = self.keepalive.loop
        deadline = loop.time() + zone.lock_timeout
        while loop.time() < deadline and not exchange.closed:
            await asyncio.sleep(LOCK_POLL)
            if store.lookup(key, head.headers, time.time()) is not None or self._passing(key):
                break
            lock = store.try_lock(key)
            if lock is not None:
                lock.release()
                break
        if exchange.closed:
            return
        self._lookup(exchange, zone, store, key, head, body, waited=True)

    def _background(
        self,
        exchange: Exchange,
        zone: CacheZone,
        store: CacheStore,
        key: str,
        head: RequestHead,
        entry: Entry,
        lock: KeyLock | None = None,
    ) -> None:
        """Refresh a stale entry while it is served (one request does, across workers)."""
        if lock is None:
            lock = store.try_lock(key)
            if lock is None:
                return
        fill = CacheFill(self, exchange, zone, store, key, _conditional(head, entry))
        fill.silent = True
        fill.upstream_log = None
        fill.stale = entry
        fill.lock = lock
        self._forward(exchange, fill, fill.head, None)

    def _forward(
        self,
        exchange: Exchange,
        fill: CacheFill,
        head: RequestHead,
        body: BodyBuffer | BodyStream | None,
    ) -> None:
        """The request goes to the location's upstream, its answer through ``fill``."""
        location = exchange.location
        target = self.targets.get(location.proxy or "") if location is not None else None
        if target is None:
            fill.fail(502, f"no upstream named {location.proxy if location else None!r}")
            return
        upstream, pool = target
        data: RequestBody = b""
        if body is None:
            pass  # the usual (a GET): no isinstance of a plain class to pay for
        elif isinstance(body, BodyBuffer):
            if body.size <= SMALL_BODY:
                data = body.to_input().read()
                body.discard()
            else:
                data = body
        elif isinstance(body, StreamedBody):
            data = body
        fill.request_time = time.time()
        proxy = ProxyRequest(fill, head, data, upstream, pool, location, self.keepalive, self.tasks)
        proxy.keep_date = True  # the upstream's Date is how old its answer is (RFC 9111 4.2.3)
        if location is not None and location.proxy_set_header:
            # (headers.py is not compiled: a call of it per miss ran as Python)
            proxy.set_fields = proxy_fields(exchange)
        if not fill.silent:
            exchange.relay = proxy
        proxy.start()

    # answers from the store -------------------------------------------------

    def serve(self, exchange: Exchange, entry: Entry, age: float, status_value: bytes) -> None:
        """Answer ``exchange`` from ``entry``: 304 to a client's own conditional request,
        206 to a Range, the headers alone to HEAD."""
        head = exchange.head
        body = entry.body
        if head.method == "GET" and body is not None and _unshaped(head.headers):
            # the common hit: the entry's head as prepared once, and the two fields of
            # this answer
            own = b"Age: %d\r\nCache-Status: %b\r\n" % (int(age), status_value)
            exchange.respond_prepared(entry.status, _served_head(entry) + own, body)
            return
        fields = [(n, v) for n, v in entry.fields if n.lower() not in _NOT_SERVED]
        extra = [(b"Age", str(int(age)).encode()), (b"Cache-Status", status_value)]
        if entry.status == 200 and not_modified(head.headers, entry.fields):
            kept = [(n, v) for n, v in fields if n.lower() in _NOT_MODIFIED_FIELDS]
            exchange.respond(304, kept + extra, b"")
            return
        length = entry.body_length
        start, end = 0, length - 1
        status = entry.status
        ranged = self._range(head.headers, entry)
        if ranged is not None:
            if not ranged:
                unsatisfied = [(b"Content-Range", b"bytes */%d" % length), *extra]
                exchange.respond(416, [*unsatisfied, (b"Content-Length", b"0")], b"")
                return
            start, end = ranged[0]
            status = 206
            extra.append((b"Content-Range", b"bytes %d-%d/%d" % (start, end, length)))
        size = end - start + 1 if length else 0
        fields += extra
        fields.append((b"Content-Length", str(size).encode()))
        reason = entry.reason if status == entry.status else b""
        if head.method == "HEAD":
            exchange.respond(status, fields, b"", reason)
            return
        if entry.body is not None:
            exchange.respond(status, fields, entry.body[start : end + 1], reason)
            return
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            exchange.error(502)  # removed under us after the checks: rare, and a retry hits
            return
        try:
            offset = entry.body_offset
            exchange.send_file(status, fields, fd, [(offset + start, offset + end)])
        finally:
            os.close(fd)

    def _range(self, request: Fields, entry: Entry) -> list[tuple[int, int]] | None:
        """The one byte range a request asks of a full 200 entry, as a list of it; []
        when none of it can be satisfied; None to send the whole (no Range, If-Range not
        holding, several ranges)."""
        value = field_value(request, b"range")
        if value is None or entry.status != 200:
            return None
        if_range = field_value(request, b"if-range")
        if if_range is not None:
            etag = field_value(entry.fields, b"etag")
            if if_range.startswith(b'"'):
                if etag is None or etag.startswith(b"W/") or etag != if_range:
                    return None
            elif parse_http_date(if_range) is None or parse_http_date(if_range) != parse_http_date(
                field_value(entry.fields, b"last-modified")
            ):
                return None
        ranges = parse_ranges(value.decode("latin-1"), entry.body_length)
        if ranges is None or len(ranges) > 1:
            return None
        return ranges

    def _purge(self, exchange: Exchange, zone: CacheZone, store: CacheStore) -> None:
        """PURGE: of one URL; of every URL under a prefix (the target ends in "*"); of
        every entry with a tag (a Surrogate-Key or Cache-Tag request field names it);
        "Soft-Purge: 1" marks them stale instead. 200 with the count of entries purged,
        404 when there were none, 403 to an address purge_allow does not list."""
        if not zone.purge_allow or not _allowed(zone, exchange.remote_addr):
            exchange.error(403)
            return
        request = exchange.head.headers
        soft = field_value(request, b"soft-purge") == b"1"
        tag = field_value(request, b"surrogate-key") or field_value(request, b"cache-tag")
        head = _head_copy(exchange.head)
        head.method = "GET"
        if tag is None and not head.target.endswith(b"*"):
            key = cache_key(zone.key, head, exchange.remote_addr, exchange.https)
            _purged(exchange, store.remove(key) if not soft else store.mark_stale(key))
            return
        prefix_key: str | None = None
        tag_name: str | None = None
        if tag is not None:
            tag_name = tag.decode("latin-1").strip()
        else:
            prefix = _head_copy(head, head.target[:-1])
            prefix_key = cache_key(zone.key, prefix, exchange.remote_addr, exchange.https)
        # The whole zone is walked for a prefix or a tag: on a thread, so that the other
        # requests are answered meanwhile; the answer goes when the walk is over.
        queued = store.purge_queued(prefix_key, tag_name, soft)
        loop = self.keepalive.loop
        walk = loop.run_in_executor(None, store.purge_walk, prefix_key, tag_name, soft)
        walk.add_done_callback(lambda done: _walked(exchange, queued, done))


def _walked(exchange: Exchange, queued: int, done: asyncio.Future[int]) -> None:
    """A purge's walk is over: its answer, unless the client left meanwhile."""
    if exchange.closed:
        return
    if done.cancelled() or done.exception() is not None:
        exchange.log_error(
            f"cache purge failed: {done.exception() if not done.cancelled() else 'cancelled'}"
        )
        exchange.error(500)
        return
    _purged(exchange, queued + done.result())


def _purged(exchange: Exchange, count: int) -> None:
    """PURGE's answer: 200 with the count of entries purged, 404 when none."""
    text = f"purged {count}\n".encode()
    fields = [(b"Content-Type", b"text/plain"), (b"Content-Length", str(len(text)).encode())]
    exchange.respond(200 if count else 404, fields, text)


def _unshaped(request: Fields) -> bool:
    """Whether a request has none of the fields that make a hit other than the entry."""
    for name, _ in request:
        if name.lower() in _SHAPING:
            return False
    return True


def _plain(request: Fields) -> bool:
    """Whether a request asks nothing of the cache (see _ASKING)."""
    for name, _ in request:
        if name.lower() in _ASKING:
            return False
    return True


def _served_head(entry: Entry) -> bytes:
    """The status line and fields ``entry`` is answered with (those of the front's own
    and Age and Cache-Status aside), made once per version of its fields."""
    served = entry.served
    if served is not None and served[0] is entry.fields:
        return served[1]
    lines = [
        name + b": " + value + b"\r\n"
        for name, value in entry.fields
        if name.lower() not in _NOT_SERVED
    ]
    length = b"Content-Length: %d\r\n" % entry.body_length
    head = status_line(entry.status, entry.reason) + b"".join(lines) + length
    entry.served = (entry.fields, head)
    return head


def _may_be_stale(entry: Entry) -> bool:
    """Whether ``entry`` may ever be served stale (not must-revalidate, not no-cache)."""
    return not entry.freshness.must_revalidate and not entry.freshness.no_cache


def _allowed(zone: CacheZone, address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in zone.purge_allow)


def _conditional(head: RequestHead, entry: Entry) -> RequestHead:
    """The request that revalidates ``entry``: the client's, its own conditionals and
    Range replaced by the entry's validators; always a GET (a HEAD may refresh it too)."""
    copy = _head_copy(head)
    copy.method = "GET"
    copy.headers = [(n, v) for n, v in head.headers if n.lower() not in _CONDITIONALS]
    copy.headers += validators(entry.fields)
    return copy


class CacheFill:
    """The client side of a proxied request of a cached location: relays the upstream's
    answer to the exchange (unless ``silent``, a background refresh) and stores it."""

    #: the stale entry this request revalidates, or falls back on when the upstream fails
    stale: Entry | None = None
    stale_age = 0.0
    #: the client's own head, when ``head`` is a conditional request made for it
    client_head: RequestHead | None = None
    #: the fill lock of the key, held until the answer is stored (or not)
    lock: KeyLock | None = None
    #: a background refresh: nothing goes to the client
    silent = False
    #: a POST, PUT, DELETE ...: its success invalidates the stored target
    invalidating = False
    #: the Cache-Status of the answer, when it is not a plain miss
    status_value = b""
    request_time = 0.0
    writer: EntryWriter | None = None
    #: the answer is the stale entry, given once the upstream's body is over
    serve_stale = False
    #: the answer is the entry a 304 refreshed, given at the end
    serve_updated: Entry | None = None
    updated_age = 0.0
    passed = False
    #: the stored answer's Content-Length (-1: none; its end says it is whole)
    body_length = -1
    #: how the answer is logged and counted unless it turns out stale or revalidated
    log_status = MISS
    counted = False

    def __init__(
        self,
        handler: CacheHandler,
        exchange: Exchange,
        zone: CacheZone,
        store: CacheStore,
        key: str,
        head: RequestHead,
    ) -> None:
        self.handler = handler
        self.exchange = exchange
        self.zone = zone
        self.store = store
        self.key = key
        self.head = head
        self.remote_addr = exchange.remote_addr
        self.https = exchange.https
        self.upstream_log = None if self.silent else exchange.upstream_log
        self.held: list[bytes] = []

    # ProxyClient: what the proxy reads of the client ----------------------------

    @property
    def closed(self) -> bool:
        """The client went away (a background refresh has none to lose)."""
        return False if self.silent else self.exchange.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        pass  # the exchange's own to set

    @property
    def paused(self) -> bool:
        """The client is behind."""
        return False if self.silent else self.exchange.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        pass  # the exchange's own to set

    def request_path(self, head: RequestHead) -> str:
        """The normalized path of ``head``."""
        # the head given, not the exchange's: a background refresh outlives its request,
        # and its connection may be on another one by then
        return self.exchange.request_path(head)

    def fixed_vars(self) -> bytes:
        """The connection's fixed uwsgi vars."""
        return self.exchange.fixed_vars()

    def gantry_vars(self) -> bytes:
        """The same, for gantry's own packet."""
        return self.exchange.gantry_vars()

    def pause_reading(self) -> None:
        """The upstream is behind on the request body."""
        if not self.silent:
            self.exchange.pause_reading()

    def resume_reading(self) -> None:
        """The upstream took the request body again."""
        if not self.silent:
            self.exchange.resume_reading()

    def log_error(self, message: str) -> None:
        """One error-log line."""
        self.exchange.log_error(message)

    # the answer --------------------------------------------------------------

    def _count(self, status: int) -> None:
        """Count the client's answer once (a background refresh has no client)."""
        if not self.silent and not self.counted:
            self.counted = True
            self.handler.count(self.exchange, self.zone, status)

    def release(self) -> None:
        """Let another request fill the key."""
        lock = self.lock
        self.lock = None
        if lock is not None:
            lock.release()

    def interim(self, status: int, reason: bytes, lines: list[bytes]) -> None:
        """An interim response goes to the client as it is (none to a background
        refresh's); it is never stored."""
        if not self.silent:
            self.exchange.interim(status, reason, lines)

    def start_response(
        self, status: int, reason: bytes, lines: list[bytes], has_length: bool
    ) -> None:
        """The upstream's head: decide what it is for, and pass it on."""
        response_time = time.time()
        # the fields in one pass: the upstream's Date taken out (the client gets the
        # front's), and whether a transfer coding is on (then it is not stored)
        fields: Fields = []
        date_name = b"Date"
        date_value: bytes | None = None
        coded = False
        kept: list[bytes] | None = None  # the lines without Date, once one is seen
        for at, line in enumerate(lines):
            name, _, value = line.rstrip(b"\r\n").partition(b":")
            size = len(name)
            if size == 4 and name.lower() == b"date":
                if date_value is None:
                    date_name, date_value = name, value.strip()
                if kept is None:
                    kept = lines[:at]
                continue
            if size == 17 and name.lower() == b"transfer-encoding":
                coded = True
            if kept is not None:
                kept.append(line)
            fields.append((name, value.strip()))
        if kept is not None:
            lines = kept
        if date_value is not None:
            date_fields = [(date_name, date_value)]
            date = parse_http_date(date_value)
        else:
            # the front's own Date, as the clock's second: what parsing it would give
            date_fields = [(b"Date", self.handler.http_date(response_time))]
            date = float(int(response_time))
        stored_fields = fields + date_fields
        method = self.head.method
        if self.invalidating:
            if invalidates(method, status):
                self._invalidate(fields)
        stale = self.stale
        if stale is not None and status == 304:
            self._refresh(stale, stored_fields, response_time)
            return
        if stale is not None and status >= 500:
            condition = f"http_{status}"
            if stale_on_error(stale.freshness, self.stale_age, condition, self.zone.use_stale):
                self.serve_stale = True
                self.release()
                return
        parsed: Controls | None = None
        if not self.invalidating and not self.status_value:
            parsed = response_controls(stored_fields)
        if (
            parsed is not None
            and storable(method, status, self.head.headers, stored_fields, self.zone.valid, parsed)
            and not coded
        ):
            self._open_writer(status, reason, stored_fields, response_time, parsed, date)
        elif method == "GET" and not self.invalidating and not self.status_value:
            self.passed = True
            self.handler.pass_key(self.key)
        if stale is not None and self.writer is None and status < 500:
            # the origin's new answer may not be stored (now private, no-store...): the
            # old one must not be served in its place any more
            self.store.remove_file(stale.path)
            self.stale = None
        if self.silent:
            return
        self._count(self.log_status)
        if self.status_value:
            lines.append(b"Cache-Status: " + self.status_value + b"\r\n")
        else:
            lines.append(_FORWARDED[stale is not None, self.writer is not None])
        if self.client_head is not None and self.client_head.method == "HEAD":
            self.swallow = True
            self.exchange.start_response(status, reason, lines, has_length)
            return
        self.exchange.start_response(status, reason, lines, has_length)

    swallow = False
    #: a whole answer held for the entry's batch (see _store_whole)
    whole: tuple[int, bytes, bytes] | None = None
    #: the entry waits for its batch: the client's last bytes (``held``) and the end of
    #: its answer (``ended``) with it
    holding = False
    ended = False

    def _open_writer(
        self,
        status: int,
        reason: bytes,
        fields: Fields,
        response_time: float,
        parsed: Controls,
        date: float | None,
    ) -> None:
        names = vary_names(fields)
        if names is None:
            return
        entry = Entry(
            key=self.key,
            status=status,
            reason=reason,
            fields=fields,
            request_time=self.request_time,
            response_time=response_time,
            initial_age=initial_age(fields, self.request_time, response_time, date),
            freshness=freshness(status, fields, self.zone.valid, parsed, date),
            vary=names,
            vary_values=vary_values(names, self.head.headers),
            tags=_tags(fields),
        )
        length = field_value(fields, b"content-length")
        self.body_length = int(length) if length is not None and length.isdigit() else -1
        try:
            self.writer = self.store.writer(entry)
        except OSError as exc:
            self.log_error(f"cache {self.zone.name}: cannot write an entry: {exc}")

    def _refresh(self, stale: Entry, update: Fields, response_time: float) -> None:
        """A 304 revalidated ``stale``: its head is updated (RFC 9111 4.3.4) and it
        answers the client."""
        merged = merge_not_modified(stale.fields, update)
        status = stale.status
        changes = {
            "request_time": self.request_time,
            "response_time": response_time,
            "initial_age": initial_age(update, self.request_time, response_time),
            "freshness": freshness(status, merged, self.zone.valid),
            "purged": False,
        }
        try:
            refreshed = self.store.update_head(stale, merged, changes)
        except OSError:
            refreshed = replace(stale, fields=merged, **changes)  # type: ignore[arg-type]
        self.release()
        self.serve_updated = refreshed
        self.updated_age = refreshed.initial_age

    def _invalidate(self, fields: Fields) -> None:
        """A successful unsafe request: its target and same-origin Location and
        Content-Location are stale now (RFC 9111 4.4)."""
        head = _head_copy(self.head)
        head.method = "GET"
        self.store.remove(
            cache_key(self.zone.key, head, self.remote_addr, self.https), invalidation=True
        )
        host = (field_value(self.head.headers, b"host") or b"").lower()
        for name in (b"location", b"content-location"):
            value = field_value(fields, name)
            if not value:
                continue
            target = value
            for scheme in (b"http://", b"https://"):
                if value.lower().startswith(scheme):
                    authority, slash, rest = value[len(scheme) :].partition(b"/")
                    if authority.lower() != host:
                        target = b""  # another origin: not ours to invalidate
                    else:
                        target = slash + rest
            if target.startswith(b"/"):
                other = _head_copy(self.head, target)
                other.method = "GET"
                key = cache_key(self.zone.key, other, self.remote_addr, self.https)
                self.store.remove(key, invalidation=True)

    def respond_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response (the proxy's fast path): a plain miss's is stored and passed
        on whole; any other as a head, then its body."""
        if (
            not self.invalidating
            and not self.status_value
            and self.stale is None
            and not self.silent
            and self.client_head is None
            and self.head.method == "GET"
        ):
            shape = self.handler.shape(self.zone, head)
            if (
                shape.fast
                and len(body) == shape.body_length
                and not _asks_storing(self.head.headers)
            ):
                self._store_whole(shape, head, body)
                return
        code, reason, lines = _parse_whole(head)
        self.start_response(code, reason, lines, True)
        self.write(body)

    def _store_whole(self, shape: _Shape, head: bytes, body: bytes) -> None:
        """A plain miss's whole response, stored (see _Shape) and passed on whole: what
        start_response, _open_writer and write do, with what the head says made once."""
        response_time = time.time()
        second = int(response_time)
        if shape.second != second:
            # the front's own Date, as the clock's second: the same for this second's misses
            shape.stored = shape.fields + [(b"Date", self.handler.http_date(response_time))]
            shape.second = second
            shape.tail = None
        stored = shape.stored
        date = float(second)
        status = shape.status
        fresh = shape.freshness
        if fresh is None:
            fresh = freshness(status, stored, self.zone.valid, shape.parsed, date)
        entry = Entry(
            key=self.key,
            status=status,
            reason=shape.reason,
            fields=stored,
            request_time=self.request_time,
            response_time=response_time,
            initial_age=initial_age(stored, self.request_time, response_time, date),
            freshness=fresh,
            tags=shape.tags,
        )
        tail = shape.tail
        if tail is None:
            tail = shape.tail = entry.head_tail()
        self.body_length = shape.body_length
        client_head = shape.client_head
        try:
            self.writer = self.store.writer(entry, entry.head_bytes(tail))
        except OSError as exc:
            self.log_error(f"cache {self.zone.name}: cannot write an entry: {exc}")
            client_head = head + _FORWARDED[False, False]
        self._count(self.log_status)
        writer = self.writer
        if writer is not None:
            self.writer = None
            if not writer.write(body):
                self.release()
            elif self._commit(writer):
                self._hold()
        if self.holding:
            self.whole = (status, client_head, body)  # given with the batch (_batched)
            return
        self.exchange.respond_whole(status, client_head, body)

    def write(self, data: bytes) -> None:
        """A piece of the body: to the store and to the client."""
        writer = self.writer
        if writer is not None:
            if not writer.write(data):
                self.writer = None
                self.release()
            elif writer.length == self.body_length:
                # the whole body: in place before the client has its last byte, so that
                # its next request (on another connection, maybe another worker) finds it
                self.writer = None
                if self._commit(writer) and not self.silent:
                    self._hold()
        if self.silent or self.serve_stale or self.serve_updated is not None or self.swallow:
            return
        if self.holding:
            self.held.append(data)
            return
        self.exchange.write(data)

    def end(self) -> None:
        """The answer is complete: store it, and give the client what it is owed."""
        writer = self.writer
        self.writer = None
        if writer is not None and self._commit(writer) and not self.silent:
            self._hold()
        self.release()
        if self.holding:
            self.ended = True  # finished once the entry is in place (see _batched)
            return
        self._finish()

    def _hold(self) -> None:
        """The entry waits for the end of the loop's turn (its batch): so do the client's
        last bytes and the end of its answer, so that its next request, maybe on another
        worker, finds the entry."""
        if not self.holding:
            self.holding = True
            self.store.after_batch.append(self._batched)

    def _batched(self) -> None:
        """The batch is written (or failed): what was held goes to the client."""
        if not self.holding:
            return
        self.holding = False
        whole = self.whole
        if whole is not None:
            self.whole = None
            self.exchange.respond_whole(whole[0], whole[1], whole[2])
        held, self.held = self.held, []
        for data in held:
            self.exchange.write(data)
        if self.ended:
            self.ended = False
            self._finish()

    def _finish(self) -> None:
        """The rest of ``end``: what the client is owed."""
        if self.silent:
            return
        if self.serve_stale and self.stale is not None:
            self._count(STALE)
            self.exchange.relay = None
            age = self.stale_age
            value = cache_status(True, self.stale.freshness.lifetime - age)
            self.handler.serve(self.exchange, self.stale, age, value + b"; fwd=stale")
            return
        refreshed = self.serve_updated
        if refreshed is not None:
            self._count(REVALIDATED)
            self.exchange.relay = None
            value = cache_status(False, refreshed.freshness.lifetime, "stale") + b"; fwd-status=304"
            self.handler.serve(self.exchange, refreshed, refreshed.initial_age, value)
            return
        self.exchange.end()

    def _commit(self, writer: EntryWriter) -> bool:
        """Store a whole answer; the fill lock goes once it is in place. True when it is
        batched: written at the end of the loop's turn."""
        lock, self.lock = self.lock, None
        if writer.packable():
            # to the worker's pack with the others of this turn of the loop: one write
            if writer.commit_batched(lock, self.handler.keepalive.loop):
                return True
            writer.commit_packed()  # the batch is full: at once
        else:
            # A large body (in its temporary file already) or a Vary entry (a marker and
            # a variant): files, renamed into place now.
            writer.commit(remember=False)  # in memory from its second use on, as packed ones
        if lock is not None:
            lock.release()
        return False

    def broken(self, message: str) -> None:
        """The upstream broke mid-answer: nothing is stored."""
        self._batched()  # a whole body held for its batch goes first
        self._drop()
        if not self.silent and not self.serve_stale and self.serve_updated is None:
            self._count(self.log_status)
            self.exchange.broken(message)
        elif not self.silent:
            self.end()

    def fail(self, status: int, message: str) -> None:
        """No upstream answered: a stale entry if one may be served, else the error."""
        self._drop()
        if self.silent:
            self.log_error(f"cache {self.zone.name}: background update failed: {message}")
            return
        stale = self.stale
        condition = "timeout" if status == 504 else "error"
        if stale is not None and stale_on_error(
            stale.freshness, self.stale_age, condition, self.zone.use_stale
        ):
            self._count(STALE)
            self.exchange.relay = None
            self.log_error(f"{message}: a stale entry is served")
            value = cache_status(True, stale.freshness.lifetime - self.stale_age)
            self.handler.serve(self.exchange, stale, self.stale_age, value + b"; fwd=stale")
            return
        self._count(self.log_status)
        # RFC 9211 on the front's own error too: the client sees the cache had nothing
        # to give (fwd) and why the origin's answer is missing (detail)
        value = self.status_value or cache_status(
            False, detail="stale" if stale is not None else "uri-miss"
        )
        reason = b"upstream-timeout" if status == 504 else b"upstream-error"
        self.exchange.fail(status, message, [(b"Cache-Status", value + b"; detail=" + reason)])

    def _drop(self) -> None:
        writer = self.writer
        self.writer = None
        if writer is not None:
            writer.abort()
        self.release()


def _http_date(when: float) -> bytes:
    return formatdate(when, usegmt=True).encode()
