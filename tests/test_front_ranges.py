"""Multi-range requests to gantry front stream each part from the file: a 4 GiB sparse
file, a range set of 256 MiB, and the worker's peak RSS; overlapping sets are refused."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from tests.support_front import fields_of, proc_status_kib, read_response, start_front

GIB = 1 << 30
SIZE = 4 * GIB
#: marks written into the sparse file, at offsets past 32 bits too
MARKS = {0: b"first", 300 << 20: b"middle", SIZE - 4: b"last"}


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    with open(site / "big.bin", "wb") as handle:
        handle.truncate(SIZE)
        for offset, mark in MARKS.items():
            handle.seek(offset)
            handle.write(mark)
    (site / "small.txt").write_bytes(bytes(range(200)))
    return site


def _expected(offset: int, length: int) -> bytes:
    """The sparse file's bytes at [offset, offset + length)."""
    data = bytearray(length)
    for at, mark in MARKS.items():
        for i, byte in enumerate(mark):
            if offset <= at + i < offset + length:
                data[at + i - offset] = byte
    return bytes(data)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        piece = sock.recv(min(1 << 20, count - len(out)))
        assert piece, "closed early"
        out += piece
    return bytes(out)


def test_multi_range_of_a_4_gib_file_streams_with_flat_memory(tmp_path: Path) -> None:
    site = _site(tmp_path)
    front = start_front(
        tmp_path,
        f'[[front.server]]\n[[front.server.location]]\npath = "/"\nroot = "{site}"\n',
    )
    try:
        assert front.process is not None
        pid = front.process.pid  # one worker and no master: the process is the worker
        with front.connect(30) as sock:
            # warm-up: the same path once, small, so start-up allocations are counted before
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=0-4,9-9\r\n\r\n")
            read_response(sock)
            before = proc_status_kib(pid, "VmHWM")
            big_end = 2 + (256 << 20) - 1  # 256 MiB from offset 2
            spec = f"bytes=0-0,2-{big_end},{SIZE - 10}-"
            sock.sendall(f"GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: {spec}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            assert head.startswith(b"HTTP/1.1 206 "), head
            fields = dict(fields_of(head))
            boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", fields["content-type"])
            assert boundary is not None
            length = int(fields["content-length"])
            parts = [(0, 1), (2, big_end - 1), (SIZE - 10, 10)]
            received = 0
            for start, count in parts:
                framing = (
                    f"\r\n--{boundary[1]}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {start}-{start + count - 1}/{SIZE}\r\n\r\n"
                ).encode()
                assert _read_exactly(sock, len(framing)) == framing
                received += len(framing)
                done = 0
                while done < count:  # in 1 MiB pieces, each checked against the file
                    step = min(1 << 20, count - done)
                    assert _read_exactly(sock, step) == _expected(start + done, step), start
                    done += step
                received += count
            closing = f"\r\n--{boundary[1]}--\r\n".encode()
            assert _read_exactly(sock, len(closing)) == closing
            assert received + len(closing) == length
            grown = proc_status_kib(pid, "VmHWM") - before
            assert grown < 16 * 1024, f"the worker's peak RSS grew {grown} KiB"
            # the connection is still good for the next request
            sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[1] == bytes(range(200))
    finally:
        front.stop()
        os.unlink(site / "big.bin")


def test_overlapping_or_many_ranges_get_the_whole_file(tmp_path: Path) -> None:
    """RFC 9110 14.2: a server may ignore a range set that overlaps or asks for too many
    parts; it sends the whole file (200), never the parts again and again."""
    site = _site(tmp_path)
    front = start_front(
        tmp_path,
        f'[[front.server]]\n[[front.server.location]]\npath = "/"\nroot = "{site}"\n',
    )
    try:
        for spec in ("bytes=0-99,50-149", "bytes=10-20,0-", "bytes=-50,100-199",
                     "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 40, 2))):  # fmt: skip
            response, body = front.request("GET", "/small.txt", headers={"Range": spec})
            assert (response.status, body) == (200, bytes(range(200))), spec
        # adjacent or disjoint sets are still served as parts
        response, body = front.request("GET", "/small.txt", headers={"Range": "bytes=0-9,10-19"})
        assert (response.status, body) == (206, bytes(range(20)))
        response, _ = front.request("GET", "/small.txt", headers={"Range": "bytes=0-9,20-29"})
        assert response.status == 206
        assert response.getheader("Content-Type", "").startswith("multipart/byteranges")
    finally:
        front.stop()
        os.unlink(site / "big.bin")
