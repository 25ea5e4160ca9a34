"""The uwsgi packet codec without a server: every malformation, and round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.protocol.uwsgi import (
    DEFAULT_BUFFER_SIZE,
    PacketHeader,
    UwsgiProtocolError,
    decode_vars,
    encode_packet,
    encode_vars,
    parse_packet,
)

SAMPLE = [(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/x"), (b"EMPTY", b"")]


def test_round_trip_sample() -> None:
    packet = encode_packet(SAMPLE)
    parsed = parse_packet(packet)
    assert parsed is not None
    header, pairs, used = parsed
    assert header == PacketHeader(0, len(packet) - 4, 0)
    assert pairs == SAMPLE and used == len(packet)


def test_body_after_the_packet_is_not_consumed() -> None:
    packet = encode_packet(SAMPLE) + b"body bytes"
    parsed = parse_packet(packet)
    assert parsed is not None and packet[parsed[2] :] == b"body bytes"


def test_each_prefix_waits_for_more() -> None:
    packet = encode_packet(SAMPLE)
    for cut in range(len(packet)):
        assert parse_packet(packet[:cut]) is None
    assert parse_packet(packet) is not None


def test_no_vars_at_all() -> None:
    assert parse_packet(b"\x00\x00\x00\x00") == (PacketHeader(0, 0, 0), [], 4)


def test_datasize_over_buffer_refused_from_the_header_alone() -> None:
    header = bytes((0,)) + (DEFAULT_BUFFER_SIZE + 1).to_bytes(2, "little") + b"\x00"
    with pytest.raises(UwsgiProtocolError, match="buffer size"):
        parse_packet(header)
    # the same packet is fine under a larger buffer (uWSGI's buffer-size)
    assert parse_packet(header, max_size=DEFAULT_BUFFER_SIZE + 1) is None


@pytest.mark.parametrize(
    "block",
    [
        b"\x05",  # half a key length
        b"\x05\x00abc",  # key runs past the block
        b"\x01\x00a\x09",  # half a value length
        b"\x01\x00a\x09\x00abc",  # value runs past the block
        b"\x01\x00a\x00\x00\xff",  # trailing garbage after a whole pair
    ],
)
def test_malformed_vars_block(block: bytes) -> None:
    with pytest.raises(UwsgiProtocolError):
        decode_vars(block)
    packet = b"\x00" + len(block).to_bytes(2, "little") + b"\x00" + block
    with pytest.raises(UwsgiProtocolError):
        parse_packet(packet)


def test_encode_refuses_oversize() -> None:
    with pytest.raises(ValueError):
        encode_vars([(b"K", b"v" * 65536)])
    with pytest.raises(ValueError):
        encode_vars([(b"K", b"v" * 40000), (b"L", b"v" * 40000)])
    with pytest.raises(ValueError):
        encode_packet(SAMPLE, modifier1=256)


def test_modifiers_survive() -> None:
    parsed = parse_packet(encode_packet(SAMPLE, modifier1=5, modifier2=9))
    assert parsed is not None and parsed[0][0] == 5 and parsed[0][2] == 9


_pairs = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(_pairs)
def test_encode_then_decode_is_identity(pairs: list[tuple[bytes, bytes]]) -> None:
    packet = encode_packet(pairs)
    parsed = parse_packet(packet, max_size=65535)
    assert parsed is not None
    assert parsed[1] == pairs and parsed[2] == len(packet)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=65535))
def test_arbitrary_bytes_parse_or_raise_only_the_protocol_error(data: bytes, limit: int) -> None:
    try:
        result = parse_packet(data, max_size=limit)
    except UwsgiProtocolError:
        return
    if result is not None:
        header, pairs, used = result
        assert used == 4 + header.datasize <= len(data)
        assert encode_vars(pairs) == data[4:used]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_vars_blocks(data: bytes) -> None:
    try:
        pairs = decode_vars(data)
    except UwsgiProtocolError:
        return
    assert encode_vars(pairs) == data
