"""The FastCGI record codec without a server: records, pairs, malformations, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.protocol.fastcgi import (
    BEGIN_REQUEST,
    END_REQUEST,
    MAX_CONTENT,
    PARAMS,
    STDERR,
    STDIN,
    STDOUT,
    FastCGIProtocolError,
    Record,
    RecordDecoder,
    begin_request,
    decode_pairs,
    encode_pairs,
    encode_record,
    end_request,
    parse_cgi_head,
    parse_end_request,
    stream_records,
)


def test_begin_request_is_the_spec_bytes() -> None:
    # version 1, type 1, id 1, length 8, no padding; role 1 (responder), flags 1 (keep)
    assert begin_request(1, True) == bytes([1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0])
    assert begin_request(258, False)[2:4] == b"\x01\x02"
    assert begin_request(1, False)[10] == 0


def test_records_are_padded_to_eight() -> None:
    record = encode_record(STDOUT, 1, b"abc")
    assert len(record) == 16 and record[6] == 5 and record[11:] == bytes(5)


def test_pairs_with_short_and_long_lengths() -> None:
    pairs = [(b"A", b""), (b"N" * 127, b"v" * 128), (b"K" * 300, b"x" * 70000)]
    block = encode_pairs(pairs)
    assert block[:3] == b"\x01\x00A"
    # 127 takes one byte, 128 takes four with the top bit set
    assert block[3] == 127 and block[4:8] == (128 | 1 << 31).to_bytes(4, "big")
    assert decode_pairs(block) == pairs


@pytest.mark.parametrize(
    "block",
    [b"\x05", b"\x80\x00", b"\x01\x05ab", b"\x01\x80\x00\x00\x09ab", b"\x01\x01a"],
)
def test_malformed_pairs(block: bytes) -> None:
    with pytest.raises(FastCGIProtocolError):
        decode_pairs(block)


def test_stream_is_cut_at_max_content_and_ended_by_an_empty_record() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes: three records
    records = RecordDecoder().feed(stream_records(STDIN, 7, data) + stream_records(STDIN, 7, b""))
    assert [len(r.content) for r in records] == [
        MAX_CONTENT,
        MAX_CONTENT,
        153600 - 2 * MAX_CONTENT,
        0,
    ]
    assert b"".join(r.content for r in records) == data
    assert {(r.type, r.request_id) for r in records} == {(STDIN, 7)}


def test_a_response_fed_one_byte_at_a_time() -> None:
    wire = (
        stream_records(STDOUT, 1, b"Status: 200\r\n\r\nhi")
        + stream_records(STDERR, 1, b"warn")
        + end_request(1, 3, 0)
    )
    decoder = RecordDecoder()
    records: list[Record] = []
    for i in range(len(wire)):
        records += decoder.feed(wire[i : i + 1])
    assert [r.type for r in records] == [STDOUT, STDERR, END_REQUEST]
    assert records[0].content == b"Status: 200\r\n\r\nhi" and records[1].content == b"warn"
    assert parse_end_request(records[2].content) == (3, 0)
    assert decoder.pending == 0


@pytest.mark.parametrize(
    "wire",
    [
        bytes([2, 6, 0, 1, 0, 0, 0, 0]),  # version 2
        bytes([1, 0, 0, 1, 0, 0, 0, 0]),  # type 0
        bytes([1, 12, 0, 1, 0, 0, 0, 0]),  # type 12
        bytes([1, END_REQUEST, 0, 1, 0, 4, 0, 0]) + bytes(4),  # END_REQUEST not 8 bytes
        bytes([1, BEGIN_REQUEST, 0, 1, 0, 0, 0, 0]),
    ],
)
def test_malformed_records(wire: bytes) -> None:
    with pytest.raises(FastCGIProtocolError):
        RecordDecoder().feed(wire)


@pytest.mark.parametrize("value", [b"a\rb", b"a\x00b", b"\x00", b"a\r\x00"])
def test_a_cgi_header_value_with_a_cr_or_nul_is_refused(value: bytes) -> None:
    with pytest.raises(FastCGIProtocolError, match="CR or NUL"):
        parse_cgi_head(b"Content-Type: text/plain\r\nX-A: " + value + b"\r\n\r\nbody")


def test_a_cgi_head_with_plain_values_is_read() -> None:
    head = parse_cgi_head(b"Status: 201 Made\r\nX-A: a b\r\n\r\nbody")
    assert head is not None
    assert (head.status, head.reason, head.headers, head.rest) == (
        201, b"Made", [(b"X-A", b"a b")], b"body")  # fmt: skip


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        encode_record(STDOUT, 1, bytes(65536))
    with pytest.raises(ValueError):
        encode_record(STDOUT, 65536, b"")
    with pytest.raises(ValueError):
        encode_record(0, 1, b"")


def test_the_decoder_holds_at_most_one_record() -> None:
    decoder = RecordDecoder()
    wire = stream_records(STDOUT, 1, bytes(MAX_CONTENT))
    assert decoder.feed(wire[:-1]) == [] and decoder.pending == len(wire) - 1
    assert len(decoder.feed(wire[-1:])) == 1 and decoder.pending == 0


_pairs = st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(_pairs)
def test_pairs_round_trip(pairs: list[tuple[bytes, bytes]]) -> None:
    assert decode_pairs(encode_pairs(pairs)) == pairs


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([PARAMS, STDIN, STDOUT, STDERR]),
            st.integers(0, 0xFFFF),
            st.binary(max_size=70000),
        ),
        max_size=6,
    ),
    st.integers(1, 5000),
)
def test_records_round_trip_in_any_cuts(streams: list[tuple[int, int, bytes]], cut: int) -> None:
    wire = b"".join(stream_records(t, rid, data) for t, rid, data in streams)
    decoder = RecordDecoder()
    records: list[Record] = []
    for at in range(0, len(wire), cut):
        records += decoder.feed(wire[at : at + cut])
    assert decoder.pending == 0
    for t, rid, data in streams:
        got = []
        while True:
            record = records.pop(0)
            assert (record.type, record.request_id) == (t, rid)
            got.append(record.content)
            if sum(map(len, got)) == len(data):
                break
        assert b"".join(got) == data
    assert records == []


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_the_codec_error(data: bytes) -> None:
    try:
        RecordDecoder().feed(data)
    except FastCGIProtocolError:
        pass
    try:
        decode_pairs(data)
    except FastCGIProtocolError:
        pass
