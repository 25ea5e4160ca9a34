"""Hostile and odd clients of gantry front: timeouts (a head dripped, a body stalled, an
idle keep-alive, a reader that stops), a pipeliner that never reads, a full-URL target
naming another server, and a bad request behind good proxied ones."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.process import GantryServer, wait_for
from tests.support_front import (
    Front,
    RawUpstream,
    fields_of,
    proc_status_kib,
    proxied_site,
    read_response,
    start_front,
)

TIMEOUTS = """
client_header_timeout = 1.0
client_body_timeout = 1.0
keepalive_timeout = 1.0
send_timeout = 1.0
"""


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "small.txt").write_bytes(b"small\n")
    (site / "big.bin").write_bytes(bytes(range(256)) * 4096 * 64)  # 64 MiB
    (site / "64k.bin").write_bytes(b"x" * 65536)
    return site


def _static_front(tmp_path: Path, extra: str = "") -> Front:
    site = _site(tmp_path)
    return start_front(
        tmp_path,
        extra + f'[[front.server]]\n[[front.server.location]]\npath = "/"\nroot = "{site}"\n',
    )


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything until the front closes; and when it closed (monotonic)."""
    sock.settimeout(limit)
    # a bytearray: tens of MB added to bytes piece by piece is copied over and over
    data = bytearray()
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return bytes(data), time.monotonic()


def test_head_dripped_byte_by_byte_gets_408_after_client_header_timeout(tmp_path: Path) -> None:
    front = _static_front(tmp_path, TIMEOUTS)
    try:
        with front.connect() as sock:
            started = time.monotonic()
            request = b"GET /small.txt HTTP/1.1\r\nHost: a\r\nX-Drip: " + b"y" * 100
            sock.setblocking(False)
            answer = b""
            for byte in request:  # a byte every 0.1 s: each read resets no timer
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break
                try:
                    answer += sock.recv(4096)
                except BlockingIOError:
                    pass
                if answer:
                    break
                time.sleep(0.1)
            sock.setblocking(True)
            rest, closed = _read_until_closed(sock, 10)
            answer += rest
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b"Connection: close" in answer
        assert 0.9 <= closed - started < 4.0, closed - started
    finally:
        front.stop()


def test_stalled_body_gets_408_after_client_body_timeout(tmp_path: Path) -> None:
    app = GantryServer("tests.apps_contract:app", log_path=tmp_path / "app.log")
    app.start()
    front = start_front(
        tmp_path,
        TIMEOUTS + proxied_site(f"127.0.0.1:{app.port}"),
    )
    try:
        with front.connect() as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
            started = time.monotonic()
            answer, closed = _read_until_closed(sock, 10)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert 0.9 <= closed - started < 4.0, closed - started
    finally:
        front.stop()
        app.stop()


def test_idle_keepalive_connection_closed_after_keepalive_timeout(tmp_path: Path) -> None:
    front = _static_front(tmp_path, TIMEOUTS)
    try:
        with front.connect() as sock:
            sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock)[1] == b"small\n"
            started = time.monotonic()
            rest, closed = _read_until_closed(sock, 10)
        assert rest == b""  # closed without a word, as nginx does
        assert 0.9 <= closed - started < 4.0, closed - started
    finally:
        front.stop()


def test_client_that_stops_reading_is_dropped_after_send_timeout(tmp_path: Path) -> None:
    front = _static_front(tmp_path, TIMEOUTS)
    try:
        with front.connect() as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            # reads nothing until the front gives up on it (send_timeout, 1 s)
            assert wait_for(lambda: "client timed out reading" in front.log.read_text(), 10)
            # what the kernels hold still comes (a few MiB on loopback), then the close
            data, _ = _read_until_closed(sock, 10)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert len(data) < 32 * 1024 * 1024, "the whole file went out to a client not reading"
    finally:
        front.stop()


def test_pipeliner_that_never_reads_does_not_grow_the_worker(tmp_path: Path) -> None:
    """2000 pipelined requests for a 64 KiB file (125 MiB of answers), none read: the
    front stops reading while its output is above the mark; then all come, in order."""
    front = _static_front(tmp_path, "keepalive_requests = 5000\n")
    try:
        assert front.process is not None
        pid = front.process.pid
        request = b"GET /64k.bin HTTP/1.1\r\nHost: a\r\n\r\n"
        with front.connect(30) as sock:
            sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n")
            read_response(sock)
            before = proc_status_kib(pid, "VmHWM")
            sock.setblocking(False)
            sent = 0
            total = request * 2000
            deadline = time.monotonic() + 5
            while sent < len(total) and time.monotonic() < deadline:
                try:
                    sent += sock.send(total[sent : sent + 65536])
                except BlockingIOError:
                    time.sleep(0.01)
            time.sleep(1.0)  # the front does what it will with what it read
            grown = proc_status_kib(pid, "VmHWM") - before
            sock.setblocking(True)
            if sent < len(total):
                sock.settimeout(30)
                received = b""
                while sent < len(total):  # read while sending the rest
                    received += sock.recv(1 << 20)
                    try:
                        sent += sock.send(total[sent : sent + 65536], socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass
            else:
                received = b""
            sock.settimeout(30)
            expected = 2000 * 65536
            count = 0
            buffer = received
            while count < 2000:
                while b"\r\n\r\n" not in buffer:
                    buffer += sock.recv(1 << 20)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head[:60]
                while len(buffer) < 65536:
                    buffer += sock.recv(1 << 20)
                assert buffer[:65536] == b"x" * 65536
                buffer = buffer[65536:]
                count += 1
            assert count * 65536 == expected
        assert grown < 16 * 1024, f"the worker's peak RSS grew {grown} KiB"
    finally:
        front.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def test_full_url_target_chooses_the_server_by_its_authority(tmp_path: Path) -> None:
    """GET http://admin.example/ with Host: public.example is a request to admin.example
    (RFC 9112 3.2.2): admin's rules apply, and the upstream gets the origin form."""
    upstream = RawUpstream(lambda head: OK)
    front = start_front(
        tmp_path,
        f"""
[[front.server]]
server_name = ["public.example"]
[[front.server.location]]
path = "/"
proxy = "raw"
[[front.server]]
server_name = ["admin.example"]
access = ["deny all"]
[[front.server.location]]
path = "/"
proxy = "raw"
[front.upstream.raw]
servers = [{{ address = "127.0.0.1:{upstream.port}" }}]
""",
    )
    try:
        with front.connect() as sock:
            sock.sendall(b"GET http://admin.example/ HTTP/1.1\r\nHost: public.example\r\n\r\n")
            head, _ = read_response(sock)
        assert head.startswith(b"HTTP/1.1 403 "), head[:60]
        assert upstream.received == []
        with front.connect() as sock:
            sock.sendall(
                b"GET http://user@public.example/x?y=1 HTTP/1.1\r\nHost: admin.example\r\n\r\n"
            )
            head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok"
        sent = upstream.received[0]
        assert sent.startswith(b"GET /x?y=1 HTTP/1.1\r\n"), sent[:60]
        assert ("host", "public.example") in fields_of(sent)
        assert [v for n, v in fields_of(sent) if n == "host"] == ["public.example"]
    finally:
        front.stop()
        upstream.close()


def _proxy_front(tmp_path: Path) -> tuple[Front, GantryServer]:
    app = GantryServer("tests.apps_contract:app", log_path=tmp_path / "app.log")
    app.start()
    front = start_front(tmp_path, proxied_site(f"127.0.0.1:{app.port}"))
    return front, app


def _responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """(status line, body) of each response in ``data`` (Content-Length, chunked, or
    ended by the close); read by offsets, as ``data`` may be large."""
    out = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n\r\n", at)
        head = data[at:end]
        at = end + 4
        fields = dict(fields_of(head + b"\r\n\r\n"))
        pieces = []
        if fields.get("transfer-encoding") == "chunked":
            while True:
                line_end = data.index(b"\r\n", at)
                size = int(data[at:line_end], 16)
                pieces.append(data[line_end + 2 : line_end + 2 + size])
                at = line_end + 2 + size + 2
                if size == 0:
                    break
        elif "content-length" in fields:
            length = int(fields["content-length"])
            pieces.append(data[at : at + length])
            at += length
        else:  # ended by the close
            pieces.append(data[at:])
            at = len(data)
        out.append((head.split(b"\r\n")[0], b"".join(pieces)))
    return out


def test_good_proxied_requests_answered_before_the_bad_one(tmp_path: Path) -> None:
    front, app = _proxy_front(tmp_path)
    try:
        with front.connect() as sock:
            sock.sendall(
                b"GET /slow?0.2 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /bad path HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            data, _ = _read_until_closed(sock, 10)
        answers = _responses(data)
        assert [line.split(b" ")[1] for line, _ in answers] == [b"200", b"200", b"400"], data
        assert [body for _, body in answers[:2]] == [b"slow done", b"Hello World!"]
    finally:
        front.stop()
        app.stop()


def test_closing_proxied_request_answered_then_the_close(tmp_path: Path) -> None:
    """Connection: close (and HTTP/1.0) end the connection after their answer, whatever
    follows them in the same packet."""
    front, app = _proxy_front(tmp_path)
    try:
        for first in (
            b"GET /slow?0.2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET /slow?0.2 HTTP/1.0\r\n\r\n",
        ):
            with front.connect() as sock:
                sock.sendall(first + b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n\x00garbage\r\n")
                data, _ = _read_until_closed(sock, 10)
            answers = _responses(data)
            assert len(answers) == 1 and answers[0][1] == b"slow done", data
    finally:
        front.stop()
        app.stop()


def test_proxied_pipeliner_that_never_reads_does_not_grow_the_worker(tmp_path: Path) -> None:
    """150 pipelined requests for a proxied 300 kB file (45 MB of answers), none read
    for a second: the upstream and the queue wait; then every answer comes, in order."""
    front, app = _proxy_front(tmp_path)
    try:
        assert front.process is not None
        pid = front.process.pid
        assert front.request("GET", "/file")[0].status == 200
        before = proc_status_kib(pid, "VmHWM")
        requests = b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n" * 150
        requests += b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        with front.connect(30) as sock:
            sock.sendall(requests)  # 5 kB: the kernel takes it all
            time.sleep(1.0)  # the front does what it will meanwhile
            grown = proc_status_kib(pid, "VmHWM") - before
            data, _ = _read_until_closed(sock, 30)
        answers = _responses(data)
        assert len(answers) == 151
        assert all(line.startswith(b"HTTP/1.1 200 ") for line, _ in answers)
        assert {len(body) for _, body in answers[:150]} == {300_000}
        assert answers[150][1] == b"Hello World!"
        assert grown < 16 * 1024, f"the worker's peak RSS grew {grown} KiB"
    finally:
        front.stop()
        app.stop()
