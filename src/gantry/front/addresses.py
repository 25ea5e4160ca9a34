"""Client addresses as integers, and sets of networks looked up in a few hash probes.

A set of 100,000 networks is asked about on every request (the blocklist) and must cost
next to nothing: each network is kept as its prefix, shifted down, in a dict per prefix
length, so a lookup is one shift and one probe per length present (a handful), whatever
the number of entries.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Final

__all__ = ["AddressSet", "address_key", "canonical_address", "network_key"]

_V4_MAPPED: Final = 0xFFFF
_inet_pton: Final = socket.inet_pton
_AF_INET: Final = socket.AF_INET
_AF_INET6: Final = socket.AF_INET6


def address_key(text: str) -> tuple[int, int] | None:
    """(4 or 6, the address as an integer) of an address in text; a v4-mapped IPv6 address
    is its IPv4 one. None for what is not an address."""
    try:
        if ":" in text:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]))
            if value >> 32 == _V4_MAPPED:
                return 4, value & 0xFFFFFFFF
            return 6, value
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        return None


def canonical_address(text: str) -> str:
    """The one name of an address: v4-mapped IPv6 ("::ffff:192.0.2.1") as IPv4, IPv6
    compressed; what is not an address comes back as it is."""
    if ":" not in text:
        return text
    if text.startswith("::ffff:") and "." in text:
        return text[7:]
    try:
        address = ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return text
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def network_key(text: str) -> tuple[int, int, int] | None:
    """(version, prefix length, the prefix as an integer shifted down) of "ADDR" or
    "ADDR/LEN"; a v4-mapped network ("::ffff:10.0.0.0/104") is its IPv4 one. None for
    what is not a network."""
    # the common shapes without ipaddress: a file of 100,000 lines loads in a blink
    address, slash, length_text = text.strip().partition("/")
    key = address_key(address)
    if key is None:
        return None
    version, value = key
    bits = 32 if version == 4 else 128
    if not slash:
        return version, bits, value
    if not (length_text.isdigit() and length_text.isascii()):
        return None
    length = int(length_text)
    if version == 4 and ":" in address:
        if length < 96:
            return _slow_network_key(text)
        length -= 96
    if length > bits:
        return None
    return version, length, value >> (bits - length)


def _slow_network_key(text: str) -> tuple[int, int, int] | None:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    bits = network.max_prefixlen
    value = int(network.network_address) >> (bits - network.prefixlen)
    return network.version, network.prefixlen, value


class AddressSet:
    """Networks (IPv4 and IPv6), each with a label (its text as written: what a hit is
    counted against), asked "which one holds this address?"."""

    __slots__ = ("_v4", "_v6", "size")

    def __init__(self, entries: Iterable[tuple[tuple[int, int, int], str]] = ()) -> None:
        by_length: dict[tuple[int, int], dict[int, str]] = {}
        size = 0
        for (version, length, prefix), label in entries:
            by_length.setdefault((version, length), {}).setdefault(prefix, label)
            size += 1
        #: (shift, prefixes) for each prefix length present, the longest first (the most
        #: specific entry names a hit)
        self._v4 = [
            (32 - length, members)
            for (version, length), members in sorted(by_length.items(), key=lambda i: -i[0][1])
            if version == 4
        ]
        self._v6 = [
            (128 - length, members)
            for (version, length), members in sorted(by_length.items(), key=lambda i: -i[0][1])
            if version == 6
        ]
        self.size = size

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def find(self, address: str) -> str | None:
        """The label of the (most specific) network holding ``address``, or None."""
        # address_key, inline: this runs for every request of a flood of new addresses
        try:
            if ":" not in address:
                value = int.from_bytes(_inet_pton(_AF_INET, address))
                lengths = self._v4
            else:
                value = int.from_bytes(_inet_pton(_AF_INET6, address.partition("%")[0]))
                if value >> 32 == _V4_MAPPED:
                    value &= 0xFFFFFFFF
                    lengths = self._v4
                else:
                    lengths = self._v6
        except (OSError, ValueError):
            return None
        for shift, members in lengths:
            label = members.get(value >> shift)
            if label is not None:
                return label
        return None

    def __contains__(self, address: str) -> bool:
        return self.find(address) is not None
