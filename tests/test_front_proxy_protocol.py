"""A proxy_protocol listener: the PROXY header (v1 and v2) comes first, from a raw socket
and from a real HAProxy (send-proxy, send-proxy-v2), and its client address is what the
app sees; a malformed header, a missing one, or one from a peer not in real_ip.from
closes the connection with one error-log line, and the worker goes on serving."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.protocol.proxy_protocol import encode_v1, encode_v2
from tests.process import Front, Launcher, free_port, require_program, wait_for

REQUEST = b"GET /cgi HTTP/1.1\r\nHost: t\r\n\r\n"


class Site:
    def __init__(self, front: Front, plain_port: int) -> None:
        self.front = front
        self.plain_port = plain_port


@pytest.fixture(scope="module")
def site(module_launch: Launcher, module_short_tmp: Path) -> Iterator[Site]:
    app_sock = module_short_tmp / "app.sock"
    module_launch.serve(
        "tests.apps_contract:app", "--uwsgi-socket", str(app_sock), wait_for=str(app_sock)
    )
    plain_port = free_port()
    front = module_launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT proxy_protocol", "127.0.0.1:{plain_port}"]
client_header_timeout = "1s"

[front.real_ip]
from = ["127.0.0.1"]
header = "proxy_protocol"

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"

[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{app_sock}" }}]
"""
    )
    yield Site(front, plain_port)


def _exchange(port: int, data: bytes, source: str = "127.0.0.1", pieces: int = 1) -> bytes:
    """Send ``data`` (in ``pieces`` writes) and read until the front closes or answers."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        step = max(1, len(data) // pieces)
        for at in range(0, len(data), step):
            sock.sendall(data[at : at + step])
            if pieces > 1:
                time.sleep(0.005)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return b""
        return response.read()


def _cgi(port: int, header: bytes, **kwargs: object) -> dict[str, str]:
    body = _exchange(port, header + REQUEST, **kwargs)  # type: ignore[arg-type]
    assert body, "closed without an answer"
    return dict(json.loads(body))


def test_v1_and_v2_headers_give_the_client_address(site: Site) -> None:
    port = site.front.port
    v1 = encode_v1(("203.0.113.5", 4444), ("127.0.0.1", port))
    cgi = _cgi(port, v1)
    assert (cgi["REMOTE_ADDR"], cgi["REMOTE_PORT"]) == ("203.0.113.5", "4444")
    v2 = encode_v2(("2001:db8::9", 5555), ("::1", port), b"\x04\x00\x02hi")
    cgi = _cgi(port, v2)
    assert (cgi["REMOTE_ADDR"], cgi["REMOTE_PORT"]) == ("2001:db8::9", "5555")
    mapped = encode_v1(("::ffff:198.51.100.4", 1), ("::1", port))
    assert _cgi(port, mapped)["REMOTE_ADDR"] == "198.51.100.4"


def test_a_header_in_pieces_is_waited_for(site: Site) -> None:
    port = site.front.port
    v1 = encode_v1(("203.0.113.6", 4000), ("127.0.0.1", port))
    assert _cgi(port, v1, pieces=len(v1))["REMOTE_ADDR"] == "203.0.113.6"
    v2 = encode_v2(("203.0.113.7", 4000), ("127.0.0.1", port))
    assert _cgi(port, v2, pieces=len(v2))["REMOTE_ADDR"] == "203.0.113.7"


def test_local_and_unknown_keep_the_peer_address(site: Site) -> None:
    port = site.front.port
    assert _cgi(port, b"PROXY UNKNOWN\r\n")["REMOTE_ADDR"] == "127.0.0.1"
    assert _cgi(port, encode_v2(None, None))["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        (b"PROXY TCP4 203.0.113.1 10.0.0.1 99999 80\r\n", "bad port"),
        (b"PROXY TCP4 " + b"1" * 120, "107 bytes"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[:13] + b"\x11\x00\x00", "too short"),
        (encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[:13] + b"\x51\x00\x0c", "family"),
    ],
)
def test_malformed_headers_close_with_one_log_line(site: Site, data: bytes, logged: str) -> None:
    before = site.front.log_text().count("bad PROXY protocol header")
    assert _exchange(site.front.port, data + REQUEST) == b""
    assert wait_for(
        lambda: site.front.log_text().count("bad PROXY protocol header") == before + 1, 5
    )
    lines = [x for x in site.front.log_text().splitlines() if "bad PROXY protocol" in x]
    assert logged in lines[-1], lines[-1]
    # the worker is fine
    v1 = encode_v1(("203.0.113.8", 1), ("127.0.0.1", 2))
    assert _cgi(site.front.port, v1)["REMOTE_ADDR"] == "203.0.113.8"


def test_a_peer_not_in_from_is_closed(site: Site) -> None:
    v1 = encode_v1(("203.0.113.5", 1), ("127.0.0.1", 2))
    assert _exchange(site.front.port, v1 + REQUEST, source="127.0.0.2") == b""
    assert wait_for(lambda: "peer not in real_ip.from" in site.front.log_text(), 5)


def test_a_silent_peer_is_closed_at_the_header_timeout(site: Site) -> None:
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", site.front.port))
        sock.sendall(b"PROXY TCP4 203.0.113.5")  # and nothing more
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed, with no HTTP answer to a non-HTTP peer
        assert time.monotonic() - started < 5
    assert wait_for(lambda: "waiting for the PROXY protocol header" in site.front.log_text(), 5)


def test_the_plain_listener_takes_no_header(site: Site) -> None:
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", site.plain_port))
        sock.sendall(REQUEST)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert json.loads(response.read())["REMOTE_ADDR"] == "127.0.0.1"


HAPROXY = """
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend to_front_v1
frontend v2
    bind 127.0.0.1:{v2}
    default_backend to_front_v2
backend to_front_v1
    server front 127.0.0.1:{front} send-proxy
backend to_front_v2
    server front 127.0.0.1:{front} send-proxy-v2
"""


def test_real_haproxy_send_proxy_v1_and_v2(
    site: Site, module_launch: Launcher, module_short_tmp: Path
) -> None:
    binary = require_program("haproxy")
    v1, v2 = free_port(), free_port()
    config = module_short_tmp / "haproxy.cfg"
    config.write_text(HAPROXY.format(v1=v1, v2=v2, front=site.front.port))
    module_launch.program([binary, "-db", "-f", str(config)], ("127.0.0.1", v2), "haproxy")
    # HAProxy's own peer address is 127.0.0.1 (trusted); the client's is 127.0.0.3
    for port in (v1, v2):
        body = _exchange(port, REQUEST, source="127.0.0.3")
        assert json.loads(body)["REMOTE_ADDR"] == "127.0.0.3", port


def test_the_cap_per_address_counts_clients_not_their_proxy(
    launch: Launcher, short_tmp: Path
) -> None:
    """max_connections_per_address = 2 on a proxy_protocol listener: the client named by
    the PROXY header is capped; the trusted proxy carrying other clients is not."""
    (short_tmp / "site").mkdir()
    (short_tmp / "site" / "index.html").write_text("hi\n")
    front = launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT proxy_protocol"]
max_connections_per_address = 2
[front.real_ip]
from = ["127.0.0.1"]
header = "proxy_protocol"
[[front.server]]
[[front.server.location]]
path = "/"
root = "{short_tmp / "site"}"
"""
    )
    held = []
    try:
        for n in range(4):  # four clients through the one proxy: all in
            sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
            sock.sendall(encode_v1((f"203.0.113.{n}", 1000), ("127.0.0.1", front.port)))
            held.append(sock)
        for n in range(2):  # a second and third from 203.0.113.0: the third is closed
            sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
            sock.sendall(encode_v1(("203.0.113.0", 2000 + n), ("127.0.0.1", front.port)))
            held.append(sock)
        for sock in held[:5]:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200
            response.read()
        held[5].settimeout(5)
        assert held[5].recv(10) == b""
    finally:
        for sock in held:
            sock.close()


def test_the_cap_per_address_spares_a_trusted_proxy(launch: Launcher, short_tmp: Path) -> None:
    """real_ip from X-Forwarded-For on a proxy_protocol listener: the connections all come
    from the trusted proxy, which is not one client: none is refused by the cap."""
    (short_tmp / "site").mkdir()
    (short_tmp / "site" / "index.html").write_text("hi\n")
    front = launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT proxy_protocol"]
max_connections_per_address = 2
[front.real_ip]
from = ["127.0.0.1"]
header = "X-Forwarded-For"
[[front.server]]
[[front.server.location]]
path = "/"
root = "{short_tmp / "site"}"
"""
    )
    held = []
    try:
        for n in range(4):
            sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
            sock.sendall(encode_v1((f"203.0.113.{n}", 1000), ("127.0.0.1", front.port)))
            held.append(sock)
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200
            response.read()
    finally:
        for sock in held:
            sock.close()


def test_gantry_up_listens_with_proxy_protocol(launch: Launcher) -> None:
    """The stack binds the front's sockets itself: the flag must reach the front there
    too (the address alone is bound, the header is read)."""
    up = launch.up(
        """
[front]
listen = ["127.0.0.1:FRONT_PORT proxy_protocol"]
[front.real_ip]
from = ["127.0.0.1"]
header = "proxy_protocol"
[[app]]
name = "hello"
module = "gantry.demo:app"
"""
    )
    v2 = encode_v2(("198.51.100.23", 4321), ("127.0.0.1", up.port))
    request = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
    assert wait_for(lambda: _exchange(up.port, v2 + request) == b"Hello World!", 30)
    assert wait_for(lambda: "198.51.100.23 - - [" in up.log_text(), 5), up.log_text()
