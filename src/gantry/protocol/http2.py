"""HTTP/2's framing and a server connection's state (RFC 9113), sans-I/O.

:class:`ServerConnection` is fed the client's bytes and hands back events (a request's
head, body data, resets, window updates ...); what the server says (its SETTINGS, the
acknowledgements, response heads and bodies, window updates, RST_STREAM, GOAWAY) is
gathered in one buffer taken with :meth:`ServerConnection.data_to_send`. Errors are not
raised: a connection error queues a GOAWAY with its code and ends in a
:class:`ConnectionFailed` event; a stream error queues a RST_STREAM. Header blocks are
decoded by :mod:`gantry.protocol.hpack`; a block (HEADERS and its CONTINUATIONs) is
refused as soon as its frames announce more than the header limit, before they are
read (CVE-2024-27316 and its siblings).
"""

from __future__ import annotations

import struct
from typing import Final

from gantry.protocol.hpack import Decoder, Encoder

#: how many of the last opened stream ids are remembered (RFC 9113 5.1.1's check)
_RECENT: Final = 64

__all__ = [
    "PREFACE",
    "ConnectionFailed",
    "Data",
    "Event",
    "GoawayReceived",
    "PingReceived",
    "Request",
    "Reset",
    "ServerConnection",
    "SettingsChanged",
    "WindowOpened",
    "error_name",
]

#: what an HTTP/2 client sends first (RFC 9113 3.4)
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (6)
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# error codes (7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

_ERROR_NAMES: Final = (
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
    "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
)  # fmt: skip

# settings (6.5.2)
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

#: the window every stream and the connection start with, and the largest frame payload,
#: until SETTINGS say otherwise
DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
MAX_FRAME_SIZE: Final = (1 << 24) - 1
MAX_WINDOW: Final = (1 << 31) - 1

#: fields that are the HTTP/1 connection's, not the message's (RFC 9113 8.2.2)
CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
#: request field names known to be well-formed (the others are checked byte by byte)
_KNOWN_NAMES: Final = frozenset(
    {
        b"accept", b"accept-encoding", b"accept-language", b"cache-control", b"content-type",
        b"content-length", b"cookie", b"host", b"if-modified-since", b"if-none-match",
        b"origin", b"pragma", b"priority", b"range", b"referer", b"user-agent",
        b"sec-fetch-dest", b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-user",
        b"sec-ch-ua", b"sec-ch-ua-mobile", b"sec-ch-ua-platform", b"upgrade-insecure-requests",
        b"authorization", b"x-forwarded-for", b"x-requested-with", b"te",
    }
)  # fmt: skip
#: request fields not passed on as they came (see _request)
_FOLDED: Final = frozenset({b"cookie", b"host", b"content-length", b"expect"})
#: what holds the Host field's place in a request's fields until the end of the block
_NO_FIELD: Final = (b"", b"")
#: the bytes a field name may hold (RFC 9110 5.6.2's token characters, in lower case)
_NAME_BYTES: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def error_name(code: int) -> str:
    """The name of an HTTP/2 error code (for logs)."""
    if 0 <= code < len(_ERROR_NAMES):
        return _ERROR_NAMES[code]
    return f"0x{code:x}"


#: a frame's header (4.1): the 24-bit length as a byte and 16 bits, type, flags, stream
_FRAME_HEAD: Final = struct.Struct(">BHBBI")


class Event:
    """Something the client said, for the server to act on."""

    __slots__ = ()


class Request(Event):
    """A request's head on a new stream: the pseudo-header fields apart, the others in
    ``fields`` as an HTTP/1.1 head would carry them (names in lower case; see
    ``_request``); ``host``: :authority, else the Host field (b"" when neither);
    ``end``: the request has no body."""

    __slots__ = ("stream_id", "method", "scheme", "path", "authority", "host", "fields",
                 "content_length", "end")  # fmt: skip

    def __init__(
        self,
        stream_id: int,
        method: bytes,
        scheme: bytes,
        path: bytes,
        authority: bytes,
        host: bytes,
        fields: list[tuple[bytes, bytes]],
        content_length: int,
        end: bool,
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.scheme = scheme
        self.path = path
        self.authority = authority
        self.host = host
        self.fields = fields
        #: -1 when the request has no Content-Length
        self.content_length = content_length
        self.end = end


class Data(Event):
    """A piece of a request body (``flow``: what it cost the windows, padding included,
    to be acknowledged when taken); ``end``: the body is complete (trailers, if any,
    are dropped)."""

    __slots__ = ("stream_id", "data", "flow", "end")

    def __init__(self, stream_id: int, data: bytes, flow: int, end: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow = flow
        self.end = end


class Reset(Event):
    """A stream ended early: reset by the client (``remote``), or by the codec for a
    malformed request (``message`` says what was wrong)."""

    __slots__ = ("stream_id", "code", "remote", "message")

    def __init__(self, stream_id: int, code: int, remote: bool, message: str = "") -> None:
        self.stream_id = stream_id
        self.code = code
        self.remote = remote
        self.message = message


class WindowOpened(Event):
    """The client opened a stream's send window (0: the connection's)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class SettingsChanged(Event):
    """The client's SETTINGS (acknowledged); ``window``: its initial window changed."""

    __slots__ = ("window",)

    def __init__(self, window: bool) -> None:
        self.window = window


class PingReceived(Event):
    """A PING (answered)."""

    __slots__ = ()


class GoawayReceived(Event):
    """The client is going away."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


class ConnectionFailed(Event):
    """The client broke the protocol: a GOAWAY with ``code`` is queued; nothing more is
    read."""

    __slots__ = ("code", "message")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


class _Stream:
    """What the codec keeps of a stream that is open or half-closed."""

    __slots__ = ("send_window", "recv_window", "unacked", "remote_closed", "local_closed",
                 "content_length", "received")  # fmt: skip

    def __init__(self, send_window: int, recv_window: int, content_length: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        #: body bytes taken but not yet given back to the client's window
        self.unacked = 0
        self.remote_closed = False
        self.local_closed = False
        self.content_length = content_length
        self.received = 0


def _frame_head(out: bytearray, length: int, kind: int, flags: int, stream_id: int) -> None:
    out += _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class ServerConnection:
    """The server side of one HTTP/2 connection: bytes in, events out, bytes to send.

    ``max_streams``, ``max_header_size``, ``stream_window`` are announced in our
    SETTINGS and enforced; ``connection_window`` is the connection's receive window."""

    def __init__(
        self,
        max_streams: int,
        max_header_size: int,
        stream_window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        preface: bool = True,
    ) -> None:
        self.max_streams = max_streams
        self.max_header_size = max_header_size
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.decoder = Decoder(max_header_size)
        self.encoder = Encoder()
        self.out = bytearray()
        self.streams: dict[int, _Stream] = {}
        #: the highest stream the client opened (any below it not in ``streams`` is closed)
        self.highest = 0
        #: the last streams the client opened, to tell a closed stream from an id the
        #: client skipped (RFC 9113 5.1.1: a HEADERS on that is a connection error)
        self._recent: list[int] = []
        #: a GOAWAY went out (or came): nothing more is read
        self.closed = False
        #: the client's SETTINGS as they stand
        self.max_frame_size = DEFAULT_FRAME_SIZE
        self.initial_window = DEFAULT_WINDOW
        #: the connection's windows: what we may send, what the client may still send
        self.send_window = DEFAULT_WINDOW
        self.recv_window = DEFAULT_WINDOW
        self.unacked = 0
        self._preface = len(PREFACE) if preface else 0
        self._pending = b""
        #: a header block being gathered (HEADERS without END_HEADERS, then CONTINUATIONs)
        self._block: bytearray | None = None
        self._block_stream = 0
        self._block_end = False
        self._events: list[Event] = []

    # what the server says ----------

    def initiate(self) -> None:
        """Our SETTINGS, and the connection window opened to ``connection_window``."""
        out = self.out
        _frame_head(out, 18, SETTINGS, 0, 0)
        for ident, value in (
            (SETTINGS_MAX_CONCURRENT_STREAMS, self.max_streams),
            (SETTINGS_INITIAL_WINDOW_SIZE, self.stream_window),
            (SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_size),
        ):
            out += ident.to_bytes(2, "big")
            out += value.to_bytes(4, "big")
        if self.connection_window > DEFAULT_WINDOW:
            self._window_update(0, self.connection_window - DEFAULT_WINDOW)
            self.recv_window = self.connection_window

    def data_to_send(self) -> bytes:
        """The bytes queued for the client, taken."""
        out = self.out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> bool:
        """A response head (``headers`` with :status first, names in lower case); False
        when the stream is gone."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or self.closed:
            return False
        out = self.out
        start = len(out)
        flags = END_HEADERS | END_STREAM if end else END_HEADERS
        _frame_head(out, 0, HEADERS, flags, stream_id)
        self.encoder.encode(headers, out)
        length = len(out) - start - 9
        if length <= self.max_frame_size:
            out[start : start + 3] = length.to_bytes(3, "big")
        else:
            # split into HEADERS and CONTINUATIONs of the client's frame size
            block = bytes(out[start + 9 :])
            del out[start:]
            size = self.max_frame_size
            first = END_STREAM if end else 0
            _frame_head(out, size, HEADERS, first, stream_id)
            out += block[:size]
            pos = size
            while pos < length:
                piece = block[pos : pos + size]
                pos += len(piece)
                _frame_head(out, len(piece), CONTINUATION, END_HEADERS if pos >= length else 0,
                            stream_id)  # fmt: skip
                out += piece
        if end:
            self._local_end(stream_id, stream)
        return True

    def window(self, stream_id: int) -> int:
        """How many body bytes ``stream_id`` may send now; -1 when the stream is gone."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return -1
        window = stream.send_window
        if self.send_window < window:
            window = self.send_window
        return window

    def send_data(self, stream_id: int, data: bytes, end: bool) -> bool:
        """A piece of a response body, within :meth:`window` and ``max_frame_size``; False
        when the stream is gone."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or self.closed:
            return False
        size = len(data)
        stream.send_window -= size
        self.send_window -= size
        out = self.out
        _frame_head(out, size, DATA, END_STREAM if end else 0, stream_id)
        out += data
        if end:
            self._local_end(stream_id, stream)
        return True

    def end_stream(self, stream_id: int) -> bool:
        """The response ends (an empty DATA with END_STREAM)."""
        return self.send_data(stream_id, b"", True)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM ``code``: the stream is closed."""
        if self.streams.pop(stream_id, None) is None or self.closed:
            return
        out = self.out
        _frame_head(out, 4, RST_STREAM, 0, stream_id)
        out += code.to_bytes(4, "big")

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes of ``stream_id``'s body were taken: the windows open again (a
        WINDOW_UPDATE once half a window is owed)."""
        if size <= 0 or self.closed:
            return
        self.unacked += size
        if self.unacked >= self.connection_window // 2:
            self.recv_window += self.unacked
            self._window_update(0, self.unacked)
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_closed:
            stream.unacked += size
            if stream.unacked >= self.stream_window // 2:
                stream.recv_window += stream.unacked
                self._window_update(stream_id, stream.unacked)
                stream.unacked = 0

    def goaway(self, code: int) -> None:
        """GOAWAY ``code`` (naming the last stream the client opened): nothing more is read."""
        if self.closed:
            return
        self.closed = True
        out = self.out
        _frame_head(out, 8, GOAWAY, 0, 0)
        out += self.highest.to_bytes(4, "big")
        out += code.to_bytes(4, "big")

    def _window_update(self, stream_id: int, increment: int) -> None:
        out = self.out
        _frame_head(out, 4, WINDOW_UPDATE, 0, stream_id)
        out += increment.to_bytes(4, "big")

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    # what the client says ----------

    def receive(self, data: bytes) -> list[Event]:
        """The events of ``data`` (the bytes that came from the client)."""
        events: list[Event] = []
        if self.closed:
            return events
        self._events = events
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos = 0
        end = len(data)
        if self._preface:
            done = len(PREFACE) - self._preface
            take = min(self._preface, end)
            if data[:take] != PREFACE[done : done + take]:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return events
            self._preface -= take
            pos = take
        limit = self.max_header_size
        while end - pos >= 9 and not self.closed:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            kind = data[pos + 3]
            flags = data[pos + 4]
            stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if length > DEFAULT_FRAME_SIZE:
                self._fail(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                break
            block = self._block
            if block is not None:
                if kind != CONTINUATION or stream_id != self._block_stream:
                    self._fail(PROTOCOL_ERROR, "a frame inside a header block")
                    break
                if len(block) + length > limit:
                    self._fail(ENHANCE_YOUR_CALM, "a header block past http2_max_header_size")
                    break
            elif kind == HEADERS and length > limit:
                self._fail(ENHANCE_YOUR_CALM, "a header block past http2_max_header_size")
                break
            if end - pos - 9 < length:
                break
            start = pos + 9
            pos = start + length
            payload = data[start:pos]
            if kind == DATA:
                self._data(stream_id, flags, payload)
            elif kind == HEADERS:
                self._headers(stream_id, flags, payload)
            elif kind == CONTINUATION:
                self._continuation(stream_id, flags, payload)
            elif kind == WINDOW_UPDATE:
                self._window_opened(stream_id, payload)
            elif kind == RST_STREAM:
                self._reset(stream_id, payload)
            elif kind == SETTINGS:
                self._settings(stream_id, flags, payload)
            elif kind == PING:
                self._ping(stream_id, flags, payload)
            elif kind == GOAWAY:
                if stream_id or length < 8:
                    self._fail(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "a bad GOAWAY")
                else:
                    self.closed = True
                    events.append(GoawayReceived(int.from_bytes(payload[4:8], "big")))
            elif kind == PRIORITY:
                if not stream_id:
                    self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
                elif length != 5:
                    self._fail(FRAME_SIZE_ERROR, "a PRIORITY frame not of 5 bytes")
            elif kind == PUSH_PROMISE:
                self._fail(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # other frame types are ignored (RFC 9113 4.1)
        if pos < end and not self.closed:
            self._pending = data[pos:]
        self._events = []
        return events

    def _fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY ``code``, and nothing more is read."""
        self.goaway(code)
        self._events.append(ConnectionFailed(code, message))

    def _stream_error(self, stream_id: int, code: int, message: str, known: bool) -> None:
        """A stream error: RST_STREAM ``code`` (the server is told when it knew the stream)."""
        out = self.out
        _frame_head(out, 4, RST_STREAM, 0, stream_id)
        out += code.to_bytes(4, "big")
        if self.streams.pop(stream_id, None) is not None and known:
            self._events.append(Reset(stream_id, code, False, message))

    def _unpad(self, flags: int, payload: bytes) -> bytes | None:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            self._fail(PROTOCOL_ERROR, "padding past the frame")
            return None
        return payload[1 : len(payload) - payload[0]]

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
            return
        flow = len(payload)
        self.recv_window -= flow
        if self.recv_window < 0:
            self._fail(FLOW_CONTROL_ERROR, "DATA past the connection's window")
            return
        data = self._unpad(flags, payload)
        if data is None:
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest:
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
                return
            # a stream closed (by a reset, maybe before the client heard of it): the
            # connection's window is given back, the data dropped
            self.acknowledge(0, flow)
            return
        if stream.remote_closed:
            self.acknowledge(0, flow)
            self._stream_error(stream_id, STREAM_CLOSED, "DATA after the end of the request", True)
            return
        stream.recv_window -= flow
        if stream.recv_window < 0:
            self._fail(FLOW_CONTROL_ERROR, f"DATA past stream {stream_id}'s window")
            return
        stream.received += len(data)
        end = flags & END_STREAM != 0
        if stream.content_length >= 0 and (
            stream.received > stream.content_length
            or end
            and stream.received != stream.content_length
        ):
            self.acknowledge(0, flow)
            self._stream_error(stream_id, PROTOCOL_ERROR, "a body not of its content-length", True)
            return
        if end:
            stream.remote_closed = True
            if stream.local_closed:
                del self.streams[stream_id]
        self._events.append(Data(stream_id, data, flow, end))

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id or not stream_id & 1:
            self._fail(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
            return
        fragment = self._unpad(flags, payload)
        if fragment is None:
            return
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                return
            fragment = fragment[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, fragment, flags & END_STREAM != 0)
        else:
            self._block = bytearray(fragment)
            self._block_stream = stream_id
            self._block_end = flags & END_STREAM != 0

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        block = self._block
        if block is None:
            self._fail(PROTOCOL_ERROR, "CONTINUATION outside a header block")
            return
        block += payload
        if flags & END_HEADERS:
            self._block = None
            self._header_block(stream_id, bytes(block), self._block_end)

    def _header_block(self, stream_id: int, block: bytes, end: bool) -> None:
        fields: list[tuple[bytes, bytes]] = []
        code = self.decoder.decode(block, fields)
        if code:
            self._fail(code, self.decoder.message)
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._trailers(stream_id, stream, fields, end)
            return
        if stream_id <= self.highest:
            if stream_id in self._recent:
                self._stream_error(stream_id, STREAM_CLOSED, "", False)
            else:
                # an id below the last one opened, never used: stream ids only grow
                self._fail(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, below {self.highest}")
            return
        self.highest = stream_id
        recent = self._recent
        if len(recent) >= _RECENT:
            del recent[: _RECENT // 2]
        recent.append(stream_id)
        if len(self.streams) >= self.max_streams:
            # RFC 9113 5.1.2: the stream is refused, the connection goes on (the client
            # may ask again once a stream ends); the server counts these as resets
            self._stream_error(stream_id, REFUSED_STREAM, "", False)
            self._events.append(Reset(stream_id, REFUSED_STREAM, False))
            return
        request = _request(stream_id, fields, end)
        if isinstance(request, str):
            self._stream_error(stream_id, PROTOCOL_ERROR, "", False)
            self._events.append(Reset(stream_id, PROTOCOL_ERROR, False, request))
            return
        stream = _Stream(self.initial_window, self.stream_window, request.content_length)
        stream.remote_closed = end
        self.streams[stream_id] = stream
        self._events.append(request)

    def _trailers(
        self, stream_id: int, stream: _Stream, fields: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        if stream.remote_closed:
            self._stream_error(stream_id, STREAM_CLOSED, "HEADERS after the end of the request",
                               True)  # fmt: skip
            return
        problem = "" if end else "trailers without END_STREAM"
        for name, _ in fields:
            if name[:1] == b":":
                problem = "a pseudo-header in trailers"
        if not problem and stream.content_length >= 0 and stream.received != stream.content_length:
            problem = "a body not of its content-length"
        if problem:
            self._stream_error(stream_id, PROTOCOL_ERROR, problem, True)
            return
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[stream_id]
        self._events.append(Data(stream_id, b"", 0, True))

    def _window_opened(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
            return
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                self._fail(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
                return
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
                return
            self._events.append(WindowOpened(0))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest:
                self._fail(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR, "a WINDOW_UPDATE of 0", True)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, "a window past 2^31-1", True)
            return
        self._events.append(WindowOpened(stream_id))

    def _reset(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "a RST_STREAM not of 4 bytes")
            return
        if not stream_id or stream_id > self.highest:
            self._fail(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        self.streams.pop(stream_id, None)
        # told of closed streams too: the server counts resets (Rapid Reset)
        self._events.append(Reset(stream_id, int.from_bytes(payload, "big"), True))

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
            return
        if flags & ACK:
            if payload:
                self._fail(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS not of 6-byte entries")
            return
        window_changed = False
        for pos in range(0, len(payload), 6):
            ident = (payload[pos] << 8) | payload[pos + 1]
            value = int.from_bytes(payload[pos + 2 : pos + 6], "big")
            if ident == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.set_table_size(value)
            elif ident == SETTINGS_ENABLE_PUSH:
                if value > 1:
                    self._fail(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
                    return
            elif ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
                    return
                delta = value - self.initial_window
                self.initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "a stream's window past 2^31-1")
                        return
                window_changed = True
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if value < DEFAULT_FRAME_SIZE or value > MAX_FRAME_SIZE:
                    self._fail(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                    return
                self.max_frame_size = value
            # the others (and unknown ones) ask nothing of a server that does not push
        _frame_head(self.out, 0, SETTINGS, ACK, 0)
        self._events.append(SettingsChanged(window_changed))

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            self._fail(PROTOCOL_ERROR, "PING on a stream")
            return
        if len(payload) != 8:
            self._fail(FRAME_SIZE_ERROR, "a PING not of 8 bytes")
            return
        if flags & ACK:
            return
        out = self.out
        _frame_head(out, 8, PING, ACK, 0)
        out += payload
        self._events.append(PingReceived())


def _request(stream_id: int, fields: list[tuple[bytes, bytes]], end: bool) -> Request | str:
    """The request of a header block, or what is malformed in it (RFC 9113 8.2, 8.3).

    Its fields are built here once, as an HTTP/1.1 head would carry them: Host first
    (:authority, else the first Host field), the Cookie fields joined into one at the end
    (8.2.3), without Content-Length (its value is ``content_length``) or Expect (the
    stream's window, not a 100 (Continue), says how much body to send)."""
    method = scheme = path = authority = host = b""
    regular: list[tuple[bytes, bytes]] = [_NO_FIELD]  # the Host field's place
    cookies: list[bytes] | None = None
    content_length = -1
    pseudo = 0
    seen_regular = False
    for field in fields:
        name, value = field
        if name[:1] == b":":
            if seen_regular:
                return "a pseudo-header after a regular field"
            pseudo += 1
            if name == b":method" and not method:
                method = value
            elif name == b":path" and not path:
                path = value
            elif name == b":scheme" and not scheme:
                scheme = value
            elif name == b":authority" and not authority:
                authority = value
            else:
                return f"pseudo-header {name[:40]!r} unknown or repeated"
            continue
        seen_regular = True
        if name not in _KNOWN_NAMES:
            if not name:
                return "an empty field name"
            for byte in name:
                if byte not in _NAME_BYTES:
                    return f"field name {name[:40]!r} not a lower-case token"
            if name in CONNECTION_FIELDS:
                return f"connection-specific field {name.decode('latin-1')!r}"
        elif name == b"te":
            if value != b"trailers":
                return "TE other than trailers"
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                return f"bad content-length {value[:40]!r}"
            length = int(value)
            if content_length >= 0 and length != content_length:
                return "content-lengths that differ"
            content_length = length
        # ints, not b"\r": `bytes in bytes` first tries the operand as an int, and builds
        # and drops a TypeError each time (~150 ns)
        if value and (
            13 in value or 10 in value or 0 in value
            or value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)
        ):  # fmt: skip
            return f"field {name[:40]!r} with a bad value"
        if name in _FOLDED:
            if name == b"cookie":
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
            elif name == b"host":
                if not host:
                    host = value
            continue
        regular.append(field)
    if method == b"CONNECT":
        if scheme or path or not authority or pseudo != 2:
            return "a CONNECT request with :scheme or :path, or without :authority"
    elif not method or not scheme or not path:
        return "a request without :method, :scheme or :path"
    if end and content_length > 0:
        return "a body announced on a request without one"
    if authority:
        host = authority
    if host:
        regular[0] = (b"host", host)
    else:
        del regular[0]
    if cookies is not None:
        regular.append((b"cookie", cookies[0] if len(cookies) == 1 else b"; ".join(cookies)))
    return Request(stream_id, method, scheme, path, authority, host, regular, content_length, end)
