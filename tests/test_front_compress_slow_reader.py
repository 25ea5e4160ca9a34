"""Compression in flight is bounded for a slow client: what the compressor puts out goes
to the client's connection, whose write buffer (256 KiB high-water mark) pauses the
upstream read when it is full, as for an identity body. A real upstream streams 96 MiB
of text as fast as the front takes it, to a client that reads nothing: the upstream
stalls after the sockets' own buffers fill, the front's memory stays put, and once the
client reads, every byte comes through, decompressed to what the upstream sent."""

from __future__ import annotations

import gzip
import hashlib
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from tests.process import Front, Launcher, rss_kib, wait_for

TOTAL = 96 * 1024 * 1024
PIECE = 64 * 1024
#: hex of random bytes: text that compresses about 2:1 in every coding, so neither the
#: compressed stream nor the sockets' buffers hide a front that reads on without pause
BLOCK = random.Random(17).randbytes(512 * 1024).hex().encode()


def _body() -> bytes:
    return (BLOCK * (TOTAL // len(BLOCK) + 1))[:TOTAL]


class StreamingUpstream:
    """An HTTP upstream on a real socket that answers one request with TOTAL bytes of
    text, sent as fast as the front reads them; ``sent`` counts what the kernel took."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        body = _body()
        with conn:
            conn.settimeout(60)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n" % TOTAL
                )
                view = memoryview(body)
                while self.sent < TOTAL:
                    self.sent += conn.send(view[self.sent : self.sent + PIECE])
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


def _decoder(coding: str) -> Callable[[bytes], bytes]:
    """A streaming decompressor of ``coding``: compressed piece in, what it decodes to out."""
    if coding == "gzip":
        return zlib.decompressobj(wbits=31).decompress
    if coding == "br":
        return brotli.Decompressor().process  # type: ignore[no-any-return]
    return zstandard.ZstdDecompressor().decompressobj().decompress


def _steady(read: Callable[[], int], quiet: float = 1.5, limit: float = 30.0) -> int:
    """The value of ``read()`` once it has not moved for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    raise AssertionError(f"still moving after {limit} s: {last}")


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_client_that_reads_nothing_pauses_the_upstream(launch: Launcher, coding: str) -> None:
    upstream = StreamingUpstream()
    try:
        front: Front = launch.front(
            f"""[front]
listen = ["127.0.0.1:FRONT_PORT"]
send_timeout = "60s"
[front.upstream.app]
servers = [{{ address = "127.0.0.1:{upstream.port}" }}]
[[front.server]]
gzip = true
gzip_types = ["text/plain"]
[[front.server.location]]
path = "/"
proxy = "app"
"""
        )
        assert front.pid is not None
        rss_before = rss_kib(front.pid)
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(30)
            client.connect(("127.0.0.1", front.port))
            client.sendall(
                f"GET /big HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {coding}\r\n\r\n".encode()
            )
            assert wait_for(lambda: upstream.sent > 0, 10)
            stalled = _steady(lambda: upstream.sent)
            grown = rss_kib(front.pid) - rss_before
            # the sockets' buffers (a few MiB each way) hold what was sent; the front none
            assert stalled < TOTAL // 3, f"the upstream sent {stalled >> 20} MiB"
            assert grown < 24 * 1024, f"the front grew by {grown} KiB"
            # the client reads: the rest flows, and decompresses to what was sent
            data = b""
            while b"\r\n\r\n" not in data:
                data += client.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert f"Content-Encoding: {coding}".encode() in head, head
            decode = _decoder(coding)
            digest, size = hashlib.sha256(), 0
            chunked = rest
            # the body is chunked: the chunks are parsed as they come
            while True:
                while b"\r\n" not in chunked:
                    chunked += client.recv(1 << 20)
                line, _, chunked = chunked.partition(b"\r\n")
                length = int(line, 16)
                if length == 0:
                    break
                while len(chunked) < length + 2:
                    chunked += client.recv(1 << 20)
                plain = decode(chunked[:length])
                digest.update(plain)
                size += len(plain)
                chunked = chunked[length + 2 :]
        assert size == TOTAL
        assert digest.hexdigest() == hashlib.sha256(_body()).hexdigest()
    finally:
        upstream.close()


def test_the_text_compresses_about_half() -> None:
    # what the bounds above assume of BLOCK (a much better ratio would let the sockets'
    # buffers hold most of the body in compressed form)
    ratio = len(gzip.compress(BLOCK, 1)) / len(BLOCK)
    assert 0.4 < ratio < 0.75, ratio
