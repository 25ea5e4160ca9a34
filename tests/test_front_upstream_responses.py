"""Odd upstream responses relayed by gantry front, from a raw upstream: a response head
past the front's bound (502 at once), and a body with Transfer-Encoding gzip that the
upstream ends by closing (relayed whole, coding and end included)."""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

from tests.support_front import Front, RawUpstream, fields_of, proxied_site, start_front

PAYLOAD = b"relayed through a gzip transfer coding\n" * 500


def _front_to(tmp_path: Path, upstream: RawUpstream) -> Front:
    return start_front(tmp_path, proxied_site(f"127.0.0.1:{upstream.port}", name="raw"))


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    """The chunked body's data, and whether its last chunk came."""
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, True
        out += body[:size]
        body = body[size + 2 :]
    return out, False


def test_a_huge_response_head_gets_502_at_once(tmp_path: Path) -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (200 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok"
    upstream = RawUpstream(lambda head: huge)
    front = _front_to(tmp_path, upstream)
    try:
        started = time.monotonic()
        response, _ = front.request("GET", "/")
        assert response.status == 502
        assert time.monotonic() - started < 5.0
        assert "response head over" in front.log.read_text()
    finally:
        front.stop()
        upstream.close()


def test_transfer_encoding_gzip_ended_by_close_is_relayed_whole(tmp_path: Path) -> None:
    coded = gzip.compress(PAYLOAD)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip\r\n\r\n"
    upstream = RawUpstream(lambda head: answer + coded)  # then the upstream closes
    front = _front_to(tmp_path, upstream)
    try:
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            sock.settimeout(10)
            data = b""
            while data.count(b"0\r\n\r\n") < 2:
                piece = sock.recv(65536)
                assert piece, f"closed early: {data[:300]!r}"
                data += piece
        for _ in range(2):  # each response complete, and the connection kept for the next
            head, _, data = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            fields = dict(fields_of(head + b"\r\n\r\n"))
            assert fields["transfer-encoding"].replace(" ", "") == "gzip,chunked"
            end = data.index(b"0\r\n\r\n") + 5
            body, complete = _dechunk(data[:end])
            data = data[end:]
            assert complete and gzip.decompress(body) == PAYLOAD
    finally:
        front.stop()
        upstream.close()


def test_transfer_coded_answer_to_an_http10_client_is_502(tmp_path: Path) -> None:
    """An HTTP/1.0 client cannot be sent a transfer coding (RFC 9112 6.1)."""
    upstream = RawUpstream(
        lambda head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzip.compress(b"x")
    )
    front = _front_to(tmp_path, upstream)
    try:
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 502 "), data[:100]
    finally:
        front.stop()
        upstream.close()


def test_fields_a_response_connection_names_are_not_passed_on(tmp_path: Path) -> None:
    # RFC 9110 7.6.1: fields named by Connection are hop-by-hop, as Connection itself is
    answer = (
        b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: x-hop, keep-alive\r\n"
        b"Connection: X-Other\r\nX-Other: 2\r\nX-Kept: 3\r\nContent-Length: 2\r\n\r\nok"
    )
    upstream = RawUpstream(lambda head: answer)
    front = _front_to(tmp_path, upstream)
    try:
        response, body = front.request("GET", "/")
        assert response.status == 200 and body == b"ok"
        assert response.getheader("X-Kept") == "3"
        assert response.getheader("X-Hop") is None
        assert response.getheader("X-Other") is None
    finally:
        front.stop()
        upstream.close()


def test_interim_heads_without_end_count_toward_the_head_bound(tmp_path: Path) -> None:
    # 103s passed on to the client, one after another: together they are one response
    # head, bounded as one (a 502), not a stream the client's buffer takes without end
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </" + b"a" * 1000 + b".css>; rel=preload\r\n\r\n"
    upstream = RawUpstream(lambda head: hint * 200)  # ~200 KiB of 103s, no final answer
    front = _front_to(tmp_path, upstream)
    try:
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while b"HTTP/1.1 502 " not in data:
                piece = sock.recv(65536)
                assert piece, f"closed without a 502 after {data.count(b' 103 ')} 103s"
                data += piece
        # some went on, not all 200: at most the bound (64 KiB) and the read past it
        assert 0 < data.count(b"HTTP/1.1 103 ") < 200
        assert len(data) < 2 * 64 * 1024 + 8192
        assert "response head over" in front.log.read_text()
    finally:
        front.stop()
        upstream.close()
