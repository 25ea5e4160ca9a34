"""HTTP/2 at the front: real clients (curl with nghttp2, httpx[http2], h2load, a raw h2
client) against `gantry front` with an ALPN "h2" TLS listener and an h2c listener;
static files, a proxied Flask app under `gantry serve`, request bodies by hash, many
streams on one connection, flow control both ways and back-pressure to the upstream."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.apps_http2 import BLOCK, TINY
from tests.process import Front, Launcher, free_port, require_program, wait_for
from tests.support_http2 import RawH2
from tests.support_tls import TestCA

BIG = 3 * 1024 * 1024 + 17


class Site:
    """One front with both HTTP/2 listeners, its files, its upstream and its CA."""

    def __init__(self, launch: Launcher, tmp: Path, extra: str = "", tail: str = "") -> None:
        self.tmp = tmp
        self.ca = TestCA(tmp)
        pair = self.ca.issue("localhost")
        self.www = tmp / "www"
        self.www.mkdir()
        (self.www / "index.html").write_text("hello over h2\n")
        self.big = os.urandom(BIG)
        (self.www / "big.bin").write_bytes(self.big)
        self.app = launch.serve("tests.apps_http2:app", "--workers", "2", "--threads", "4")
        self.h2c = free_port()
        self.access_log = tmp / "access.log"
        self.front: Front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl h2", "127.0.0.1:{self.h2c} h2c"]
access_log = "{self.access_log}"
client_max_body_size = "8m"
{extra}
[[front.server]]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
root = "{self.www}"
[[front.server.location]]
path = "/app/"
proxy = "flask"
[[front.server.location]]
path = "/raw/"
proxy = "flask"
request_buffering = false
[front.upstream.flask]
servers = [{{ address = "127.0.0.1:{self.app.port}" }}]
{tail}""")  # fmt: skip
        self.port = self.front.port

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def curl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        curl = require_program("curl")
        resolve = f"localhost:{self.port}:127.0.0.1"
        return subprocess.run(
            [curl, "-sS", "--cacert", str(self.ca.ca_file), "--resolve", resolve, *args],
            capture_output=True, timeout=60,
        )  # fmt: skip

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


@pytest.fixture
def site(launch: Launcher, short_tmp: Path) -> Site:
    return Site(launch, short_tmp)


def test_curl_gets_static_files_over_h2_by_alpn_and_h2c_and_http11_stays(site: Site) -> None:
    out = site.tmp / "out.bin"
    done = site.curl("--http2", "-o", str(out), "-w", "%{http_version} %{http_code}",
                     site.url("/big.bin"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"2 200"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(site.big).digest()
    # a client that does not offer h2 gets HTTP/1.1 on the same listener
    done = site.curl("--http1.1", "-w", " %{http_version}", site.url("/"))
    assert done.stdout == b"hello over h2\n 1.1", done.stderr
    # cleartext with prior knowledge
    curl = require_program("curl")
    done = subprocess.run(
        [curl, "-sS", "--http2-prior-knowledge", "-w", " %{http_version}",
         f"http://127.0.0.1:{site.h2c}/"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.stdout == b"hello over h2\n 2", done.stderr
    # HEAD: the head alone; a missing file: the error page
    done = site.curl("--http2", "-I", site.url("/big.bin"))
    assert done.stdout.startswith(b"HTTP/2 200"), done.stdout
    assert f"content-length: {BIG}".encode() in done.stdout
    done = site.curl("--http2", "-w", " %{http_code}", site.url("/nothing"))
    assert done.stdout == b"404 Not Found\n 404"
    # the access log says which protocol each request came by
    assert wait_for(lambda: len(site.log_lines()) >= 5)
    lines = site.log_lines()
    assert '"GET /big.bin HTTP/2.0" 200' in lines[0], lines
    assert f" 200 {BIG} " in lines[0], lines
    assert '"GET / HTTP/1.1" 200' in lines[1], lines
    assert '"GET / HTTP/2.0" 200' in lines[2], lines
    assert '"HEAD /big.bin HTTP/2.0" 200 0 ' in lines[3], lines


def test_a_client_that_sends_http1_to_an_h2c_listener_is_closed(site: Site) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", site.h2c), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
    # a GOAWAY (type 7) with PROTOCOL_ERROR after the server's SETTINGS, then the close
    assert b"\x07\x00\x00\x00\x00\x00" in got and got.endswith(b"\x00\x00\x00\x01"), got
    done = site.curl("--http2", site.url("/"))
    assert done.stdout == b"hello over h2\n"


def test_httpx_posts_bodies_to_a_proxied_flask_app(site: Site) -> None:
    body = os.urandom(5 * 1024 * 1024 + 3)
    digest = hashlib.sha256(body).hexdigest()
    with httpx.Client(http2=True, verify=site.ca.client_context(), timeout=30) as client:
        for path in ("/app/echo", "/raw/echo"):  # buffered, then streamed to the upstream
            response = client.post(site.url(path), content=body)
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200, response.text
            assert response.json() == {"sha256": digest, "size": len(body)}
        # a body sent in pieces, with no Content-Length
        response = client.post(
            site.url("/app/echo"), content=iter([body[:100_000], body[100_000:]])
        )
        assert response.json() == {"sha256": digest, "size": len(body)}
        # :authority is the Host; cookies come together; an HTTP upstream is asked in
        # HTTP/1.1 (as nginx's proxy_pass does)
        response = client.get(site.url("/app/who"), headers=[("cookie", "a=1"), ("cookie", "b=2")])
        seen = response.json()
        assert seen["protocol"] == "HTTP/1.1"
        assert seen["host"] == f"localhost:{site.port}"
        assert seen["cookie"] == "a=1; b=2"
        assert seen["forwarded_proto"] == "https"
        # past client_max_body_size (8m): 413 before the body is read
        too_big = client.post(site.url("/app/echo"), content=b"x" * (9 * 1024 * 1024))
        assert too_big.status_code == 413
        # the connection goes on serving
        assert client.get(site.url("/")).text == "hello over h2\n"


def test_many_concurrent_streams_on_one_connection(site: Site) -> None:
    client = RawH2(site.h2c)
    try:
        streams = []
        for i in range(100):  # under http2_max_concurrent_streams (128)
            path = "/app/who" if i % 4 == 0 else ("/big.bin" if i % 10 == 1 else "/")
            streams.append((path, client.request(path)))
        for path, stream_id in streams:
            answer = client.wait(stream_id, 60)
            assert answer.status == 200, (path, answer)
            if path == "/":
                assert bytes(answer.body) == b"hello over h2\n"
            elif path == "/big.bin":
                assert len(answer.body) == BIG
            else:
                assert json.loads(answer.body)["host"] == "localhost"
    finally:
        client.close()
    h2load = require_program("h2load")
    done = subprocess.run(
        [h2load, "-n", "2000", "-c", "2", "-m", "50", f"http://127.0.0.1:{site.h2c}/"],
        capture_output=True, timeout=120, text=True,
    )  # fmt: skip
    assert "2000 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout


def test_a_large_response_goes_through_a_small_client_window(site: Site) -> None:
    size = 6 * 1024 * 1024 + 5
    client = RawH2(site.port, site.ca.client_context(), window=16384)
    try:
        proxied = client.request(f"/app/big/{size}")
        static = client.request("/big.bin")
        answer = client.wait(proxied, 60)
        assert answer.status == 200 and len(answer.body) == size
        assert answer.body == (BLOCK * (size // len(BLOCK) + 1))[:size]
        assert client.wait(static, 60).body == site.big
    finally:
        client.close()


def test_a_client_that_does_not_read_pauses_the_upstream(site: Site) -> None:
    """Back-pressure: with the client's window shut, the front stops reading the
    upstream (the app stops making the body), and other streams are served meanwhile;
    once the client reads, the whole body comes."""
    size = 256 * 1024 * 1024
    progress = site.tmp / "progress"
    client = RawH2(site.h2c, auto_ack=False)
    try:
        slow = client.request(f"/app/big/{size}?progress={progress}")

        def made() -> int:
            try:
                return int(progress.read_text())
            except (OSError, ValueError):
                return 0

        assert wait_for(lambda: made() > 0)
        # the app gets as far as the buffers on the way take, then waits
        last = -1
        deadline = time.monotonic() + 20
        while made() != last and time.monotonic() < deadline:
            last = made()
            wait_for(lambda seen=last: made() != seen, limit=1.0)  # type: ignore[misc]
        assert made() < 32 * 1024 * 1024, made()
        # a slow stream does not hold the others (a file of the front's own)
        other = RawH2(site.h2c)
        try:
            assert other.wait(other.request("/")).body == b"hello over h2\n"
            # a slow upstream does not hold the others of its connection either
            sign = site.tmp / "sign"
            waiting = other.request(f"/app/wait?sign={sign}")
            assert other.wait(other.request("/big.bin"), 30).body == site.big
            sign.write_text("go")
            assert other.wait(waiting).body == b"waited\n"
        finally:
            other.close()
        # now read it all: the rest is made and comes
        client.auto_ack = True
        answer = client.answers[slow]
        client.conn.acknowledge_received_data(len(answer.body), slow)
        client.flush()
        answer = client.wait(slow, 120)
        assert answer.ended and len(answer.body) == size
        assert made() == size
    finally:
        client.close()


def test_streams_are_independent_when_one_is_reset(site: Site) -> None:
    client = RawH2(site.h2c)
    try:
        first = client.request(f"/app/big/{64 * 1024 * 1024}")
        client.conn.reset_stream(first)
        client.flush()
        answers = [client.request("/") for _ in range(5)]
        for stream_id in answers:
            assert client.wait(stream_id).body == b"hello over h2\n"
    finally:
        client.close()
    done = site.curl("--http2", site.url("/"))
    assert done.stdout == b"hello over h2\n"


def test_the_handler_chain_works_alike_over_http2(launch: Launcher, short_tmp: Path) -> None:
    """gzip, add_header, a rewrite and a return, access rules, a proxied HEAD and an
    upstream that is down: each answered over HTTP/2 as over HTTP/1."""
    down = free_port()  # nothing listens there
    site = Site(launch, short_tmp, tail=f"""
[front.upstream.down]
servers = [{{ address = "127.0.0.1:{down}" }}]
[[front.server.location]]
path = "/down/"
proxy = "down"
[[front.server.location]]
path = "/healthz"
return = '200 "ok"'
[[front.server.location]]
path = "/old/"
rewrite = [["^/old/(.*)$", "/new/$1", "permanent"]]
[[front.server.location]]
path = "/private/"
access = ["deny all"]
[[front.server.location]]
path = "/text/"
root = "{short_tmp / "www"}"
gzip = true
gzip_types = ["text/plain"]
add_header = {{ "X-Via" = "h2 $scheme" }}
""")  # fmt: skip
    text_dir = site.www / "text"
    text_dir.mkdir()
    plain = ("compressible line\n" * 2000).encode()
    (text_dir / "big.txt").write_bytes(plain)
    with httpx.Client(http2=True, verify=site.ca.client_context(), timeout=30) as client:
        response = client.get(site.url("/text/big.txt"), headers={"accept-encoding": "gzip"})
        assert response.http_version == "HTTP/2"
        assert response.headers["content-encoding"] == "gzip"
        assert response.content == plain  # httpx decodes it
        assert int(response.headers["content-length"]) < len(plain) // 10
        assert response.headers["x-via"] == "h2 https"
        assert client.get(site.url("/healthz")).text == "ok"
        moved = client.get(site.url("/old/x"))
        assert moved.status_code == 301
        assert moved.headers["location"].endswith("/new/x")
        assert client.get(site.url("/private/x")).status_code == 403
        head = client.head(site.url("/app/who"))
        assert head.status_code == 200 and head.content == b""
        bad = client.get(site.url("/down/x"))
        assert bad.status_code == 502 and b"502" in bad.content
        # and the connection still serves
        assert client.get(site.url("/")).text == "hello over h2\n"


def test_a_stream_of_small_pieces_is_compressed_with_a_flush_a_turn(
    launch: Launcher, short_tmp: Path
) -> None:
    """A proxied stream of 3000 pieces, gzipped over HTTP/2: it decodes to the original,
    and the pieces that arrive together share a flush (00 00 ff ff), not one each."""
    site = Site(launch, short_tmp, tail="""
[[front.server.location]]
path = "/app/tiny"
proxy = "flask"
gzip = true
gzip_types = ["text/plain"]
""")  # fmt: skip
    with (
        httpx.Client(http2=True, verify=site.ca.client_context(), timeout=30) as client,
        client.stream("GET", site.url("/app/tiny"), headers={"accept-encoding": "gzip"}) as got,
    ):
        assert got.http_version == "HTTP/2"
        assert got.headers["content-encoding"] == "gzip"
        raw = b"".join(got.iter_raw())
    assert gzip.decompress(raw) == TINY
    flushes = raw.count(b"\x00\x00\xff\xff")
    # one a piece (3002) with a flush per piece; one a read however the reads fall
    assert flushes < len(TINY) // 40 // 2, f"{flushes} flushes for {len(TINY) // 40} pieces"


def test_connection_fields_are_stripped_and_request_trailers_ignored(
    launch: Launcher, short_tmp: Path
) -> None:
    """Connection, Keep-Alive and Transfer-Encoding never reach an HTTP/2 client, neither
    the upstream's (the proxy drops them) nor add_header's (the stream does): the raw
    client's h2 refuses a response carrying them. The upstream's request has Host from
    :authority; a request's trailers are ignored."""
    from tests.support_front import RawUpstream

    raw = RawUpstream(
        lambda head: (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"Transfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    )
    try:
        site = Site(launch, short_tmp, tail=f"""
[front.upstream.raw]
servers = [{{ address = "127.0.0.1:{raw.port}" }}]
[[front.server.location]]
path = "/raw-up/"
proxy = "raw"
add_header = {{ "Connection" = "close", "Keep-Alive" = "timeout=5", "X-Added" = "1" }}
""")  # fmt: skip
        client = RawH2(site.h2c)
        try:
            answer = client.wait(client.request("/raw-up/x", authority="named.test"))
            assert answer.status == 200 and bytes(answer.body) == b"hello"
            names = {name for name, _ in answer.headers}
            assert b"x-kept" in names and b"x-added" in names
            assert not names & {b"connection", b"keep-alive", b"transfer-encoding"}, names
            head = raw.received[-1].lower()
            assert b"\r\nhost: named.test\r\n" in head, head
            # a POST whose body ends with trailers: answered as without them
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(
                stream_id,
                [(":method", "POST"), (":path", "/app/echo"), (":scheme", "http"),
                 (":authority", "localhost")],
            )  # fmt: skip
            client.conn.send_data(stream_id, b"abc")
            client.conn.send_headers(stream_id, [("x-checksum", "1")], end_stream=True)
            client.answers[stream_id] = type(answer)()
            client.flush()
            echoed = client.wait(stream_id)
            assert echoed.status == 200
            assert json.loads(echoed.body)["size"] == 3
        finally:
            client.close()
    finally:
        raw.close()


def test_a_graceful_stop_lets_open_streams_finish_and_refuses_new_ones(
    launch: Launcher, short_tmp: Path
) -> None:
    import signal

    from h2.errors import ErrorCodes

    site = Site(launch, short_tmp)
    sign = short_tmp / "sign"
    client = RawH2(site.h2c)
    try:
        waiting = client.request(f"/app/wait?sign={sign}")
        assert client.wait(client.request("/")).status == 200  # the connection is up
        assert site.front.process is not None
        site.front.process.send_signal(signal.SIGTERM)
        # once the worker has the signal, a new stream is refused (the client may ask
        # elsewhere); until then they are answered
        deadline = time.monotonic() + 20
        while True:
            answer = client.wait(client.request("/"))
            if answer.reset is not None or time.monotonic() > deadline:
                break
            assert answer.status == 200
        assert answer.reset == ErrorCodes.REFUSED_STREAM, answer
        sign.write_text("go")
        assert client.wait(waiting).body == b"waited\n"  # the open one finished
    finally:
        client.close()
    assert site.front.process.wait(timeout=30) == 0
