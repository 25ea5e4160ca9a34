"""The client's real address behind trusted proxies (nginx's realip module).

Trust is decided once per connection, on the peer's address (or "unix:" for a unix
socket); a request from a trusted peer has its address read from X-Forwarded-For or
X-Real-IP by the first handler of the chain, and everything after it (access rules,
blocklist, limits, the access log, the upstream's X-Forwarded-For and REMOTE_ADDR) sees
that address as the exchange's ``remote_addr``. The PROXY protocol's address is taken
by the connection itself, before any request.
"""

from __future__ import annotations

from typing import Final

from gantry.config.front_model import Location, RealIp, VirtualServer
from gantry.front.addresses import AddressSet, address_key, canonical_address, network_key
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.http.body import BodyBuffer

__all__ = ["RealAddressHandler", "TrustedPeers", "forwarded_address"]

#: header values remembered with the address they give
FOUND_CACHE: Final = 4096
#: longer values are read each time: the cache holds 1 MiB of the clients' bytes at most
FOUND_VALUE: Final = 256


class TrustedPeers:
    """Who may tell the client's address: [front.real_ip] from."""

    __slots__ = ("networks", "unix")

    def __init__(self, config: RealIp) -> None:
        entries = []
        for network in config.trusted:
            key = network_key(str(network))
            if key is not None:
                entries.append((key, str(network)))
        self.networks = AddressSet(entries)
        self.unix = config.trust_unix

    def trusts(self, peer: str) -> bool:
        """Whether the peer at ``peer`` (an address, or "" for a unix socket) is trusted."""
        if not peer:
            return self.unix
        return peer in self.networks


def forwarded_address(values: list[bytes], peer: str, trusted: AddressSet, recursive: bool) -> str:
    """The client's address from a field's values (in order of arrival), as nginx reads
    it: the last address; with ``recursive``, the last one not ``trusted``, reading from the
    right (the leftmost when all are). A malformed element stops the reading there: what
    was found before it stands (``peer`` when nothing was)."""
    found = peer
    for value in reversed(values):
        for item in reversed(value.split(b",")):
            text = item.strip().decode("latin-1")
            if not text:
                continue
            if address_key(text) is None:
                return found
            found = canonical_address(text)
            if not recursive or found not in trusted:
                return found
    return found


class RealAddressHandler(Handler):
    """First in the chain: a trusted peer's request gets its client's address from
    X-Forwarded-For or X-Real-IP (as nginx's real_ip_header)."""

    def __init__(self, config: RealIp, peers: TrustedPeers) -> None:
        self.field = config.header.lower().encode()
        self.trusted = peers.networks
        self.recursive = config.recursive
        #: (peer, the field's one value) -> address: a proxy's connection carries the same
        #: few values again and again (bounded: cleared when full)
        self.found: dict[tuple[str, bytes], str] = {}

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return True

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        if not exchange.peer_trusted:
            return False
        field = self.field
        values = [value for name, value in exchange.head.headers if name.lower() == field]
        peer = exchange.peer_addr
        if not values:
            address = peer
        elif len(values) == 1 and len(values[0]) <= FOUND_VALUE:
            key = (peer, values[0])
            found = self.found.get(key)
            if found is None:
                found = forwarded_address(values, peer, self.trusted, self.recursive)
                if len(self.found) >= FOUND_CACHE:
                    self.found.clear()
                self.found[key] = found
            address = found
        else:
            address = forwarded_address(values, peer, self.trusted, self.recursive)
        if address != exchange.remote_addr:
            exchange.remote_addr = address
        return False
