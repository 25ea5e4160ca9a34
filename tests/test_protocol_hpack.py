"""HPACK (RFC 7541) in gantry.protocol.hpack: the examples of Appendix C, round trips
against the ``hpack`` package (an independent implementation), and hostile blocks."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.protocol import hpack as hpack_module
from gantry.protocol.hpack import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    Decoder,
    Encoder,
    huffman_decode,
    huffman_encode,
)

Fields = list[tuple[bytes, bytes]]

REQUEST_1: Fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                     (b":authority", b"www.example.com")]  # fmt: skip
REQUEST_2: Fields = [*REQUEST_1, (b"cache-control", b"no-cache")]
REQUEST_3: Fields = [(b":method", b"GET"), (b":scheme", b"https"),
                     (b":path", b"/index.html"), (b":authority", b"www.example.com"),
                     (b"custom-key", b"custom-value")]  # fmt: skip
RESPONSE_1: Fields = [(b":status", b"302"), (b"cache-control", b"private"),
                      (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
                      (b"location", b"https://www.example.com")]  # fmt: skip
RESPONSE_2: Fields = [(b":status", b"307"), *RESPONSE_1[1:]]
RESPONSE_3: Fields = [(b":status", b"200"), (b"cache-control", b"private"),
                      (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
                      (b"location", b"https://www.example.com"), (b"content-encoding", b"gzip"),
                      (b"set-cookie",
                       b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")]  # fmt: skip
COOKIE = RESPONSE_3[5][1]


def hexed(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


def decoded(decoder: Decoder, block: bytes) -> Fields:
    fields: Fields = []
    assert decoder.decode(block, fields) == 0, decoder.message
    return fields


def test_c2_single_representations() -> None:
    decoder = Decoder(65536)
    # C.2.1 literal with indexing: the table holds it
    block = b"\x40\x0acustom-key\x0dcustom-header"
    assert decoded(decoder, block) == [(b"custom-key", b"custom-header")]
    assert decoder.size == 55 and list(decoder.entries) == [(b"custom-key", b"custom-header")]
    # C.2.2 literal without indexing, C.2.3 never indexed, C.2.4 indexed: the table stays
    decoder = Decoder(65536)
    assert decoded(decoder, b"\x04\x0c/sample/path") == [(b":path", b"/sample/path")]
    assert decoded(decoder, b"\x10\x08password\x06secret") == [(b"password", b"secret")]
    assert decoded(decoder, b"\x82") == [(b":method", b"GET")]
    assert decoder.size == 0


C3 = [
    b"\x82\x86\x84\x41\x0fwww.example.com",
    b"\x82\x86\x84\xbe\x58\x08no-cache",
    b"\x82\x87\x85\xbf\x40\x0acustom-key\x0ccustom-value",
]
C4 = [
    hexed("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
    hexed("8286 84be 5886 a8eb 1064 9cbf"),
    hexed("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
]
C5 = [
    b"\x48\x03302\x58\x07private\x61\x1dMon, 21 Oct 2013 20:13:21 GMT"
    b"\x6e\x17https://www.example.com",
    b"\x48\x03307\xc1\xc0\xbf",
    b"\x88\xc1\x61\x1dMon, 21 Oct 2013 20:13:22 GMT\xc0\x5a\x04gzip\x77\x38" + COOKIE,
]
C6 = [
    hexed("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
          "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"),
    hexed("4883 640e ffc1 c0bf"),
    hexed("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
          "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
          "9587 3160 65c0 03ed 4ee5 b106 3d50 07"),
]  # fmt: skip


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3 plain", "C.4 Huffman"])
def test_c3_c4_requests(blocks: list[bytes]) -> None:
    decoder = Decoder(65536)
    expected = [REQUEST_1, REQUEST_2, REQUEST_3]
    for block, fields, size in zip(blocks, expected, [57, 110, 164], strict=True):
        assert decoded(decoder, block) == fields
        assert decoder.size == size
    assert list(decoder.entries)[::-1] == [
        (b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
        (b":authority", b"www.example.com"),
    ]  # fmt: skip


@pytest.mark.parametrize("blocks", [C5, C6], ids=["C.5 plain", "C.6 Huffman"])
def test_c5_c6_responses_with_a_256_byte_table_evict(blocks: list[bytes]) -> None:
    decoder = Decoder(65536, max_table_size=256)
    expected = [RESPONSE_1, RESPONSE_2, RESPONSE_3]
    for block, fields, size in zip(blocks, expected, [222, 222, 215], strict=True):
        assert decoded(decoder, block) == fields
        assert decoder.size == size
    assert [name for name, _ in decoder.entries][::-1] == [b"set-cookie", b"content-encoding",
                                                           b"date"]  # fmt: skip


def test_the_encoder_writes_the_rfc_blocks() -> None:
    plain = Encoder(256)
    for fields, block in zip([RESPONSE_1, RESPONSE_2], C5[:2], strict=True):
        out = bytearray()
        plain.encode(fields, out)
        assert bytes(out) == block
    huffman = Encoder(256, huffman=True)
    out = bytearray()
    huffman.encode(RESPONSE_1, out)
    assert bytes(out) == C6[0]
    # the rest as the RFC's decoder reads it (we do not index Set-Cookie)
    decoder = Decoder(65536, max_table_size=256)
    decoded(decoder, C6[0])
    for fields in (RESPONSE_2, RESPONSE_3):
        out = bytearray()
        huffman.encode(fields, out)
        assert decoded(decoder, bytes(out)) == fields


def test_a_repeated_response_head_is_one_byte_a_field() -> None:
    encoder = Encoder()
    head = [(b":status", b"200"), (b"content-type", b"text/html"), (b"content-length", b"1024"),
            (b"etag", b'"5f1-abc"'), (b"server", b"gantry"),
            (b"date", b"Mon, 07 Dec 2026 06:00:00 GMT")]  # fmt: skip
    first = bytearray()
    encoder.encode(head, first)
    again = bytearray()
    encoder.encode(head, again)
    assert len(again) == len(head)
    reader = hpack.Decoder()
    assert reader.decode(bytes(first), raw=True) == head
    assert reader.decode(bytes(again), raw=True) == head


def test_a_smaller_peer_table_is_announced_and_kept() -> None:
    encoder = Encoder()
    out = bytearray()
    encoder.encode([(b"x-a", b"1" * 100)], out)
    encoder.set_table_size(0)
    encoder.set_table_size(64)
    out2 = bytearray()
    encoder.encode([(b"x-a", b"1" * 100), (b"x-b", b"2")], out2)
    assert out2[:2] == b"\x20\x3f" and out2[2] == 0x21  # 0, then 64 (5-bit prefix: 31 + 33)
    reader = hpack.Decoder()
    reader.decode(bytes(out), raw=True)
    assert reader.decode(bytes(out2), raw=True) == [(b"x-a", b"1" * 100), (b"x-b", b"2")]
    assert encoder.size <= 64


field_bytes = st.binary(min_size=0, max_size=60)
names = st.sampled_from([b"x-a", b"x-b", b"etag", b"content-type", b"date", b"set-cookie"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(names, field_bytes), max_size=12), max_size=6),
       st.booleans(), st.sampled_from([0, 100, 256, 4096]))  # fmt: skip
def test_round_trips_with_the_hpack_package(
    blocks: list[Fields], huffman: bool, table: int
) -> None:
    encoder = Encoder(huffman=huffman)
    reader = hpack.Decoder()
    mine = Decoder(1 << 20)
    other = hpack.Encoder()
    if table != 4096:
        encoder.set_table_size(table)
        reader.header_table_size = table
    for fields in blocks:
        out = bytearray()
        encoder.encode(fields, out)
        assert reader.decode(bytes(out), raw=True) == fields
        theirs = other.encode(fields, huffman=huffman)
        assert decoded(mine, theirs) == fields


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_huffman_round_trip_and_arbitrary_blocks_never_raise(data: bytes) -> None:
    assert huffman_decode(huffman_encode(data)) == data
    fields: Fields = []
    assert Decoder(4096).decode(data, fields) in (0, COMPRESSION_ERROR, ENHANCE_YOUR_CALM)


@pytest.mark.parametrize(
    "block, why",
    [
        (b"\x80", "index 0"),
        (b"\xbe", "past the table"),  # dynamic 62 in an empty table
        (b"\xff\xff\xff\xff\xff\x7f", "integer too large"),
        (b"\xff\x80", "truncated integer"),
        (b"\x40\x05abc", "past the end"),
        (b"\x40", "truncated string"),
        (b"\x00\x81\xff\x01x", "Huffman"),  # 8 bits of padding
        (b"\x00\x81\x00\x01x", "Huffman"),  # padding not of 1s ('0' then 0 bits)
        (b"\x00\x84\xff\xff\xff\xff\x01x", "Huffman"),  # EOS (30 1s) in the string
        (b"\x3f\xe2\x1f", "table size"),  # 4096 + 1
        (b"\x82\x20", "after a field"),
    ],
)
def test_hostile_blocks_are_compression_errors(block: bytes, why: str) -> None:
    decoder = Decoder(65536)
    fields: Fields = []
    assert decoder.decode(block, fields) == COMPRESSION_ERROR
    assert why in decoder.message


def test_an_hpack_bomb_stops_at_the_list_limit() -> None:
    """One 4 KiB entry named 100 times: a 4 KiB block that would decode to 400 KiB."""
    block = b"\x40\x06x-bomb\x7f\xa1\x1e" + b"b" * 4000 + b"\xbe" * 100
    decoder = Decoder(16384)
    fields: Fields = []
    assert decoder.decode(block, fields) == ENHANCE_YOUR_CALM
    assert len(fields) < 5


def test_short_huffman_strings_are_remembered_but_never_a_bad_one() -> None:
    # the shared memo of short strings gives what the decoder gives, and a bad coding
    # is refused every time (it is not remembered)
    good = hpack_module.huffman_encode(b"/static/one.bin")
    assert hpack_module.huffman_decode_short(good) == b"/static/one.bin"
    assert hpack_module.huffman_decode_short(good) == b"/static/one.bin"
    assert good in hpack_module._DECODED
    bad = b"\xff\xff\xff\xff"  # EOS inside
    assert hpack_module.huffman_decode_short(bad) is None
    assert hpack_module.huffman_decode_short(bad) is None
    assert bad not in hpack_module._DECODED
    long = hpack_module.huffman_encode(b"x" * 200)
    assert hpack_module.huffman_decode_short(long) == b"x" * 200
    assert long not in hpack_module._DECODED
