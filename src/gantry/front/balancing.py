"""Upstream pools: nginx's balancing methods and passive health checks (sans-I/O)."""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final

from gantry.config.front_model import HealthCheck, Upstream, UpstreamServer
from gantry.front.upstream_tls import UpstreamTLS, client_context, server_name
from gantry.protocol.http1 import RequestHead

__all__ = ["HealthCheck", "HealthTracker", "Peer", "UpstreamPool"]


@dataclass(eq=False)
class Peer:
    """Live state of one upstream server."""

    server: UpstreamServer
    effective_weight: int = 0
    current_weight: int = 0
    fails: int = 0
    failed_at: float = 0.0
    in_flight: int = 0
    healthy: bool = True
    passes: int = 0
    misses: int = 0
    #: the server's address, read on every request: a compiled field (UpstreamServer is
    #: a plain frozen dataclass, each of its attributes a generic lookup)
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = self.server.address

    def usable(self, now: float) -> bool:
        """Not down, not failed by the active check, not within a passive failure window."""
        server = self.server
        if server.down or not self.healthy:
            return False
        if server.max_fails and self.fails >= server.max_fails:
            return now - self.failed_at >= server.fail_timeout
        return True


@dataclass
class UpstreamPool:
    """Picks a server for each request per the upstream's ``balance``."""

    upstream: Upstream
    clock: Callable[[], float] = time.monotonic
    primary: list[Peer] = field(init=False)
    backup: list[Peer] = field(init=False)
    _ring: list[tuple[int, int]] = field(init=False)  # (hash point, index into primary)
    #: https upstreams: (client context, name checked) by server address; None otherwise
    tls: dict[str, UpstreamTLS] | None = field(init=False)
    #: what a proxied request reads of the upstream each time, as compiled fields
    #: (Upstream is a plain frozen dataclass, each of its attributes a generic lookup)
    protocol: str = field(init=False)
    gantry_keepalive: bool = field(init=False)
    read_timeout: float = field(init=False)
    #: balance = "hash": the request's key picks the server
    hashed: bool = field(init=False)

    def __post_init__(self) -> None:
        upstream = self.upstream
        self.protocol = upstream.protocol
        self.gantry_keepalive = upstream.gantry_keepalive
        self.read_timeout = upstream.read_timeout
        self.hashed = upstream.balance == "hash"
        context = client_context(self.upstream)
        self.tls = None
        if context is not None:
            # one context for the pool: its session cache resumes the next connections
            name = self.upstream.name
            self.tls = {
                s.address: (context, server_name(self.upstream, s.address), f"{s.address}#{name}")
                for s in self.upstream.servers
            }
        self.primary = [Peer(s, s.weight) for s in self.upstream.servers if not s.backup]
        self.backup = [Peer(s, s.weight) for s in self.upstream.servers if s.backup]
        ring = []
        for index, peer in enumerate(self.primary):
            for replica in range(160 * max(1, peer.server.weight)):
                key = f"{peer.server.address}-{replica}".encode()
                ring.append((int.from_bytes(hashlib.md5(key).digest()[:4], "big"), index))
        ring.sort()
        self._ring = ring

    def peers(self) -> list[Peer]:
        """Every peer, primaries first."""
        return [*self.primary, *self.backup]

    def pick(
        self, client_ip: str = "", key: str = "", exclude: Collection[Peer] = ()
    ) -> Peer | None:
        """The peer for this request, or None if no server is usable."""
        if len(self.primary) == 1 and not self.backup:
            # nginx: a lone server ignores max_fails/fail_timeout; it is never marked down
            # by failures (only by `down` or an active health check)
            peer = self.primary[0]
            if peer in exclude or peer.server.down or not peer.healthy:
                return None
            return peer
        now = self.clock()
        usable = [p for p in self.primary if p not in exclude and p.usable(now)]
        if usable:
            balance = self.upstream.balance
            if balance == "least_conn":
                fewest = min(p.in_flight / max(1, p.server.weight) for p in usable)
                return _smooth(
                    [p for p in usable if p.in_flight / max(1, p.server.weight) == fewest]
                )
            if balance == "ip_hash":
                return self._walk(_ip_key(client_ip), usable)
            if balance == "hash":
                return self._consistent(key, usable)
            return _smooth(usable)
        spare = [p for p in self.backup if p not in exclude and p.usable(now)]
        return _smooth(spare) if spare else None

    def _walk(self, hashed: int, usable: list[Peer]) -> Peer:
        # nginx's ip_hash: a stable slot; an unusable slot rehashes to the next server
        index = hashed % len(self.primary)
        for step in range(len(self.primary)):
            peer = self.primary[(index + step) % len(self.primary)]
            if peer in usable:
                return peer
        return usable[0]

    def _consistent(self, key: str, usable: list[Peer]) -> Peer:
        point = int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "big")
        start = bisect.bisect_left(self._ring, (point, -1))
        ring = self._ring
        for step in range(len(ring)):
            peer = self.primary[ring[(start + step) % len(ring)][1]]
            if peer in usable:
                return peer
        return usable[0]

    def started(self, peer: Peer) -> None:
        """A request went to ``peer``."""
        peer.in_flight += 1

    def finished(self, peer: Peer, ok: bool) -> None:
        """A request to ``peer`` ended; failures count toward max_fails within fail_timeout."""
        peer.in_flight = max(0, peer.in_flight - 1)
        if ok:
            peer.fails = 0
            return
        now = self.clock()
        if peer.fails and now - peer.failed_at >= peer.server.fail_timeout:
            peer.fails = 0  # the old window is over
        if not peer.fails:
            peer.failed_at = now
        peer.fails += 1
        if peer.server.max_fails and peer.fails >= peer.server.max_fails:
            peer.failed_at = now

    def set_health(self, peer: Peer, healthy: bool) -> None:
        """The active health checker's verdict."""
        peer.healthy = healthy


def _smooth(peers: list[Peer]) -> Peer:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a."""
    total = 0
    best: Peer | None = None
    for peer in peers:
        peer.current_weight += peer.server.weight
        total += peer.server.weight
        if best is None or peer.current_weight > best.current_weight:
            best = peer
    assert best is not None
    best.current_weight -= total
    return best


def _ip_key(client_ip: str) -> int:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return zlib.crc32(client_ip.encode())
    if address.version == 4:
        return zlib.crc32(address.packed[:3])  # the /24, as nginx's ip_hash
    return zlib.crc32(address.packed)


@dataclass
class HealthTracker:
    """Counts consecutive passes and failures; flips a peer after ``rise`` / ``fall`` of them."""

    pool: UpstreamPool
    check: HealthCheck

    def record(self, peer: Peer, passed: bool) -> bool:
        """Record one probe; True when the peer's health changed."""
        if passed:
            peer.passes += 1
            peer.misses = 0
            if not peer.healthy and peer.passes >= self.check.rise:
                self.pool.set_health(peer, True)
                return True
        else:
            peer.misses += 1
            peer.passes = 0
            if peer.healthy and peer.misses >= self.check.fall:
                self.pool.set_health(peer, False)
                return True
        return False


_VARIABLE: Final = re.compile(r"\$(\{[a-z0-9_]+\}|[a-z0-9_]+)")


def hash_key(template: str, head: RequestHead, client_ip: str, https: bool = False) -> str:
    """The key of ``balance = "hash"``: nginx variables in ``template`` replaced from the
    request ($request_uri, $uri, $args, $host, $remote_addr, $request_method, $scheme
    (https when the client came through TLS), $http_NAME, $cookie_NAME); an unknown
    variable is empty, as in nginx."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        if name == "request_uri":
            return head.target.decode("latin-1")
        if name == "uri":
            return head.path.decode("latin-1")
        if name in ("args", "query_string"):
            return head.query.decode("latin-1")
        if name == "remote_addr":
            return client_ip
        if name == "request_method":
            return head.method
        if name == "scheme":
            return "https" if https else "http"
        if name == "host":
            return (_field(head, b"host") or "").split(":")[0].lower()
        if name.startswith("http_"):
            return _field(head, name[5:].replace("_", "-").encode()) or ""
        if name.startswith("cookie_"):
            wanted = name[7:]
            for part in (_field(head, b"cookie") or "").split(";"):
                key, _, cookie = part.strip().partition("=")
                if key == wanted:
                    return cookie
        return ""

    return _VARIABLE.sub(value, template)


def _field(head: RequestHead, name: bytes) -> str | None:
    for field_name, field_value in head.headers:
        if field_name.lower() == name:
            return field_value.decode("latin-1")
    return None
