"""HTTP/2 defences at the front, each attack written frame by frame (the ``h2`` and
``hpack`` packages as the attacker, since h2spec is not installable here): Rapid Reset,
a CONTINUATION flood, an HPACK bomb, SETTINGS and PING floods, a client that never
opens its window, streams past http2_max_concurrent_streams opened in a loop. Each is
answered with a GOAWAY naming the cause, and the worker goes on serving another client;
a single stream past the limit is refused alone."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from h2.errors import ErrorCodes

from tests.process import Front, Launcher, wait_for
from tests.support_http2 import PREFACE, RawH2, frame

HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION = 0x1, 0x3, 0x4, 0x6, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


@pytest.fixture(scope="module")
def front(module_launch: Launcher, module_short_tmp: Path) -> Iterator[Front]:
    www = module_short_tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("still serving\n")
    (www / "big.bin").write_bytes(b"x" * (1024 * 1024))
    front = module_launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT h2c"]
http2_max_concurrent_streams = 8
http2_max_header_size = "16k"
send_timeout = "2s"
http2_idle_timeout = "2s"
[[front.server]]
[[front.server.location]]
path = "/"
root = "{www}"
""")  # fmt: skip
    yield front


def _served(front: Front) -> None:
    """Another client is served by the same worker, and nothing failed in it."""
    client = RawH2(front.port)
    try:
        assert client.wait(client.request("/")).body == b"still serving\n"
    finally:
        client.close()
    assert "Traceback" not in front.log.read_text()


class Attacker:
    """A raw connection that has sent the preface and empty SETTINGS."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
        self.encoder = hpack.Encoder()
        self.received = bytearray()

    def request_block(self, path: str = "/") -> bytes:
        return self.encoder.encode(
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
        )

    def send(self, data: bytes) -> bool:
        """False once the server has closed."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def goaway_code(self, limit: float = 15.0) -> int | None:
        """Read until the server closes; the error code of its GOAWAY, if one came."""
        deadline = time.monotonic() + limit
        self.sock.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            self.received += chunk
        return _goaway(bytes(self.received))

    def close(self) -> None:
        self.sock.close()


def _goaway(data: bytes) -> int | None:
    """The error code of the first GOAWAY among the frames of ``data``."""
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        if data[pos + 3] == 0x7 and pos + 9 + 8 <= len(data):
            return int(struct.unpack(">I", data[pos + 13 : pos + 17])[0])
        pos += 9 + length
    return None


def test_rapid_reset_is_answered_enhance_your_calm(front: Front) -> None:
    attacker = Attacker(front.port)
    try:
        stream_id = 1
        for _ in range(2000):  # 2000 streams opened and reset at once, in batches
            batch = b""
            for _ in range(50):
                batch += frame(HEADERS, END_STREAM | END_HEADERS, stream_id,
                               attacker.request_block())  # fmt: skip
                batch += frame(RST_STREAM, 0, stream_id, struct.pack(">I", ErrorCodes.CANCEL))
                stream_id += 2
            if not attacker.send(batch) or stream_id > 4001:
                break
        assert attacker.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        attacker.close()
    assert "RST_STREAM flood" in front.log.read_text()
    _served(front)


def test_a_continuation_flood_is_cut_at_the_header_limit(front: Front) -> None:
    attacker = Attacker(front.port)
    try:
        block = attacker.request_block()
        sent = attacker.send(frame(HEADERS, END_STREAM, 1, block))
        filler = frame(CONTINUATION, 0, 1, b"\x00" * 1024)  # never END_HEADERS
        count = 0
        while sent and count < 1000:  # 1 MiB at the most: h2's own cut is 64 frames
            sent = attacker.send(filler)
            count += 1
        assert attacker.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        attacker.close()
    assert "header block past http2_max_header_size" in front.log.read_text()
    _served(front)


def test_an_hpack_bomb_is_refused(front: Front) -> None:
    """A 4 KiB field put in the dynamic table once, then named by its 1-byte index 12
    times: under 5 KiB on the wire, 52 KiB decoded (past http2_max_header_size, under
    the h2 package's own default of 64 KiB)."""
    attacker = Attacker(front.port)
    try:
        encoder = attacker.encoder
        block = attacker.request_block()
        # a literal field with incremental indexing: it becomes dynamic entry 62
        block += encoder.encode([("x-bomb", "b" * 4000)])
        block += bytes([0x80 | 62]) * 12
        assert len(block) < 5000
        attacker.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        assert attacker.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        attacker.close()
    _served(front)


@pytest.mark.parametrize("kind", ["SETTINGS", "PING"])
def test_settings_and_ping_floods_are_answered_enhance_your_calm(front: Front, kind: str) -> None:
    attacker = Attacker(front.port)
    try:
        one = frame(SETTINGS, 0, 0, b"") if kind == "SETTINGS" else frame(PING, 0, 0, b"12345678")
        for _ in range(20):  # 2000 frames at the most, each asking for an answer
            if not attacker.send(one * 100):
                break
        assert attacker.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        attacker.close()
    assert f"{kind} flood" in front.log.read_text()
    _served(front)


def test_a_client_that_never_opens_its_window_is_closed(front: Front) -> None:
    client = RawH2(front.port, window=0, auto_ack=False)
    try:
        started = time.monotonic()
        stream_id = client.request("/big.bin")
        code = client.wait_goaway(20)
        waited = time.monotonic() - started
        assert code is not None and code.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert client.answers[stream_id].status == 200  # the head went, no byte of the body
        assert not client.answers[stream_id].body
        assert 1.5 < waited < 10, waited  # send_timeout = 2s
    finally:
        client.close()
    assert wait_for(lambda: "client timed out reading" in front.log.read_text())
    _served(front)


def _frames_until(attacker: Attacker, wanted: int, stream_id: int, limit: float = 10.0) -> bool:
    """Read until a frame of type ``wanted`` on ``stream_id`` has come (False: the server
    closed or ``limit`` passed first)."""
    deadline = time.monotonic() + limit
    attacker.sock.settimeout(0.5)
    while time.monotonic() < deadline:
        pos, data = 0, bytes(attacker.received)
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos : pos + 3], "big")
            if (
                data[pos + 3] == wanted
                and int.from_bytes(data[pos + 5 : pos + 9], "big") == stream_id
            ):
                return True
            pos += 9 + length
        try:
            chunk = attacker.sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return False
        attacker.received += chunk
    return False


def test_more_streams_than_allowed_are_refused_alone(front: Front) -> None:
    """RFC 9113 5.1.2: the stream past http2_max_concurrent_streams is reset
    REFUSED_STREAM; the streams open and the connection go on."""
    attacker = Attacker(front.port)
    try:
        frames = b""
        for i in range(9):  # 8 allowed; each stays open (a body is announced, not yet sent)
            frames += frame(HEADERS, END_HEADERS, 1 + 2 * i, attacker.request_block())
        attacker.send(frames)
        assert _frames_until(attacker, RST_STREAM, 17)
        assert _goaway(bytes(attacker.received)) is None
        code_at = bytes(attacker.received).index(b"\x00\x00\x04\x03\x00\x00\x00\x00\x11") + 9
        assert struct.unpack(">I", attacker.received[code_at : code_at + 4])[0] == (
            ErrorCodes.REFUSED_STREAM
        )
        # the open streams end their (empty) bodies and are answered on this connection
        attacker.send(b"".join(frame(0x0, END_STREAM, 1 + 2 * i, b"") for i in range(8)))
        assert _frames_until(attacker, 0x0, 15)
        attacker.send(frame(HEADERS, END_STREAM | END_HEADERS, 19, attacker.request_block()))
        assert _frames_until(attacker, 0x0, 19)
        assert _goaway(bytes(attacker.received)) is None
    finally:
        attacker.close()
    _served(front)


def test_streams_refused_in_a_loop_are_a_flood(front: Front) -> None:
    """A client that keeps opening streams past the limit is told to calm down, as one
    resetting its own streams is (each refusal costs the server a header block)."""
    attacker = Attacker(front.port)
    try:
        frames = b""
        for i in range(60):  # 8 held open, 52 refused in well under a second
            frames += frame(HEADERS, END_HEADERS, 1 + 2 * i, attacker.request_block())
        attacker.send(frames)
        assert attacker.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        attacker.close()
    assert "RST_STREAM flood" in front.log.read_text()
    # a client that keeps to the limit is served all its streams
    client = RawH2(front.port)
    try:
        streams = [client.request("/") for _ in range(8)]
        for stream_id in streams:
            assert client.wait(stream_id).body == b"still serving\n"
    finally:
        client.close()
    _served(front)


def test_an_idle_connection_is_closed_after_http2_idle_timeout(front: Front) -> None:
    client = RawH2(front.port)
    try:
        assert client.wait(client.request("/")).body == b"still serving\n"
        started = time.monotonic()
        code = client.wait_goaway(20)
        waited = time.monotonic() - started
        assert code is not None and code.error_code == ErrorCodes.NO_ERROR
        assert 1.5 < waited < 8, waited  # http2_idle_timeout = 2s
    finally:
        client.close()
