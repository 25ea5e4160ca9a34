"""Work the proxy did per request and now does once: a unix socket path encoded once per
address (front.upstream.connect_unix), the uwsgi packet's header kept while its size
repeats (front.upstream_request.uwsgi_packet), the upstream's settings a request reads
copied into compiled fields of its pool and peers (front.balancing). Each keeps the
answer it had."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.config.front_model import Upstream, UpstreamServer
from gantry.front import upstream, upstream_request
from gantry.front.balancing import UpstreamPool
from gantry.front.upstream import Failure, UpstreamError, connect_unix
from gantry.front.upstream_request import connection_vars, uwsgi_packet
from gantry.protocol.http1 import RequestHead
from gantry.protocol.uwsgi import parse_packet


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def test_a_unix_path_is_encoded_once_and_as_before(
    loop: asyncio.AbstractEventLoop, short_tmp: Path
) -> None:
    # not ASCII, and a byte that is not UTF-8 (surrogate-escaped): encoded as connect()
    # encodes a str path
    folder = short_tmp / "sock\u00e9"
    folder.mkdir()
    path = os.fsdecode(os.fsencode(str(folder)) + b"/u\xff.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(4)
        address = f"unix:{path}"
        for _ in range(2):
            conn = connect_unix(loop, address)
            accepted, _ = server.accept()
            accepted.sendall(b"x")
            accepted.close()
            conn.abort()
        assert upstream._unix_paths[address] == os.fsencode(path)


def test_a_missing_socket_is_still_refused(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    address = f"unix:{tmp_path}/none.sock"
    for _ in range(2):  # the path encoded, then taken from the memo
        with pytest.raises(UpstreamError) as caught:
            connect_unix(loop, address)
        assert caught.value.kind is Failure.REFUSED
        assert "none.sock" in caught.value.reason


def test_the_path_memo_is_bounded(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    for n in range(1100):
        with pytest.raises(UpstreamError):
            connect_unix(loop, f"unix:{tmp_path}/{n}.sock")
    assert len(upstream._unix_paths) <= 1024


def _head(target: bytes) -> RequestHead:
    head = RequestHead()
    head.method = "GET"
    head.target = target
    head.path, _, head.query = target.partition(b"?")
    head.headers = [(b"Host", b"example.com")]
    return head


def test_the_packet_header_follows_the_size() -> None:
    sizes = []
    for port, target in (("40001", b"/a"), ("40002", b"/b"), ("4003", b"/b"), ("4003", b"/bb")):
        packet = uwsgi_packet(
            connection_vars("127.0.0.1", port, "80"), _head(target), target.decode(), "", 0, False
        )
        parsed = parse_packet(packet)
        assert parsed is not None and parsed[2] == len(packet)  # the header says its length
        sizes.append(len(packet) - 4)
        assert upstream_request._PACKET_MEMO.size == len(packet) - 4
    assert sizes[0] == sizes[1] != sizes[2] != sizes[3]


def test_a_packet_too_large_is_refused_after_a_memo() -> None:
    fixed = connection_vars("127.0.0.1", "40001", "80")
    uwsgi_packet(fixed, _head(b"/a"), "/a", "", 0, False)
    big = b"/" + b"x" * 40000
    with pytest.raises(ValueError):
        uwsgi_packet(fixed, _head(big + b"?" + b"y" * 30000), big.decode(), "", 0, False)


def test_the_pool_holds_what_a_request_reads_of_its_upstream() -> None:
    servers = (UpstreamServer("unix:/run/a.sock"), UpstreamServer("127.0.0.1:9", backup=True))
    plain = UpstreamPool(Upstream("u", protocol="uwsgi", servers=servers, read_timeout=7.5))
    assert (plain.protocol, plain.gantry_keepalive, plain.read_timeout, plain.hashed) == (
        "uwsgi",
        False,
        7.5,
        False,
    )
    assert [peer.address for peer in plain.peers()] == ["unix:/run/a.sock", "127.0.0.1:9"]
    hashed = UpstreamPool(
        Upstream("h", servers=servers[:1], balance="hash", hash_key="$request_uri")
    )
    assert (hashed.protocol, hashed.hashed) == ("http", True)
    assert hashed.pick("", "/x") is hashed.primary[0]
