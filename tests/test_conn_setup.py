"""The cost of a new connection: what a connection's set-up shares with the worker's other
connections instead of making again, and that sharing it changes nothing they see."""

from __future__ import annotations

import socket
from pathlib import Path

from gantry.protocol.http1 import FieldBlockMemo, ProtocolError, RequestParser
from tests.corpus import RecordingSink
from tests.process import Launcher


class CountingParser(RequestParser):
    """A parser that counts the field blocks it reads (not taken from the memo)."""

    reads = 0

    def _read_block(self, block: bytes) -> int:
        CountingParser.reads += 1
        return super()._read_block(block)


def test_a_new_connection_takes_the_field_block_the_last_one_read() -> None:
    memo = FieldBlockMemo()
    block = b"Host: example.test\r\nUser-Agent: wrk\r\nConnection: close\r\n"
    CountingParser.reads = 0
    sinks = [RecordingSink(), RecordingSink()]
    for sink in sinks:  # two connections of one worker, one request each
        CountingParser(sink, None, memo).feed(b"GET /a HTTP/1.1\r\n" + block + b"\r\n")
    assert CountingParser.reads == 1
    first, second = (sink.requests[0].head for sink in sinks)
    assert first.headers == second.headers == [
        (b"Host", b"example.test"), (b"User-Agent", b"wrk"), (b"Connection", b"close")
    ]  # fmt: skip
    assert first.keep_alive is second.keep_alive is False
    # each head has a list of its own: a handler changing one leaves the other and the memo
    first.headers.append((b"X-Added", b"by a handler"))
    assert len(second.headers) == 3 and len(memo.fields) == 3


def test_connections_sharing_a_memo_with_different_blocks_each_get_their_own() -> None:
    memo = FieldBlockMemo()
    blocks = [
        b"Host: a.test\r\nConnection: close\r\n",
        b"Host: b.test\r\nConnection: keep-alive\r\n",
        b"Host: a.test\r\nConnection: close\r\n",
        b"Host: b.test\r\n",
    ]
    heads = []
    for block in blocks:
        sink = RecordingSink()
        RequestParser(sink, None, memo).feed(b"GET / HTTP/1.1\r\n" + block + b"\r\n")
        heads.append(sink.requests[0].head)
    assert [dict(head.headers)[b"Host"] for head in heads] == [
        b"a.test", b"b.test", b"a.test", b"b.test"
    ]  # fmt: skip
    assert [head.keep_alive for head in heads] == [False, True, False, True]


def test_a_host_found_valid_on_one_connection_does_not_pass_another() -> None:
    memo = FieldBlockMemo()
    RequestParser(RecordingSink(), None, memo).feed(b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n")
    try:
        RequestParser(RecordingSink(), None, memo).feed(
            b"GET / HTTP/1.1\r\nHost: bad..test\r\n\r\n"
        )
    except ProtocolError as exc:
        assert exc.status == 400
    else:
        raise AssertionError("an invalid Host passed after a valid one")


CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
server_name = ["a.test"]
[[front.server.location]]
path = "/"
root = "{a}"

[[front.server]]
server_name = ["b.test"]
[[front.server.location]]
path = "/"
root = "{b}"
"""


def _get_closed(port: int, host: str) -> bytes:
    """One request on a new connection with Connection: close; all the front sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = f"GET /who.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_new_connections_to_two_servers_in_turn_each_reach_their_own(
    launch: Launcher, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "who.txt").write_text(f"server {name}\n")
    front = launch.front(CONFIG.format(a=tmp_path / "a", b=tmp_path / "b"))
    for host in ("a.test", "a.test", "b.test", "a.test", "b.test", "b.test"):
        answer = _get_closed(front.port, host)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        assert b"\r\nConnection: close\r\n" in answer
        assert answer.endswith(f"server {host[0]}\n".encode())


PORTS_CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT", "127.0.0.1:{second}"]
workers = 1

[[front.server]]
[[front.server.location]]
path = "/"
return = "200 port=$server_port"
"""


def test_each_listener_names_its_own_port_to_each_of_its_connections(
    launch: Launcher,
) -> None:
    # the listener's port is found once per listener, then reused: never another's
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        second = probe.getsockname()[1]
    front = launch.front(PORTS_CONFIG.format(second=second))
    for port in (front.port, second, second, front.port, second, front.port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received[:80]
        assert received.endswith(f"port={port}".encode()), received[-40:]
