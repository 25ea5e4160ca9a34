"""FastCGI 1.0 (as nginx's fastcgi_pass and php-fpm speak it), sans-I/O.

A record is an 8-byte header (version: u8 = 1, type: u8, request id: u16 BE,
content length: u16 BE, padding length: u8, reserved: u8), then the content and the
padding. A request is FCGI_BEGIN_REQUEST, a stream of FCGI_PARAMS records (name-value
pairs, each length 1 byte below 128, else 4 bytes with the top bit set) ended by an
empty one, then FCGI_STDIN records ended by an empty one. The answer is FCGI_STDOUT
and FCGI_STDERR records, then FCGI_END_REQUEST.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "BEGIN_REQUEST",
    "END_REQUEST",
    "EndRequest",
    "FastCGIProtocolError",
    "KEEP_CONN",
    "MAX_CONTENT",
    "PARAMS",
    "REQUEST_COMPLETE",
    "RESPONDER",
    "Record",
    "RecordDecoder",
    "STDERR",
    "STDIN",
    "STDOUT",
    "begin_request",
    "decode_pairs",
    "encode_pairs",
    "encode_record",
    "end_request",
    "parse_cgi_head",
    "parse_end_request",
    "stream_records",
]

VERSION: Final = 1
BEGIN_REQUEST: Final = 1
ABORT_REQUEST: Final = 2
END_REQUEST: Final = 3
PARAMS: Final = 4
STDIN: Final = 5
STDOUT: Final = 6
STDERR: Final = 7
DATA: Final = 8
GET_VALUES: Final = 9
GET_VALUES_RESULT: Final = 10
UNKNOWN_TYPE: Final = 11
#: the role of a request the front sends: the app answers it as a CGI script would
RESPONDER: Final = 1
#: FCGI_BEGIN_REQUEST flag: the app keeps the connection open after the request
KEEP_CONN: Final = 1
#: FCGI_END_REQUEST protocol statuses
REQUEST_COMPLETE: Final = 0
CANT_MPX_CONN: Final = 1
OVERLOADED: Final = 2
UNKNOWN_ROLE: Final = 3
#: the most content one record carries: a multiple of 8 below 65535, so a full record
#: needs no padding (64 KiB less 8)
MAX_CONTENT: Final = 65528
#: a name-value pair block the decoder accepts (peer-filled: bounded)
MAX_PAIRS_SIZE: Final = 1 << 20

_header: Final = struct.Struct(">BBHHBx")
_end_body: Final = struct.Struct(">IB3x")
_begin_body: Final = struct.Struct(">HB5x")
_u32: Final = struct.Struct(">I")
_HEADER_SIZE: Final = 8
_PADDING: Final = bytes(8)


class FastCGIProtocolError(Exception):
    """A malformed FastCGI record or pair block; the connection cannot be trusted further."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Record(NamedTuple):
    """One decoded record: its type, request id and content (padding dropped)."""

    type: int
    request_id: int
    content: bytes


def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes; ValueError past MAX_CONTENT bytes of
    content or for an out-of-range type or request id."""
    if len(content) > 0xFFFF:
        raise ValueError("FastCGI record content longer than 65535 bytes")
    if not (0 < record_type <= 255 and 0 <= request_id <= 0xFFFF):
        raise ValueError("FastCGI record type or request id out of range")
    padding = -len(content) % 8
    return (
        _header.pack(VERSION, record_type, request_id, len(content), padding)
        + content
        + _PADDING[:padding]
    )


def begin_request(request_id: int, keep_conn: bool, role: int = RESPONDER) -> bytes:
    """The FCGI_BEGIN_REQUEST record opening a request."""
    body = _begin_body.pack(role, KEEP_CONN if keep_conn else 0)
    return encode_record(BEGIN_REQUEST, request_id, body)


def end_request(request_id: int, app_status: int = 0, protocol_status: int = 0) -> bytes:
    """The FCGI_END_REQUEST record closing a request (an application's side)."""
    return encode_record(END_REQUEST, request_id, _end_body.pack(app_status, protocol_status))


def stream_records(record_type: int, request_id: int, data: bytes) -> bytes:
    """``data`` as records of a stream (PARAMS, STDIN, STDOUT, STDERR), at most
    MAX_CONTENT bytes each; empty ``data`` is the empty record that ends the stream."""
    if not data:
        return encode_record(record_type, request_id)
    view = memoryview(data)
    return b"".join(
        [
            encode_record(record_type, request_id, bytes(view[at : at + MAX_CONTENT]))
            for at in range(0, len(data), MAX_CONTENT)
        ]
    )


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    if size > 0x7FFFFFFF:
        raise ValueError("FastCGI name or value longer than 2**31 - 1 bytes")
    return _u32.pack(size | 0x80000000)


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The name-value pair block of ``pairs`` (the content of the PARAMS stream)."""
    parts: list[bytes] = []
    for name, value in pairs:
        size, value_size = len(name), len(value)
        if size < 0x80 and value_size < 0x80:
            # the common pair: both lengths in one byte each, one small bytes object
            parts += (bytes((size, value_size)), name, value)
        else:
            parts += (_length(size), _length(value_size), name, value)
    return b"".join(parts)


def decode_pairs(block: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
    """Split a name-value pair block into (name, value); FastCGIProtocolError if malformed."""
    data = bytes(block)
    if len(data) > MAX_PAIRS_SIZE:
        raise FastCGIProtocolError("name-value pairs larger than the limit")
    end = len(data)
    pairs: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < end:
        sizes = []
        for _ in range(2):
            if pos >= end:
                raise FastCGIProtocolError("truncated name-value length")
            if data[pos] & 0x80:
                if pos + 4 > end:
                    raise FastCGIProtocolError("truncated 4-byte name-value length")
                sizes.append(_u32.unpack_from(data, pos)[0] & 0x7FFFFFFF)
                pos += 4
            else:
                sizes.append(data[pos])
                pos += 1
        name_end = pos + sizes[0]
        value_end = name_end + sizes[1]
        if value_end > end:
            raise FastCGIProtocolError("name or value runs past the block")
        pairs.append((data[pos:name_end], data[name_end:value_end]))
        pos = value_end
    return pairs


class EndRequest(NamedTuple):
    """The body of FCGI_END_REQUEST."""

    app_status: int
    protocol_status: int


def parse_end_request(content: bytes) -> EndRequest:
    """The statuses of an FCGI_END_REQUEST record's content (the decoder checked its size)."""
    app_status, protocol_status = _end_body.unpack(content)
    return EndRequest(app_status, protocol_status)


#: content sizes a record type must have (the others carry streams of any size)
_FIXED_SIZES: Final = {BEGIN_REQUEST: 8, END_REQUEST: 8, UNKNOWN_TYPE: 8, ABORT_REQUEST: 0}


class RecordDecoder:
    """Records out of a byte stream. ``feed`` keeps at most one incomplete record
    (8 + 65535 + 255 bytes) beyond what it is given, and raises FastCGIProtocolError
    (only that) on a malformed header."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Record]:
        """The whole records that ``data`` completes, in order."""
        buffer = self._buffer
        buffer += data
        records: list[Record] = []
        pos = 0
        end = len(buffer)
        while end - pos >= _HEADER_SIZE:
            version, record_type, request_id, length, padding = _header.unpack_from(buffer, pos)
            if version != VERSION:
                raise FastCGIProtocolError(f"FastCGI version {version}, not 1")
            if not BEGIN_REQUEST <= record_type <= UNKNOWN_TYPE:
                raise FastCGIProtocolError(f"unknown FastCGI record type {record_type}")
            size = _FIXED_SIZES.get(record_type)
            if size is not None and length != size:
                raise FastCGIProtocolError(f"record type {record_type} of {length} bytes")
            record_end = pos + _HEADER_SIZE + length + padding
            if record_end > end:
                break
            content = bytes(buffer[pos + _HEADER_SIZE : pos + _HEADER_SIZE + length])
            records.append(Record(record_type, request_id, content))
            pos = record_end
        if pos:
            del buffer[:pos]
        return records

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete record (0 between records)."""
        return len(self._buffer)


class CGIHead(NamedTuple):
    """A CGI response head (the start of the STDOUT stream): the status its ``Status:``
    field gives (302 for a ``Location:`` without one, else 200), its reason, the other
    fields, and the body bytes that came after it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    rest: bytes


def parse_cgi_head(buffer: bytes) -> CGIHead | None:
    """The CGI head at the start of ``buffer`` (lines ending in CRLF or LF, up to an
    empty line); None while it is incomplete; FastCGIProtocolError if malformed. The
    caller bounds ``buffer``."""
    end = buffer.find(b"\r\n\r\n")
    lf_end = buffer.find(b"\n\n")
    if lf_end != -1 and (end == -1 or lf_end < end):
        head, rest = buffer[:lf_end], buffer[lf_end + 2 :]
    elif end != -1:
        head, rest = buffer[:end], buffer[end + 4 :]
    else:
        return None
    status = 0
    reason = b""
    headers: list[tuple[bytes, bytes]] = []
    location = False
    for line in head.split(b"\n") if head else []:
        line = line.rstrip(b"\r")
        name, colon, value = line.partition(b":")
        name = name.strip()
        if not colon or not name or any(c <= 32 or c >= 127 for c in name):
            raise FastCGIProtocolError(f"malformed CGI header line {line[:80]!r}")
        value = value.strip()
        # ints: `bytes in bytes` first tries its operand as an int (a TypeError raised
        # and dropped each time, ~150 ns)
        if 13 in value or 0 in value:
            raise FastCGIProtocolError("a CR or NUL in a CGI header value")
        lname = name.lower()
        if lname == b"status":
            code, _, text = value.partition(b" ")
            if not (len(code) == 3 and code.isdigit() and 100 <= int(code) <= 599):
                raise FastCGIProtocolError(f"CGI Status {value[:40]!r} is not a status")
            status, reason = int(code), text.strip()
            continue
        if lname == b"location":
            location = True
        headers.append((name, value))
    if not status:
        status = 302 if location else 200
    return CGIHead(status, reason, headers, rest)
