"""HPACK, the header compression of HTTP/2 (RFC 7541): a decoder for request header
blocks and an encoder for response ones. Bytes in, fields out, and back: no sockets.

The decoder answers a bad block with an error code (COMPRESSION_ERROR, or
ENHANCE_YOUR_CALM for a block that expands past the header list limit: an HPACK bomb)
and a message, not an exception: the connection that feeds it ends the connection.
Huffman-coded strings are decoded four bits at a time through a state table made once
at import from the code table of RFC 7541 Appendix B.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = [
    "COMPRESSION_ERROR",
    "ENHANCE_YOUR_CALM",
    "STATIC_TABLE",
    "Decoder",
    "Encoder",
    "huffman_decode",
    "huffman_encode",
]

#: the HTTP/2 error codes a decoder answers with (RFC 9113 7)
COMPRESSION_ERROR: Final = 9
ENHANCE_YOUR_CALM: Final = 11

#: the dynamic table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's default)
DEFAULT_TABLE_SIZE: Final = 4096
#: what an entry costs in a table besides its name and value (RFC 7541 4.1)
ENTRY_OVERHEAD: Final = 32
#: an integer longer than this many bits is refused (no field, table or length needs more)
_MAX_INTEGER_SHIFT: Final = 28

# fmt: off
#: RFC 7541 Appendix A; index 1 is the first entry
STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b':authority', b''),
    (b':method', b'GET'),
    (b':method', b'POST'),
    (b':path', b'/'),
    (b':path', b'/index.html'),
    (b':scheme', b'http'),
    (b':scheme', b'https'),
    (b':status', b'200'),
    (b':status', b'204'),
    (b':status', b'206'),
    (b':status', b'304'),
    (b':status', b'400'),
    (b':status', b'404'),
    (b':status', b'500'),
    (b'accept-charset', b''),
    (b'accept-encoding', b'gzip, deflate'),
    (b'accept-language', b''),
    (b'accept-ranges', b''),
    (b'accept', b''),
    (b'access-control-allow-origin', b''),
    (b'age', b''),
    (b'allow', b''),
    (b'authorization', b''),
    (b'cache-control', b''),
    (b'content-disposition', b''),
    (b'content-encoding', b''),
    (b'content-language', b''),
    (b'content-length', b''),
    (b'content-location', b''),
    (b'content-range', b''),
    (b'content-type', b''),
    (b'cookie', b''),
    (b'date', b''),
    (b'etag', b''),
    (b'expect', b''),
    (b'expires', b''),
    (b'from', b''),
    (b'host', b''),
    (b'if-match', b''),
    (b'if-modified-since', b''),
    (b'if-none-match', b''),
    (b'if-range', b''),
    (b'if-unmodified-since', b''),
    (b'last-modified', b''),
    (b'link', b''),
    (b'location', b''),
    (b'max-forwards', b''),
    (b'proxy-authenticate', b''),
    (b'proxy-authorization', b''),
    (b'range', b''),
    (b'referer', b''),
    (b'refresh', b''),
    (b'retry-after', b''),
    (b'server', b''),
    (b'set-cookie', b''),
    (b'strict-transport-security', b''),
    (b'transfer-encoding', b''),
    (b'user-agent', b''),
    (b'vary', b''),
    (b'via', b''),
    (b'www-authenticate', b''),
)
#: the Huffman code of each symbol (0-255, 256 is EOS) and its length in bits (RFC 7541 B)
_HUFFMAN: Final[tuple[tuple[int, int], ...]] = (
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
)
# fmt: on

_STATIC_SIZE: Final = len(STATIC_TABLE)
#: the first static index of each (name, value) and of each name
_STATIC_FIELDS: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _index, _field in enumerate(STATIC_TABLE, 1):
    _STATIC_FIELDS.setdefault(_field, _index)
    _STATIC_NAMES.setdefault(_field[0], _index)

# The Huffman decoding table: for each state (an inner node of the code tree) and each
# 4-bit piece of input, one int: the next state in the low 8 bits, the symbol completed
# (if any) in the next 8, and the flags below.
_EMIT: Final = 1 << 16
_FAIL: Final = 1 << 17
#: the state is where a string may end: the root, or up to 7 bits of 1s into a code
#: (the padding of RFC 7541 5.2)
_ACCEPT: Final = 1 << 18
_EOS: Final = 256


def _huffman_table() -> list[int]:
    """The decoding table, built from the code table."""
    # children[node] = [child for bit 0, child for bit 1]: >= 0 an inner node, else a
    # leaf holding symbol -child - 1; -0 cannot be told apart, so leaves are offset
    children: list[list[int]] = [[0, 0]]
    for symbol, (code, length) in enumerate(_HUFFMAN):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit] = -symbol - 1
            else:
                if children[node][bit] == 0:
                    children.append([0, 0])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    accepting = {0}
    node = 0
    for _ in range(7):
        node = children[node][1]
        if node < 0:
            break
        accepting.add(node)
    table: list[int] = []
    for state in range(len(children)):
        for nibble in range(16):
            node = state
            entry = 0
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child < 0:
                    symbol = -child - 1
                    if symbol == _EOS:
                        entry |= _FAIL
                        break
                    entry |= _EMIT | (symbol << 8)
                    node = 0
                else:
                    node = child
            entry |= node
            if node in accepting:
                entry |= _ACCEPT
            table.append(entry)
    return table


_DECODE: Final = _huffman_table()


def huffman_decode(data: bytes) -> bytes | None:
    """The string Huffman-coded in ``data``; None when it is not a valid coding (EOS in
    it, or padding that is not 1s or is 8 bits or longer)."""
    table = _DECODE
    out = bytearray()
    state = 0
    entry = _ACCEPT
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry & _FAIL:
            return None
        if entry & _EMIT:
            out.append((entry >> 8) & 0xFF)
        entry = table[((entry & 0xFF) << 4) | (byte & 0xF)]
        if entry & _FAIL:
            return None
        if entry & _EMIT:
            out.append((entry >> 8) & 0xFF)
        state = entry & 0xFF
    if not entry & _ACCEPT:
        return None
    return bytes(out)


#: short Huffman-coded strings decoded before (a client's paths, its user agent: the
#: literals a client sends request after request without indexing them), shared by
#: every connection; emptied when full
_DECODED: Final[dict[bytes, bytes]] = {}
DECODED_STRINGS: Final = 1024
DECODED_LENGTH: Final = 64


def huffman_decode_short(data: bytes) -> bytes | None:
    """:func:`huffman_decode`, remembered for strings of up to DECODED_LENGTH bytes."""
    if len(data) > DECODED_LENGTH:
        return huffman_decode(data)
    decoded = _DECODED.get(data)
    if decoded is None:
        decoded = huffman_decode(data)
        if decoded is not None:
            if len(_DECODED) >= DECODED_STRINGS:
                _DECODED.clear()
            _DECODED[data] = decoded
    return decoded


def huffman_encode(data: bytes) -> bytes:
    """``data`` Huffman-coded, padded with 1s to a whole byte."""
    codes = _HUFFMAN
    out = bytearray()
    bits = 0
    count = 0
    for byte in data:
        code, length = codes[byte]
        bits = (bits << length) | code
        count += length
        while count >= 8:
            count -= 8
            out.append((bits >> count) & 0xFF)
        bits &= (1 << count) - 1
    if count:
        out.append(((bits << (8 - count)) | (0xFF >> count)) & 0xFF)
    return bytes(out)


def encode_integer(out: bytearray, first: int, value: int, prefix: int) -> None:
    """``value`` with a ``prefix``-bit prefix, the first byte's other bits ``first``."""
    limit = (1 << prefix) - 1
    if value < limit:
        out.append(first | value)
        return
    out.append(first | limit)
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _encode_string(out: bytearray, value: bytes, huffman: bool) -> None:
    if huffman:
        coded = huffman_encode(value)
        if len(coded) < len(value):
            encode_integer(out, 0x80, len(coded), 7)
            out += coded
            return
    encode_integer(out, 0, len(value), 7)
    out += value


class Decoder:
    """The decoding side of one connection's HPACK context (a client's requests)."""

    __slots__ = ("max_list_size", "max_table_size", "table_size", "size", "entries", "message")

    def __init__(self, max_list_size: int, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        #: the decoded size (RFC 9113's: names, values and 32 a field) a block may reach
        self.max_list_size = max_list_size
        #: what our SETTINGS_HEADER_TABLE_SIZE allows; the size the peer chose (<= it)
        self.max_table_size = max_table_size
        self.table_size = max_table_size
        self.size = 0
        #: the dynamic table, the newest entry last
        self.entries: deque[tuple[bytes, bytes]] = deque()
        #: what was wrong with the last block refused
        self.message = ""

    def decode(self, block: bytes, fields: list[tuple[bytes, bytes]]) -> int:
        """Append the fields of ``block`` to ``fields``; 0, or the error code of a block
        refused (``message`` says why). After an error the context is unusable."""
        end = len(block)
        pos = 0
        total = 0
        seen_field = False
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field (6.1)
                index = byte & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = self._integer(block, pos, index)
                    if pos < 0:
                        return COMPRESSION_ERROR
                if index == 0:
                    return self._refuse("index 0")
                field = self._entry(index)
                if field is None:
                    return COMPRESSION_ERROR
                name, value = field
            elif byte & 0xE0 == 0x20:  # dynamic table size update (6.3)
                if seen_field:
                    return self._refuse("a table size update after a field")
                size = byte & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = self._integer(block, pos, size)
                    if pos < 0:
                        return COMPRESSION_ERROR
                if size > self.max_table_size:
                    return self._refuse(f"table size {size} past {self.max_table_size}")
                self.table_size = size
                self._evict(0)
                continue
            else:
                # a literal: with incremental indexing (6.2.1, 6-bit index), else without
                # or never indexed (6.2.2, 6.2.3, 4-bit index)
                indexing = byte & 0xC0 == 0x40
                mask = 0x3F if indexing else 0x0F
                index = byte & mask
                pos += 1
                if index == mask:
                    index, pos = self._integer(block, pos, index)
                    if pos < 0:
                        return COMPRESSION_ERROR
                if index:
                    field = self._entry(index)
                    if field is None:
                        return COMPRESSION_ERROR
                    name = field[0]
                else:
                    literal, pos = self._string(block, pos)
                    if literal is None:
                        return COMPRESSION_ERROR
                    name = literal
                literal, pos = self._string(block, pos)
                if literal is None:
                    return COMPRESSION_ERROR
                value = literal
                if indexing:
                    self._add(name, value)
            seen_field = True
            total += len(name) + len(value) + ENTRY_OVERHEAD
            if total > self.max_list_size:
                self.message = f"a header list past {self.max_list_size} bytes decoded"
                return ENHANCE_YOUR_CALM
            fields.append((name, value))
        return 0

    def _refuse(self, message: str) -> int:
        self.message = message
        return COMPRESSION_ERROR

    def _integer(self, block: bytes, pos: int, value: int) -> tuple[int, int]:
        """The rest of an integer that filled its prefix (``value`` so far), and the
        position after it; position -1 for a truncated or oversized one."""
        shift = 0
        end = len(block)
        while True:
            if pos >= end:
                self.message = "a truncated integer"
                return 0, -1
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
            if shift >= _MAX_INTEGER_SHIFT:
                self.message = "an integer too large"
                return 0, -1

    def _string(self, block: bytes, pos: int) -> tuple[bytes | None, int]:
        if pos >= len(block):
            self.message = "a truncated string"
            return None, pos
        byte = block[pos]
        length = byte & 0x7F
        pos += 1
        if length == 0x7F:
            length, pos = self._integer(block, pos, length)
            if pos < 0:
                return None, pos
        end = pos + length
        if end > len(block):
            self.message = "a string past the end of the block"
            return None, pos
        raw = block[pos:end]
        if byte & 0x80:
            decoded = huffman_decode_short(raw)
            if decoded is None:
                self.message = "a bad Huffman coding"
            return decoded, end
        return raw, end

    def _entry(self, index: int) -> tuple[bytes, bytes] | None:
        if index <= _STATIC_SIZE:
            return STATIC_TABLE[index - 1]
        dynamic = index - _STATIC_SIZE
        entries = self.entries
        if dynamic > len(entries):
            self.message = f"index {index} past the table"
            return None
        return entries[len(entries) - dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        self._evict(size)
        if size <= self.table_size:
            self.entries.append((name, value))
            self.size += size
        # else: an entry larger than the table empties it and is not kept (4.4)

    def _evict(self, room: int) -> None:
        entries = self.entries
        while entries and self.size + room > self.table_size:
            name, value = entries.popleft()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD


class Encoder:
    """The encoding side of one connection's HPACK context (our responses): a field seen
    before is sent as its index in the dynamic table (one byte for the newest 66)."""

    __slots__ = (
        "table_size", "size", "entries", "inserted", "fields", "names", "pending", "huffman"
    )  # fmt: skip

    def __init__(self, table_size: int = DEFAULT_TABLE_SIZE, huffman: bool = False) -> None:
        self.table_size = table_size
        self.size = 0
        #: the dynamic table, oldest first: (name, value, insertion number)
        self.entries: deque[tuple[bytes, bytes, int]] = deque()
        self.inserted = 0
        #: the insertion number of the newest entry of each (name, value) and each name
        self.fields: dict[tuple[bytes, bytes], int] = {}
        self.names: dict[bytes, int] = {}
        #: table sizes to announce at the start of the next block (smallest, then last)
        self.pending: list[int] = []
        #: literals Huffman-coded (when shorter)
        self.huffman = huffman

    def set_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: the table is kept within it (and within
        the default), the change announced in the next block."""
        size = min(size, DEFAULT_TABLE_SIZE)
        if size == self.table_size and not self.pending:
            return
        self.table_size = size
        self._evict(0)
        pending = self.pending
        if not pending:
            pending.append(size)
        elif len(pending) == 1:
            if size < pending[0]:
                pending[0] = size
            else:
                pending.append(size)
        else:
            if size < pending[0]:
                pending[0] = size
            pending[1] = size

    def encode(self, headers: list[tuple[bytes, bytes]], out: bytearray) -> None:
        """Append the header block of ``headers`` (names in lower case) to ``out``."""
        if self.pending:
            for size in self.pending:
                encode_integer(out, 0x20, size, 5)
            self.pending = []
        for name, value in headers:
            self.encode_field(name, value, out)

    def encode_field(self, name: bytes, value: bytes, out: bytearray) -> None:
        """Append one field's representation to ``out``."""
        key = (name, value)
        # the dynamic table first: most of a response's fields are found there, and a
        # field of the static table is never added to it (so the order changes nothing)
        number = self.fields.get(key, -1)
        if number >= 0:
            encode_integer(out, 0x80, _STATIC_SIZE + self.inserted - number, 7)
            return
        index = _STATIC_FIELDS.get(key, 0)
        if index:
            encode_integer(out, 0x80, index, 7)
            return
        index = _STATIC_NAMES.get(name, 0)
        if not index:
            number = self.names.get(name, -1)
            if number >= 0:
                index = _STATIC_SIZE + self.inserted - number
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if name == b"set-cookie" or size > self.table_size // 2:
            # a cookie is not worth remembering, and a large field would empty the table
            encode_integer(out, 0, index, 4)
            indexed = False
        else:
            encode_integer(out, 0x40, index, 6)
            indexed = True
        if not index:
            _encode_string(out, name, self.huffman)
        _encode_string(out, value, self.huffman)
        if indexed:
            self._evict(size)
            number = self.inserted
            self.inserted = number + 1
            self.entries.append((name, value, number))
            self.size += size
            self.fields[key] = number
            self.names[name] = number

    def _evict(self, room: int) -> None:
        entries = self.entries
        while entries and self.size + room > self.table_size:
            name, value, number = entries.popleft()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD
            key = (name, value)
            if self.fields.get(key, -1) == number:
                del self.fields[key]
            if self.names.get(name, -1) == number:
                del self.names[name]
