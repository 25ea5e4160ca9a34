"""The PROXY protocol (HAProxy's, versions 1 and 2), sans-I/O: bytes in, the addresses the
proxy saw out, or a precise error.

A load balancer that speaks it sends one header before the client's own bytes, telling
who the client is. Version 1 is a text line of at most 107 bytes; version 2 a binary
block (a 16-byte preamble, then addresses and optional TLVs). Nothing else is read: what
follows the header is the client's, and :attr:`ProxyHeader.length` says where it starts.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_V1_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
    "parse_proxy_header",
]

#: the longest version 1 line, CRLF included (the specification's figure)
MAX_V1_LENGTH: Final = 107
V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: the part of a version 2 header read before its length is known
V2_PREAMBLE: Final = 16
#: a version 2 header's address block and TLVs, at most (the field allows 65535; what
#: load balancers send is far smaller, and a peer must not make a worker hold 64 KiB)
DEFAULT_MAX_V2_LENGTH: Final = 4096

_V2_FAMILIES: Final = {0x1: (4, 12), 0x2: (6, 36), 0x3: (0, 216)}


class ProxyProtocolError(Exception):
    """The bytes are not a valid PROXY protocol header (the connection must be closed)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: the client's and the proxy's (address, port) as the proxy saw
    them, or None for both when it says nothing about them (v1 UNKNOWN, v2 LOCAL, or an
    address family other than IPv4/IPv6): the connection's own addresses stand then."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: bytes the header took: the client's own data starts there
    length: int


def _address(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad IPv{family} address {text[:50]!r}") from None
    if address.version != family:
        raise ProxyProtocolError(f"expected an IPv{family} address, got {text[:50]!r}")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # one client, one name
    return str(address)


def _port(text: str) -> int:
    if not (text.isdigit() and text.isascii()) or len(text) > 5 or int(text) > 65535:
        raise ProxyProtocolError(f"bad port {text[:10]!r}")
    if len(text) > 1 and text[0] == "0":
        raise ProxyProtocolError(f"bad port {text[:10]!r} (leading zero)")
    return int(text)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH or b"\n" in data[:MAX_V1_LENGTH]:
            raise ProxyProtocolError("v1 header without CRLF in its first 107 bytes")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header with non-ASCII bytes") from None
    parts = text.split(" ")
    if len(parts) < 2:
        raise ProxyProtocolError("v1 header without a protocol")
    protocol = parts[1]
    if protocol == "UNKNOWN":
        # the proxy could not tell (its own health check, say): the rest is ignored
        return ProxyHeader(1, None, None, end + 2)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header with unknown protocol {protocol[:10]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError(f"v1 header with {len(parts)} fields, expected 6")
    family = 4 if protocol == "TCP4" else 6
    source = (_address(parts[2], family), _port(parts[4]))
    destination = (_address(parts[3], family), _port(parts[5]))
    return ProxyHeader(1, source, destination, end + 2)


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader | None:
    if len(data) < V2_PREAMBLE:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 header with version {version_command >> 4}, expected 2")
    command = version_command & 0xF
    if command > 1:
        raise ProxyProtocolError(f"v2 header with unknown command {command}")
    if length > max_length:
        raise ProxyProtocolError(f"v2 header of {length} bytes, more than {max_length}")
    total = V2_PREAMBLE + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return ProxyHeader(2, None, None, total)
    family, transport = family_transport >> 4, family_transport & 0xF
    if family == 0:  # UNSPEC
        return ProxyHeader(2, None, None, total)
    shape = _V2_FAMILIES.get(family)
    if shape is None or transport not in (1, 2):
        raise ProxyProtocolError(f"v2 header with unknown family/transport {family_transport:#x}")
    ip_version, needed = shape
    if length < needed:
        raise ProxyProtocolError(f"v2 header of {length} bytes, too short for its addresses")
    if ip_version == 0:  # AF_UNIX: no address worth a client's name
        return ProxyHeader(2, None, None, total)
    block = data[V2_PREAMBLE : V2_PREAMBLE + needed]
    size = 4 if ip_version == 4 else 16
    source_ip = ipaddress.ip_address(block[:size])
    destination_ip = ipaddress.ip_address(block[size : 2 * size])
    source_port, destination_port = struct.unpack_from("!HH", block, 2 * size)
    source = (_address(str(source_ip), ip_version), source_port)
    destination = (_address(str(destination_ip), ip_version), destination_port)
    return ProxyHeader(2, source, destination, total)


def parse_proxy_header(
    data: bytes, max_v2_length: int = DEFAULT_MAX_V2_LENGTH
) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``; None while more bytes are needed (never
    past 107 bytes for v1, or 16 + ``max_v2_length`` for v2). Raises ProxyProtocolError
    for anything else."""
    if data[:1] == b"P":
        if len(data) < len(V1_PREFIX):
            if V1_PREFIX.startswith(data):
                return None
        elif data.startswith(V1_PREFIX):
            return _parse_v1(data)
    elif data[:1] == b"\r":
        head = data[: len(V2_SIGNATURE)]
        if V2_SIGNATURE.startswith(head):
            if len(head) < len(V2_SIGNATURE):
                return None
            return _parse_v2(data, max_v2_length)
    elif not data:
        return None
    raise ProxyProtocolError("not a PROXY protocol header")


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A version 1 line for these addresses (tests and tools send it)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode()


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, tlvs: bytes = b""
) -> bytes:
    """A version 2 block for these addresses (None: a LOCAL command), with ``tlvs`` after."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(block)) + block
