"""The HTTP/2 server codec (gantry.protocol.http2.ServerConnection): fed by the ``h2``
package as a client, and by hand-made frames for what a client must not send."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.protocol import http2 as codec
from gantry.protocol.hpack import Encoder
from gantry.protocol.http2 import (
    PREFACE,
    ConnectionFailed,
    Data,
    Event,
    PingReceived,
    Request,
    Reset,
    ServerConnection,
    SettingsChanged,
    WindowOpened,
)

GET = [(":method", "GET"), (":scheme", "https"), (":path", "/a?b=1"), (":authority", "x.test")]


def server(**kwargs: int) -> ServerConnection:
    options = {"max_streams": 8, "max_header_size": 16384, "stream_window": 65535,
               "connection_window": 65535}  # fmt: skip
    options.update(kwargs)
    conn = ServerConnection(**options)
    conn.initiate()
    return conn


def client(window: int = 65535) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    conn.initiate_connection()
    return conn


def exchange(
    ours: ServerConnection, theirs: h2.connection.H2Connection
) -> tuple[list[Event], list[h2.events.Event]]:
    """What the client queued, through the server; and the server's answer, through the
    client."""
    events = ours.receive(theirs.data_to_send())
    return events, theirs.receive_data(ours.data_to_send())


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame in ``data``."""
    found = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5 : pos + 9], "big")
        found.append((kind, flags, stream, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return found


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def block(fields: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    Encoder().encode(fields, out)
    return bytes(out)


REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
           (b":authority", b"x.test")]  # fmt: skip
SETTINGS_EMPTY = frame(codec.SETTINGS, 0, 0, b"")


def opened() -> ServerConnection:
    """A server past the preface and the client's SETTINGS."""
    conn = server()
    conn.receive(PREFACE + SETTINGS_EMPTY)
    conn.data_to_send()
    return conn


def goaway_code(data: bytes) -> int | None:
    for kind, _, _, payload in frames(data):
        if kind == codec.GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


def rst_codes(data: bytes) -> dict[int, int]:
    return {stream: int.from_bytes(payload, "big")
            for kind, _, stream, payload in frames(data) if kind == codec.RST_STREAM}  # fmt: skip


def test_a_get_and_its_response_through_the_h2_client() -> None:
    ours, theirs = server(), client()
    theirs.send_headers(1, [*GET, ("user-agent", "t"), ("cookie", "a=1"), ("cookie", "b=2")],
                        end_stream=True)  # fmt: skip
    events, _ = exchange(ours, theirs)
    assert isinstance(events[0], SettingsChanged)
    request = events[1]
    assert isinstance(request, Request)
    assert (request.method, request.scheme, request.path, request.authority) == (
        b"GET", b"https", b"/a?b=1", b"x.test")  # fmt: skip
    # as an HTTP/1.1 head: Host first, the cookies in one field (RFC 9113 8.2.3)
    assert request.fields == [(b"host", b"x.test"), (b"user-agent", b"t"), (b"cookie", b"a=1; b=2")]
    assert request.host == b"x.test"
    assert request.end and request.content_length == -1
    head = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"server", b"gantry")]
    assert ours.send_headers(1, head, False)
    assert ours.window(1) == 65535
    assert ours.send_data(1, b"hello", True)
    assert ours.window(1) == -1 and 1 not in ours.streams  # both sides closed
    answer = theirs.receive_data(ours.data_to_send())
    kinds = [type(event).__name__ for event in answer]
    assert kinds == ["ResponseReceived", "DataReceived", "StreamEnded"], kinds
    assert answer[0].headers == head and answer[1].data == b"hello"
    # the same head again: each field is one byte from the dynamic table
    theirs.send_headers(3, GET, end_stream=True)
    exchange(ours, theirs)
    ours.send_headers(3, head, True)
    sent = frames(ours.data_to_send())
    assert sent[0][0] == codec.HEADERS and len(sent[0][3]) == 3
    assert theirs.receive_data(b"".join(frame(*f) for f in sent))[0].headers == head


def test_a_body_is_counted_against_the_windows_and_they_open_as_it_is_taken() -> None:
    ours, theirs = server(stream_window=65535, connection_window=1 << 20), client()
    size = 300_000
    theirs.send_headers(1, [*GET[:2], (":path", "/up"), GET[3], ("content-length", str(size))])
    exchange(ours, theirs)
    body = b"x" * size
    sent = received = 0
    rounds = 0
    while received < size and rounds < 100:  # bounded: each round takes what came
        rounds += 1
        room = min(theirs.local_flow_control_window(1), size - sent)
        if room:
            chunks = [body[sent + i : sent + min(room, i + 16384)] for i in range(0, room, 16384)]
            for chunk in chunks:
                theirs.send_data(1, chunk, end_stream=sent + len(chunk) == size)
                sent += len(chunk)
        events = ours.receive(theirs.data_to_send())
        for event in events:
            if isinstance(event, Data):
                received += len(event.data)
                ours.acknowledge(event.stream_id, event.flow)
        theirs.receive_data(ours.data_to_send())
    assert received == size and sent == size
    assert isinstance(events[-1], Data) and events[-1].end


def test_the_send_window_follows_the_clients_settings_and_updates() -> None:
    ours, theirs = server(), client(window=100)
    theirs.send_headers(1, GET, end_stream=True)
    exchange(ours, theirs)
    assert ours.window(1) == 100
    ours.send_headers(1, [(b":status", b"200")], False)
    ours.send_data(1, b"a" * 100, False)
    assert ours.window(1) == 0
    theirs.receive_data(ours.data_to_send())
    theirs.increment_flow_control_window(50, stream_id=1)
    events, _ = exchange(ours, theirs)
    assert [type(e) for e in events] == [WindowOpened] and ours.window(1) == 50
    theirs.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    events, _ = exchange(ours, theirs)
    assert isinstance(events[0], SettingsChanged) and events[0].window
    assert ours.window(1) == 950


def test_trailers_end_the_body_and_a_large_block_comes_in_continuations() -> None:
    ours, theirs = server(max_header_size=65536), client()
    big = [(f"x-big-{i}", "v" * 1000) for i in range(30)]  # 30 KiB: HEADERS + CONTINUATION
    theirs.send_headers(1, [*GET, *big])
    theirs.send_data(1, b"abc")
    theirs.send_headers(1, [("x-checksum", "1")], end_stream=True)
    raw = theirs.data_to_send()
    assert any(kind == codec.CONTINUATION for kind, *_ in frames(raw[len(PREFACE) :]))
    events: list[Event] = []
    for i in range(len(raw)):  # a byte at a time: frames split anywhere
        events += ours.receive(raw[i : i + 1])
    requests = [e for e in events if isinstance(e, Request)]
    data = [e for e in events if isinstance(e, Data)]
    assert len(requests) == 1 and len(requests[0].fields) == 31  # and Host
    assert [(d.data, d.end) for d in data] == [(b"abc", False), (b"", True)]


def test_ping_settings_and_priority() -> None:
    conn = opened()
    events = conn.receive(frame(codec.PING, 0, 0, b"12345678")
                          + frame(codec.PRIORITY, 0, 3, b"\0" * 5)
                          + frame(codec.SETTINGS, 0, 0, struct.pack(">HI", 5, 32768)))  # fmt: skip
    assert [type(e) for e in events] == [PingReceived, SettingsChanged]
    sent = frames(conn.data_to_send())
    assert (codec.PING, codec.ACK, 0, b"12345678") in sent
    assert (codec.SETTINGS, codec.ACK, 0, b"") in sent
    assert conn.max_frame_size == 32768


@pytest.mark.parametrize(
    "fields, why",
    [
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")], ":path"),
        ([*REQUEST, (b"X-Upper", b"1")], "lower-case"),
        ([*REQUEST, (b"connection", b"close")], "connection-specific"),
        ([*REQUEST, (b"te", b"gzip")], "TE"),
        ([(b"accept", b"*/*"), *REQUEST], "after a regular"),
        ([*REQUEST, (b":method", b"POST")], "repeated"),
        ([*REQUEST, (b":protocol", b"websocket")], "unknown"),
        ([*REQUEST, (b"x-a", b"a\r\nb")], "bad value"),
        ([*REQUEST, (b"x-a", b"a\rb")], "bad value"),
        ([*REQUEST, (b"x-a", b"a\x00b")], "bad value"),
        ([*REQUEST, (b"cookie", b"a=1\n")], "bad value"),
        ([*REQUEST, (b"host", b" h")], "bad value"),
        ([*REQUEST, (b"content-length", b"1x")], "content-length"),
        ([(b":method", b"CONNECT"), (b":authority", b"x:1"), (b":path", b"/")], "CONNECT"),
    ],
)
def test_malformed_requests_are_reset_protocol_error(
    fields: list[tuple[bytes, bytes]], why: str
) -> None:
    conn = opened()
    events = conn.receive(frame(codec.HEADERS, 0x5, 1, block(fields)))
    assert len(events) == 1 and isinstance(events[0], Reset) and not events[0].remote
    assert why in events[0].message
    assert rst_codes(conn.data_to_send()) == {1: codec.PROTOCOL_ERROR}
    # the connection goes on
    events = conn.receive(frame(codec.HEADERS, 0x5, 3, block(REQUEST)))
    assert isinstance(events[0], Request)


@pytest.mark.parametrize(
    "sent, host, fields",
    [
        # :authority is the Host; a Host field beside it is dropped
        ([(b"host", b"other"), (b"accept", b"*/*")], b"x.test",
         [(b"host", b"x.test"), (b"accept", b"*/*")]),
        # the framing's fields are the codec's: the length is content_length, no Expect
        ([(b"content-length", b"3"), (b"expect", b"100-continue"), (b"x-a", b"1")], b"x.test",
         [(b"host", b"x.test"), (b"x-a", b"1")]),
        ([(b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2"), (b"cookie", b"c=3")], b"x.test",
         [(b"host", b"x.test"), (b"x-a", b"1"), (b"cookie", b"a=1; b=2; c=3")]),
    ],
)  # fmt: skip
def test_a_requests_fields_come_as_an_http1_head_carries_them(
    sent: list[tuple[bytes, bytes]], host: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    conn = opened()
    events = conn.receive(frame(codec.HEADERS, 0x4, 1, block([*REQUEST, *sent])))
    request = events[0]
    assert isinstance(request, Request)
    assert (request.host, request.fields) == (host, fields)


@pytest.mark.parametrize(
    "sent, host, fields",
    [
        ([(b"host", b"h.test"), (b"host", b"second")], b"h.test", [(b"host", b"h.test")]),
        ([(b"host", b""), (b"host", b"second")], b"second", [(b"host", b"second")]),
        ([(b"accept", b"*/*")], b"", [(b"accept", b"*/*")]),
    ],
)
def test_without_authority_the_first_host_field_is_the_host(
    sent: list[tuple[bytes, bytes]], host: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    conn = opened()
    head = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), *sent]
    request = conn.receive(frame(codec.HEADERS, 0x5, 1, block(head)))[0]
    assert isinstance(request, Request)
    assert (request.host, request.fields) == (host, fields)
    assert request.content_length == -1


def test_a_body_not_of_its_content_length_is_reset() -> None:
    conn = opened()
    conn.receive(frame(codec.HEADERS, 0x4, 1, block([*REQUEST, (b"content-length", b"5")])))
    events = conn.receive(frame(codec.DATA, 0x1, 1, b"abc"))
    assert isinstance(events[0], Reset) and events[0].code == codec.PROTOCOL_ERROR
    assert rst_codes(conn.data_to_send()) == {1: codec.PROTOCOL_ERROR}


def test_data_after_the_end_of_a_request_is_stream_closed() -> None:
    conn = opened()
    conn.receive(frame(codec.HEADERS, 0x5, 1, block(REQUEST)))
    events = conn.receive(frame(codec.DATA, 0, 1, b"late"))
    assert isinstance(events[0], Reset) and events[0].code == codec.STREAM_CLOSED
    assert rst_codes(conn.data_to_send()) == {1: codec.STREAM_CLOSED}


def test_resets_of_streams_already_answered_are_told() -> None:
    """Rapid Reset is counted by the server, even for a stream it has finished."""
    conn = opened()
    conn.receive(frame(codec.HEADERS, 0x5, 1, block(REQUEST)))
    conn.send_headers(1, [(b":status", b"204")], True)
    events = conn.receive(frame(codec.RST_STREAM, 0, 1, struct.pack(">I", codec.CANCEL)))
    assert isinstance(events[0], Reset) and events[0].remote and events[0].code == codec.CANCEL


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(codec.DATA, 0, 0, b"x"), codec.PROTOCOL_ERROR),
        (frame(codec.DATA, 0, 5, b"x"), codec.PROTOCOL_ERROR),  # idle stream
        (frame(codec.HEADERS, 0x5, 2, block(REQUEST)), codec.PROTOCOL_ERROR),  # even
        (frame(codec.PING, 0, 0, b"1234"), codec.FRAME_SIZE_ERROR),
        (frame(codec.PING, 0, 1, b"12345678"), codec.PROTOCOL_ERROR),
        (frame(codec.SETTINGS, 0, 0, b"\0\0\0"), codec.FRAME_SIZE_ERROR),
        (frame(codec.SETTINGS, 1, 0, b"\0" * 6), codec.FRAME_SIZE_ERROR),
        (frame(codec.SETTINGS, 0, 0, struct.pack(">HI", 2, 2)), codec.PROTOCOL_ERROR),
        (frame(codec.SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 31)), codec.FLOW_CONTROL_ERROR),
        (frame(codec.SETTINGS, 0, 0, struct.pack(">HI", 5, 100)), codec.PROTOCOL_ERROR),
        (frame(codec.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), codec.PROTOCOL_ERROR),
        (
            frame(codec.WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 31) - 1)),
            codec.FLOW_CONTROL_ERROR,
        ),
        (frame(codec.WINDOW_UPDATE, 0, 0, b"\0\0\1"), codec.FRAME_SIZE_ERROR),
        (frame(codec.RST_STREAM, 0, 9, b"\0\0\0\0"), codec.PROTOCOL_ERROR),
        (frame(codec.CONTINUATION, 0x4, 1, b""), codec.PROTOCOL_ERROR),
        (
            frame(codec.HEADERS, 0x1, 1, block(REQUEST)) + frame(codec.PING, 0, 0, b"12345678"),
            codec.PROTOCOL_ERROR,
        ),
        (frame(codec.HEADERS, 0x5, 1, b"\x80"), codec.COMPRESSION_ERROR),
        (frame(codec.HEADERS, 0x5 | 0x8, 1, b"\x40" + block(REQUEST)), codec.PROTOCOL_ERROR),
        (frame(codec.PUSH_PROMISE, 0x4, 1, b"\0\0\0\2"), codec.PROTOCOL_ERROR),
        (b"\0\x40\x01" + bytes([codec.DATA, 0]) + b"\0\0\0\1", codec.FRAME_SIZE_ERROR),
        (frame(codec.GOAWAY, 0, 0, b"\0"), codec.FRAME_SIZE_ERROR),
    ],
)
def test_connection_errors_are_goaway_with_their_code(data: bytes, code: int) -> None:
    conn = opened()
    events = conn.receive(data)
    assert isinstance(events[-1], ConnectionFailed) and events[-1].code == code, events
    assert goaway_code(conn.data_to_send()) == code
    assert conn.closed and conn.receive(frame(codec.PING, 0, 0, b"12345678")) == []


def test_data_past_the_window_is_flow_control_error() -> None:
    conn = opened()
    conn.receive(frame(codec.HEADERS, 0x4, 1, block(REQUEST)))
    data = frame(codec.DATA, 0, 1, b"x" * 16384)
    events = [e for _ in range(5) for e in conn.receive(data)]
    assert isinstance(events[-1], ConnectionFailed)
    assert events[-1].code == codec.FLOW_CONTROL_ERROR
    assert len([e for e in events if isinstance(e, Data)]) == 3  # 48 KiB of 64 fit


def test_too_many_streams_and_a_header_block_past_the_limit() -> None:
    conn = opened()
    events = conn.receive(b"".join(frame(codec.HEADERS, 0x4, 1 + 2 * i, block(REQUEST))
                                   for i in range(9)))  # fmt: skip
    assert len([e for e in events if isinstance(e, Request)]) == 8
    # the ninth is refused alone (RFC 9113 5.1.2), told to the server, and the
    # connection goes on: once a stream ends, the next is taken
    assert isinstance(events[-1], Reset) and events[-1].code == codec.REFUSED_STREAM
    assert not events[-1].remote
    out = conn.data_to_send()
    assert rst_codes(out) == {17: codec.REFUSED_STREAM} and goaway_code(out) is None
    conn.send_headers(1, [(b":status", b"200")], True)
    conn.receive(frame(codec.DATA, 0x1, 1, b""))
    events = conn.receive(frame(codec.HEADERS, 0x5, 19, block(REQUEST)))
    assert isinstance(events[0], Request) and events[0].stream_id == 19
    # CONTINUATIONs past the limit are refused on their frame headers, before their bytes
    conn = opened()
    events = conn.receive(frame(codec.HEADERS, 0x1, 1, block(REQUEST)))
    filler = frame(codec.CONTINUATION, 0, 1, b"\0" * 4096)
    for _ in range(3):
        assert conn.receive(filler) == []
    failed = conn.receive(filler[:9])
    assert isinstance(failed[0], ConnectionFailed) and failed[0].code == codec.ENHANCE_YOUR_CALM
    assert "http2_max_header_size" in failed[0].message


def test_headers_below_the_last_stream_are_told_apart() -> None:
    """RFC 9113 5.1.1: a stream id the client skipped may never be opened (connection
    error PROTOCOL_ERROR); a HEADERS on a stream it did open and that closed is a
    stream error STREAM_CLOSED, and the connection goes on."""
    conn = opened()
    conn.receive(frame(codec.HEADERS, 0x5, 1, block(REQUEST)) +
                 frame(codec.HEADERS, 0x5, 5, block(REQUEST)))  # fmt: skip
    conn.send_headers(1, [(b":status", b"204")], True)
    conn.data_to_send()
    assert conn.receive(frame(codec.HEADERS, 0x5, 1, block(REQUEST))) == []
    assert rst_codes(conn.data_to_send()) == {1: codec.STREAM_CLOSED} and not conn.closed
    events = conn.receive(frame(codec.HEADERS, 0x5, 3, block(REQUEST)))
    assert isinstance(events[-1], ConnectionFailed) and events[-1].code == codec.PROTOCOL_ERROR
    assert goaway_code(conn.data_to_send()) == codec.PROTOCOL_ERROR


def test_a_bad_preface_is_goaway_protocol_error() -> None:
    conn = server()
    conn.data_to_send()
    events = conn.receive(b"GET / HTTP/1.1\r\n")
    assert isinstance(events[0], ConnectionFailed) and events[0].code == codec.PROTOCOL_ERROR
    assert conn.data_to_send().endswith(b"\0\0\0\1")


def test_a_response_head_larger_than_a_frame_goes_in_continuations() -> None:
    ours, theirs = server(), client()
    theirs.send_headers(1, GET, end_stream=True)
    exchange(ours, theirs)
    head = [(b":status", b"200")] + [(b"x-h%d" % i, b"v" * 3000) for i in range(10)]
    ours.send_headers(1, head, True)
    sent = ours.data_to_send()
    assert [kind for kind, *_ in frames(sent)][:2] == [codec.HEADERS, codec.CONTINUATION]
    answer = theirs.receive_data(sent)
    assert answer[0].headers == head and isinstance(answer[1], h2.events.StreamEnded)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    conn = opened()
    for event in conn.receive(data):
        assert isinstance(event, Event)
