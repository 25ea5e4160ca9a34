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
#: field names remembered as the field or not, and the longest one remembered
NAME_CACHE: Final = 256
NAME_CACHED: Final = 64


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
    X-Forwarded-For or X-Real-IP (as nginx's real_ip_header).

    A proxy's connection sends the same few field names and values again and again (a
    refused flood too: each request pays for this walk before the blocklist answers),
    so both are remembered: a name seen before is known to be the field or not with no
    lowering, and a value read before gives its address with no parsing; a request from
    a known client allocates nothing here."""

    def __init__(self, config: RealIp, peers: TrustedPeers) -> None:
        self.field = config.header.lower().encode()
        self.trusted = peers.networks
        self.recursive = config.recursive
        #: a field name as sent -> whether it is the field (bounded: cleared when full)
        self.names: dict[bytes, bool] = {}
        #: the field's one value -> the address it gives ("": none, the peer's stands);
        #: whatever the peer, which only stands in where the value names nobody (bounded)
        self.found: dict[bytes, str] = {}

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return True

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        if not exchange.peer_trusted:
            return False
        names = self.names
        value = b""
        seen = 0
        for name, item in exchange.head.headers:
            is_field = names.get(name)
            if is_field is None:
                is_field = name.lower() == self.field
                if len(name) <= NAME_CACHED:  # the names a client sends: bounded bytes
                    if len(names) >= NAME_CACHE:
                        names.clear()
                    names[name] = is_field
            if is_field:
                seen += 1
                if seen > 1:
                    break
                value = item
        peer = exchange.peer_addr
        if not seen:
            address = peer
        elif seen == 1 and len(value) <= FOUND_VALUE:
            found = self.found.get(value)
            if found is None:
                found = forwarded_address([value], "", self.trusted, self.recursive)
                if len(self.found) >= FOUND_CACHE:
                    self.found.clear()
                self.found[value] = found
            address = found if found else peer
        else:  # several fields (read in order), or a long value: read each time
            field = self.field
            values = [item for name, item in exchange.head.headers if name.lower() == field]
            address = forwarded_address(values, peer, self.trusted, self.recursive)
        if address != exchange.remote_addr:
            exchange.remote_addr = address
        return False
