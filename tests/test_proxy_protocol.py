"""The PROXY protocol parser (sans-I/O): good v1 and v2 headers whole and byte by byte,
and every malformed shape answered with ProxyProtocolError, never anything else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gantry.protocol.proxy_protocol import (
    MAX_V1_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)

GOOD = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        ProxyHeader(1, ("192.0.2.1", 56324), ("198.51.100.2", 443), 45),
    ),
    (
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 65535), 44),
    ),
    (
        b"PROXY TCP6 ::ffff:192.0.2.9 ::1 4000 80\r\n",
        ProxyHeader(1, ("192.0.2.9", 4000), ("::1", 80), 41),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None, 15)),
    (b"PROXY UNKNOWN ffff:f...f:ffff 0 0\r\n", ProxyHeader(1, None, None, 35)),
]


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_v1_whole_then_byte_by_byte(data: bytes, expected: ProxyHeader) -> None:
    assert expected.length == len(data)
    assert parse_proxy_header(data + b"GET / HTTP/1.1\r\n") == expected
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut]) is None, cut
    assert parse_proxy_header(data) == expected


def test_v2_addresses_and_tlvs() -> None:
    v4 = encode_v2(("203.0.113.7", 5555), ("10.0.0.1", 8080))
    assert parse_proxy_header(v4 + b"GET") == ProxyHeader(
        2, ("203.0.113.7", 5555), ("10.0.0.1", 8080), len(v4)
    )
    tlv = b"\x04\x00\x03abc"  # a NOOP TLV the parser must step over
    v6 = encode_v2(("2001:db8::7", 1), ("::ffff:10.0.0.1", 2), tlv)
    header = parse_proxy_header(v6)
    assert header == ProxyHeader(2, ("2001:db8::7", 1), ("10.0.0.1", 2), len(v6))
    for cut in range(len(v6)):
        assert parse_proxy_header(v6[:cut]) is None, cut


def test_v2_local_unspec_and_unix_say_nothing_of_the_client() -> None:
    local = encode_v2(None, None)
    assert parse_proxy_header(local) == ProxyHeader(2, None, None, 16)
    unspec = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, 0)
    assert parse_proxy_header(unspec) == ProxyHeader(2, None, None, 16)
    unix = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, 216) + bytes(216)
    assert parse_proxy_header(unix) == ProxyHeader(2, None, None, 232)


def _v2(version_command: int, family: int, block: bytes, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family, size) + block


BAD = [
    (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY"),
    (b"PROXI TCP4", "not a PROXY"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2" + b" " * 100, "107"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "5 fields"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "7 fields"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad IPv4"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "expected an IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "expected an IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "leading zero"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "non-ASCII"),
    (b"PROXY\r\n", "not a PROXY"),
    (V2_SIGNATURE[:5] + b"x", "not a PROXY"),
    (_v2(0x11, 0x11, bytes(12)), "version 1"),
    (_v2(0x22, 0x11, bytes(12)), "unknown command"),
    (_v2(0x21, 0x41, bytes(12)), "family"),
    (_v2(0x21, 0x13, bytes(12)), "family"),
    (_v2(0x21, 0x11, bytes(8)), "too short"),
    (_v2(0x21, 0x21, bytes(12)), "too short"),
    (_v2(0x21, 0x11, b"", length=60000), "more than 4096"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_malformed_headers_are_refused_precisely(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data)


def test_v1_is_bounded_before_its_crlf() -> None:
    """A peer that never ends the line is refused at 107 bytes, not read on."""
    line = b"PROXY TCP4 " + b"1" * (MAX_V1_LENGTH - 11)
    assert len(line) == MAX_V1_LENGTH
    assert parse_proxy_header(line[:-1]) is None
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v2_length_bound_is_a_parameter() -> None:
    block = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), b"\x04\x00\x64" + bytes(100))
    assert parse_proxy_header(block) is not None
    with pytest.raises(ProxyProtocolError, match="more than 50"):
        parse_proxy_header(block, max_v2_length=50)


def test_encoders_round_trip() -> None:
    for source, destination in ((("192.0.2.1", 80), ("192.0.2.2", 81)), (("::1", 1), ("::2", 2))):
        for data in (encode_v1(source, destination), encode_v2(source, destination)):
            header = parse_proxy_header(data)
            assert header is not None
            assert (header.source, header.destination, header.length) == (
                source,
                destination,
                len(data),
            )


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_the_protocol_error(data: bytes) -> None:
    try:
        parse_proxy_header(data)
    except ProxyProtocolError:
        pass


@given(st.binary(max_size=120))
def test_arbitrary_v1_tails_parse_or_raise_the_protocol_error(tail: bytes) -> None:
    try:
        parse_proxy_header(b"PROXY " + tail)
    except ProxyProtocolError:
        pass


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300))
def test_arbitrary_v2_blocks_parse_or_raise_the_protocol_error(
    version_command: int, family: int, block: bytes
) -> None:
    try:
        parse_proxy_header(_v2(version_command, family, block))
    except ProxyProtocolError:
        pass
