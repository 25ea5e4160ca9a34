"""The uwsgi wire protocol (as nginx's uwsgi_pass and uWSGI speak it), sans-I/O.

A packet is a 4-byte header (modifier1: u8, datasize: u16 little-endian,
modifier2: u8) and a vars block of ``datasize`` bytes made of
(u16 LE key length, key, u16 LE value length, value) pairs. For a WSGI
request (modifier1 0) the request body follows, CONTENT_LENGTH bytes of it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "GANTRY_MODIFIER2",
    "parse_gantry_packet",
    "PacketHeader",
    "UwsgiProtocolError",
    "decode_vars",
    "encode_packet",
    "encode_vars",
    "pack_header",
    "packet_header",
    "parse_packet",
]

#: largest vars block accepted by default, as uWSGI's ``buffer-size``
DEFAULT_BUFFER_SIZE: Final = 4096

_MAX_U16: Final = 0xFFFF

#: modifier2 of gantry's own packet (modifier1 0), which only Gantry's front sends to
#: gantry serve: the vars block is NUL-separated latin-1 environ keys and values
#: ("KEY\0VALUE\0KEY\0VALUE"), read with one split instead of a loop over length
#: prefixes; a key may repeat (the server joins repeated HTTP_* like headers). The
#: connection is kept for the next packet as with GANTRY_KEEPALIVE=1.
GANTRY_MODIFIER2: Final = 0x67
_u16: Final = struct.Struct("<H").pack
#: (modifier1, vars block size, modifier2) -> the 4-byte header, unchecked but for
#: struct.error past 255 or 65535 (packet_header says what went wrong)
pack_header: Final = struct.Struct("<BHB").pack


class UwsgiProtocolError(Exception):
    """A malformed uwsgi packet; the connection cannot be trusted further."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PacketHeader(NamedTuple):
    """The 4-byte uwsgi packet header."""

    modifier1: int
    datasize: int
    modifier2: int


def encode_vars(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The vars block for ``pairs``; ValueError if a key, value or the block exceeds 65535 bytes."""
    try:
        block = b"".join([_u16(len(key)) + key + _u16(len(value)) + value for key, value in pairs])
    except struct.error:
        raise ValueError("uwsgi var key or value longer than 65535 bytes") from None
    if len(block) > _MAX_U16:
        raise ValueError("uwsgi vars block longer than 65535 bytes")
    return block


def packet_header(datasize: int, modifier1: int = 0, modifier2: int = 0) -> bytes:
    """The 4-byte header of a packet whose vars block is ``datasize`` bytes; ValueError
    past 65535 bytes or for a modifier that is not a single byte."""
    if not (0 <= modifier1 <= 255 and 0 <= modifier2 <= 255):
        raise ValueError("uwsgi modifiers are single bytes")
    if datasize > _MAX_U16:
        raise ValueError("uwsgi vars block longer than 65535 bytes")
    return pack_header(modifier1, datasize, modifier2)


def encode_packet(
    pairs: Iterable[tuple[bytes, bytes]], modifier1: int = 0, modifier2: int = 0
) -> bytes:
    """Header and vars block of one packet."""
    block = encode_vars(pairs)
    return packet_header(len(block), modifier1, modifier2) + block


def decode_vars(block: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
    """Split a vars block into (key, value) pairs; UwsgiProtocolError if malformed."""
    data = bytes(block)
    end = len(data)
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    pos = 0
    while pos < end:
        if pos + 2 > end:
            raise UwsgiProtocolError("truncated key length")
        key_end = pos + 2 + (data[pos] | data[pos + 1] << 8)
        if key_end + 2 > end:
            raise UwsgiProtocolError("key runs past the vars block")
        value_end = key_end + 2 + (data[key_end] | data[key_end + 1] << 8)
        if value_end > end:
            raise UwsgiProtocolError("value runs past the vars block")
        append((data[pos + 2 : key_end], data[key_end + 2 : value_end]))
        pos = value_end
    return pairs


def parse_packet(
    buffer: bytes | bytearray | memoryview, max_size: int = DEFAULT_BUFFER_SIZE
) -> tuple[PacketHeader, list[tuple[bytes, bytes]], int] | None:
    """Decode the packet at the start of ``buffer``.

    Returns None while more bytes are needed, else the header, the vars and the
    number of bytes used (4 + datasize). A datasize over ``max_size`` is refused
    as soon as the header is in, without waiting for the block.
    """
    if len(buffer) < 4:
        return None
    header = PacketHeader(buffer[0], buffer[1] | buffer[2] << 8, buffer[3])
    if header.datasize > max_size:
        raise UwsgiProtocolError(
            f"vars block of {header.datasize} bytes exceeds the buffer size {max_size}"
        )
    used = 4 + header.datasize
    if len(buffer) < used:
        return None
    return header, decode_vars(buffer[4:used]), used


def parse_gantry_packet(
    buffer: bytes | bytearray | memoryview, max_size: int = DEFAULT_BUFFER_SIZE
) -> tuple[list[str], int] | None:
    """Decode gantry's own packet (modifier2 GANTRY_MODIFIER2) at the start of ``buffer``.

    Returns None while more bytes are needed, else the fields (key, value, key,
    value, ...) as latin-1 strings and the bytes used; UwsgiProtocolError if malformed.
    """
    if len(buffer) < 4:
        return None
    datasize = buffer[1] | buffer[2] << 8
    if datasize > max_size:
        raise UwsgiProtocolError(
            f"vars block of {datasize} bytes exceeds the buffer size {max_size}"
        )
    used = 4 + datasize
    if len(buffer) < used:
        return None
    fields = bytes(buffer[4:used]).decode("latin-1").split("\0")
    if len(fields) % 2:
        raise UwsgiProtocolError("a key without a value in the vars")
    return fields, used
