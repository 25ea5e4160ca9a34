"""The front's own TLS termination (front.tls_accept.TLSStream: an SSLObject over memory
BIOs on the loop's plain TCP transport): a client driven by hand over a raw socket
(Python's ssl.SSLObject) against `gantry front`, so the test decides how the bytes are
cut and whether the client ever sends its close_notify."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.process import Front, Launcher
from tests.support_tls import TestCA, site_tls_config

BIG = 3 * 1024 * 1024 + 17


class HandClient:
    """A TLS client over a raw socket: every byte it sends and reads is the test's."""

    def __init__(self, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="site.test")
        #: the server closed the TCP connection
        self.eof = False

    def handshake(self, piece: int = 0) -> None:
        """The handshake; each of our flights sent ``piece`` bytes at a time (0: whole)."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_out(piece)
                self._pull()
        self._send_out(piece)

    def _send_out(self, piece: int) -> None:
        data = self.outgoing.read()
        if not piece:
            self.sock.sendall(data)
            return
        for start in range(0, len(data), piece):  # bounded by the flight's size
            self.sock.sendall(data[start : start + piece])

    def _pull(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            raise ConnectionError("the server closed")
        self.incoming.write(data)

    def send(self, *records: bytes, piece: int = 0) -> None:
        """Each of ``records`` in TLS records of its own, all sent in one go (or in
        ``piece``-byte writes, cutting records anywhere)."""
        for record in records:
            self.tls.write(record)
        self._send_out(piece)

    def read_until(self, done: bytes | int) -> bytes:
        """Plaintext until ``done`` is in it (bytes) or it is that long (int)."""
        data = b""
        deadline = time.monotonic() + 20
        while (done not in data) if isinstance(done, bytes) else (len(data) < done):
            assert time.monotonic() < deadline, data[:200]
            try:
                data += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._pull()
        return data

    def read_close(self, within: float) -> tuple[bool, bool]:
        """Read until the TCP connection ends (``within`` seconds at most), never sending
        our close_notify: (the server's close_notify came, the TCP connection ended)."""
        self.sock.settimeout(within)
        notified = False
        ended = False
        for _ in range(1000):  # bounded: a few records, then the end
            while not notified:  # the records in so far
                try:
                    if not self.tls.read(65536):
                        notified = True
                except ssl.SSLZeroReturnError:
                    notified = True
                except ssl.SSLWantReadError:
                    break
            if ended:
                break
            try:
                self._pull()
            except ConnectionError:
                ended = True
            except TimeoutError:
                break
        return notified, ended

    def close(self) -> None:
        self.sock.close()


def _front(launch: Launcher, ca: TestCA, root: Path, extra: str = "") -> Front:
    return launch.front(site_tls_config(ca, root, f"workers = 1\n{extra}"))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("over TLS\n")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    return root


def _get(path: str, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return f"GET {path} HTTP/1.1\r\nHost: site.test\r\n".encode() + connection + b"\r\n"


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_the_close_does_not_wait_for_the_clients_close_notify(
    launch: Launcher, tmp_path: Path, site: Path, version: str
) -> None:
    """Connection: close: the response, the server's close_notify and the TCP close, at
    once, though the client never answers with its own close_notify (uvloop's transport
    held the socket open for the client's, up to 30 s)."""
    ca = TestCA(tmp_path)
    front = _front(launch, ca, site)
    context = ca.client_context()
    context.maximum_version = context.minimum_version = getattr(ssl.TLSVersion, version)
    client = HandClient(front.port, context)
    try:
        client.handshake()
        client.send(_get("/index.html", close=True))
        answer = client.read_until(b"over TLS\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        notified, ended = client.read_close(within=5.0)
        assert notified, "no close_notify from the server"
        assert ended, "the server kept the TCP connection open waiting for our close_notify"
    finally:
        client.close()


def test_requests_cut_anywhere_and_pipelined_in_one_flight(
    launch: Launcher, tmp_path: Path, site: Path
) -> None:
    """The handshake fed 7 bytes at a time, then three requests: two in one record and
    one of its own, their bytes sent 5 at a time (records cut mid-way), then three more
    in three records sent in one write: every answer comes, in order."""
    ca = TestCA(tmp_path)
    front = _front(launch, ca, site)
    client = HandClient(front.port, ca.client_context())
    try:
        client.handshake(piece=7)
        client.send(_get("/index.html") + _get("/nothing"), _get("/index.html"), piece=5)
        answers = b""
        while answers.count(b"over TLS\n") < 2:  # the 404 comes between the two
            answers += client.read_until(b"over TLS\n")
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
        assert statuses == [b"200", b"404", b"200"], answers
        client.send(_get("/index.html"), _get("/index.html"), _get("/index.html", close=True))
        answers = b""
        while answers.count(b"over TLS\n") < 3:
            answers += client.read_until(b"over TLS\n")
        assert answers.count(b"HTTP/1.1 200 ") == 3
        _, ended = client.read_close(within=5.0)
        assert ended
    finally:
        client.close()


def test_a_big_file_goes_whole_to_a_client_that_reads_late(
    launch: Launcher, tmp_path: Path, site: Path
) -> None:
    """3 MiB to a client that reads nothing for a while (the front's output fills and is
    paused), then everything: the body's hash is the file's; the connection serves the
    next request."""
    ca = TestCA(tmp_path)
    front = _front(launch, ca, site)
    client = HandClient(front.port, ca.client_context())
    try:
        client.handshake()
        client.send(_get("/big.bin"))
        time.sleep(0.5)  # the client reads nothing meanwhile: not a wait on a condition
        head = client.read_until(b"\r\n\r\n")
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"Content-Length: %d" % BIG in head
        body += client.read_until(BIG - len(body))
        expected = hashlib.sha256((site / "big.bin").read_bytes()).hexdigest()
        assert hashlib.sha256(body[:BIG]).hexdigest() == expected
        assert len(body) == BIG
        client.send(_get("/index.html"))
        assert client.read_until(b"over TLS\n").startswith(b"HTTP/1.1 200 ")
    finally:
        client.close()


def test_silent_and_stalled_handshakes_end_at_client_header_timeout(
    launch: Launcher, tmp_path: Path, site: Path
) -> None:
    """A client that sends nothing, and one that stops halfway through its ClientHello,
    are closed once client_header_timeout (1 s) is up; a client served meanwhile is not
    disturbed."""
    ca = TestCA(tmp_path)
    front = _front(launch, ca, site, 'client_header_timeout = "1s"')
    silent = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    stalled = HandClient(front.port, ca.client_context())
    try:
        try:
            stalled.tls.do_handshake()
        except ssl.SSLWantReadError:
            hello = stalled.outgoing.read()
        stalled.sock.sendall(hello[: len(hello) // 2])
        started = time.monotonic()
        served = HandClient(front.port, ca.client_context())
        try:
            served.handshake()
            served.send(_get("/index.html"))
            assert served.read_until(b"over TLS\n").startswith(b"HTTP/1.1 200 ")
        finally:
            served.close()
        for sock in (silent, stalled.sock):
            sock.settimeout(5)
            try:
                assert sock.recv(65536) == b""
            except ConnectionResetError:
                pass  # an abort may reset: closed all the same
        assert 0.5 < time.monotonic() - started < 4.5
    finally:
        silent.close()
        stalled.close()
