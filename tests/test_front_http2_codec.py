"""The front's HTTP/2 on gantry's own codec: what changed from the h2 package's way
(a malformed request costs its stream, not the connection) and what the codec does
for speed (a repeated response head is a few bytes of indexes)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest

from tests.process import Front, Launcher
from tests.support_http2 import PREFACE, Answer, RawH2, frame

HEADERS, SETTINGS = 0x1, 0x4
END_STREAM, END_HEADERS = 0x1, 0x4
PROTOCOL_ERROR = 0x1


@pytest.fixture(scope="module")
def front(module_launch: Launcher, module_short_tmp: Path) -> Iterator[Front]:
    www = module_short_tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("still serving\n")
    front = module_launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT h2c"]
[[front.server]]
[[front.server.location]]
path = "/"
root = "{www}"
""")  # fmt: skip
    yield front


@pytest.mark.parametrize(
    "extra",
    [[("X-Upper", "1")], [("connection", "close")], [("te", "gzip")], [(":extra", "1")]],
)
def test_a_malformed_request_is_reset_and_the_connection_goes_on(
    front: Front, extra: list[tuple[str, str]]
) -> None:
    client = RawH2(front.port)
    try:
        # the client's h2 would refuse to send these: its checks are turned off
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        stream_id = client.conn.get_next_available_stream_id()
        fields = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
        if extra[0][0].startswith(":"):
            fields = [*extra, *fields]  # a pseudo-header unknown (and first)
        else:
            fields += extra
        client.conn.send_headers(stream_id, fields, end_stream=True)
        client.answers[stream_id] = Answer()
        client.flush()
        assert client.wait(stream_id).reset == PROTOCOL_ERROR
        assert client.wait(client.request("/")).body == b"still serving\n"
        assert client.goaway is None
    finally:
        client.close()
    assert "reset" in front.log.read_text()


def _frames(sock: socket.socket, want: int) -> list[tuple[int, int, bytes]]:
    """Read until ``want`` HEADERS frames came: (type, stream, payload) of each frame."""
    data = b""
    found: list[tuple[int, int, bytes]] = []
    for _ in range(100):  # bounded: a few reads are enough
        if sum(1 for kind, _, _ in found if kind == HEADERS) >= want:
            break
        chunk = sock.recv(65536)
        assert chunk, "the server closed"
        data += chunk
        while len(data) >= 9:
            length = int.from_bytes(data[:3], "big")
            if len(data) < 9 + length:
                break
            found.append((data[3], int.from_bytes(data[5:9], "big"), data[9 : 9 + length]))
            data = data[9 + length :]
    return found


def test_a_repeated_response_head_is_sent_as_indexes(front: Front) -> None:
    encoder = hpack.Encoder()
    decoder = hpack.Decoder()
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
        fields = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
        for stream_id in (1, 3):
            block = encoder.encode(fields)
            sock.sendall(frame(HEADERS, END_STREAM | END_HEADERS, stream_id, block))
        heads = [payload for kind, _, payload in _frames(sock, 2) if kind == HEADERS]
    first, second = (decoder.decode(head, raw=True) for head in heads)
    assert first[0] == (b":status", b"200") and second[:-1] == first[:-1]
    # each field of the second is a 1-byte index (Date may have turned a second)
    assert len(heads[1]) <= len(first) + 30 < len(heads[0]), heads
