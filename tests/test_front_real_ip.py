"""[front.real_ip]: X-Forwarded-For / X-Real-IP believed only from trusted peers (an
address, or "unix:"), and the address found is what a real app's REMOTE_ADDR, an HTTP
upstream's X-Forwarded-For / X-Real-IP, the access log, allow/deny and the blocklist see.

The client is trusted when it connects from 127.0.0.1 and not when it binds 127.0.0.2
(both loopback on Linux): one front shows both sides."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.front.addresses import AddressSet, network_key
from gantry.front.real_ip import forwarded_address
from tests.process import Front, Launcher, wait_for
from tests.support_front import RawUpstream, fields_of

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Site:
    """A front before a real gantry serve app (uwsgi) and a raw HTTP upstream."""

    def __init__(self, front: Front, raw: RawUpstream, unix_path: str, blocked: Path) -> None:
        self.front = front
        self.raw = raw
        self.unix_path = unix_path
        self.blocked = blocked


@pytest.fixture(scope="module")
def site(module_launch: Launcher, module_short_tmp: Path) -> Iterator[Site]:
    app_sock = module_short_tmp / "app.sock"
    module_launch.serve(
        "tests.apps_contract:app", "--uwsgi-socket", str(app_sock), wait_for=str(app_sock)
    )
    raw = RawUpstream(lambda head: OK)
    unix_path = str(module_short_tmp / "front.sock")
    blocked = module_short_tmp / "blocked.txt"
    blocked.write_text("# spoofers\n192.0.2.66\n")
    front = module_launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT", "unix:{unix_path}"]
access_log = "{module_short_tmp / "access.log"}"

[front.real_ip]
from = ["127.0.0.1", "198.51.100.0/24", "unix:"]
header = "X-Forwarded-For"
recursive = true

[front.blocklist]
files = ["{blocked}"]

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
[[front.server.location]]
path = "/raw"
proxy = "raw"
[[front.server.location]]
path = "/denied"
proxy = "raw"
access = ["deny 203.0.113.0/24", "allow all"]

[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{app_sock}" }}]
[front.upstream.raw]
servers = [{{ address = "127.0.0.1:{raw.port}" }}]
"""
    )
    try:
        yield Site(front, raw, unix_path, blocked)
    finally:
        raw.close()


def _connect(site: Site, source: str = "127.0.0.1") -> socket.socket:
    if source == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(site.unix_path)
        return sock
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", site.front.port))
    return sock


def _get(sock: socket.socket, path: str, forwarded: str | None = None) -> tuple[int, bytes]:
    extra = f"X-Forwarded-For: {forwarded}\r\n" if forwarded is not None else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    response = http.client.HTTPResponse(sock)  # one request at a time: nothing over-read
    response.begin()
    return response.status, response.read()


def _remote_addr(site: Site, forwarded: str | None, source: str = "127.0.0.1") -> str:
    with _connect(site, source) as sock:
        status, body = _get(sock, "/environ", forwarded)
    assert status == 200, body
    return str(json.loads(body)["REMOTE_ADDR"])


def test_forwarded_for_from_an_untrusted_peer_is_ignored(site: Site) -> None:
    assert _remote_addr(site, "203.0.113.9", source="127.0.0.2") == "127.0.0.2"


def test_forwarded_for_from_a_trusted_peer_reaches_the_app(site: Site) -> None:
    # recursive: the last address not in `from`, reading from the right
    assert _remote_addr(site, "203.0.113.9, 198.51.100.1") == "203.0.113.9"
    # every address trusted: the leftmost
    assert _remote_addr(site, "198.51.100.7, 198.51.100.1") == "198.51.100.7"
    # a malformed element stops the reading: what was found before it stands
    assert _remote_addr(site, "203.0.113.1, junk, 198.51.100.1") == "198.51.100.1"
    assert _remote_addr(site, "2001:db8::5") == "2001:db8::5"
    assert _remote_addr(site, "::ffff:203.0.113.4") == "203.0.113.4"
    assert _remote_addr(site, None) == "127.0.0.1"


def test_unix_socket_peers_are_trusted_by_unix(site: Site) -> None:
    assert _remote_addr(site, "203.0.113.20", source="unix") == "203.0.113.20"


def test_each_request_of_a_connection_has_its_own_address(site: Site) -> None:
    with _connect(site) as sock:
        addresses = []
        for forwarded in ("203.0.113.30", None, "203.0.113.31"):
            status, body = _get(sock, "/environ", forwarded)
            assert status == 200
            addresses.append(json.loads(body)["REMOTE_ADDR"])
    assert addresses == ["203.0.113.30", "127.0.0.1", "203.0.113.31"]


def test_an_http_upstream_gets_the_real_address(site: Site) -> None:
    site.raw.received.clear()
    with _connect(site) as sock:
        assert _get(sock, "/raw", "203.0.113.9, 198.51.100.1")[0] == 200
    fields = dict(fields_of(site.raw.received[0]))
    assert fields["x-real-ip"] == "203.0.113.9"
    # nginx's $proxy_add_x_forwarded_for: what came, then the client's address
    assert fields["x-forwarded-for"] == "203.0.113.9, 198.51.100.1, 203.0.113.9"
    site.raw.received.clear()
    with _connect(site, "127.0.0.2") as sock:
        assert _get(sock, "/raw", "203.0.113.9")[0] == 200
    fields = dict(fields_of(site.raw.received[0]))
    assert fields["x-real-ip"] == "127.0.0.2"
    assert fields["x-forwarded-for"] == "203.0.113.9, 127.0.0.2"


def test_the_access_log_records_the_real_address(site: Site, module_short_tmp: Path) -> None:
    with _connect(site) as sock:
        assert _get(sock, "/environ?logged", "203.0.113.77")[0] == 200
    log = module_short_tmp / "access.log"
    assert wait_for(lambda: "/environ?logged" in log.read_text(), 5)
    line = next(x for x in log.read_text().splitlines() if "/environ?logged" in x)
    assert line.startswith("203.0.113.77 - - ["), line


def test_allow_deny_sees_the_real_address(site: Site) -> None:
    with _connect(site) as sock:
        assert _get(sock, "/denied", "203.0.113.9")[0] == 403
        assert _get(sock, "/denied", "192.0.2.9")[0] == 200
    with _connect(site, "127.0.0.2") as sock:
        assert _get(sock, "/denied", "203.0.113.9")[0] == 200


def test_the_blocklist_sees_the_real_address(site: Site) -> None:
    with _connect(site) as sock:
        assert _get(sock, "/environ", "192.0.2.66")[0] == 403
        assert _get(sock, "/environ", "192.0.2.67")[0] == 200
    with _connect(site, "127.0.0.2") as sock:
        assert _get(sock, "/environ", "192.0.2.66")[0] == 200


def _trusted(*networks: str) -> AddressSet:
    return AddressSet([(key, n) for n in networks if (key := network_key(n)) is not None])


def test_forwarded_address_follows_nginx() -> None:
    """ngx_http_get_forwarded_addr: the last element; recursive: skip trusted ones."""
    trusted = _trusted("10.0.0.0/8")
    values = [b"192.0.2.1, 10.0.0.2", b"10.0.0.3"]  # two fields read as one list
    assert forwarded_address(values, "10.9.9.9", trusted, False) == "10.0.0.3"
    assert forwarded_address(values, "10.9.9.9", trusted, True) == "192.0.2.1"
    assert forwarded_address([b"10.0.0.1,10.0.0.2"], "10.9.9.9", trusted, True) == "10.0.0.1"
    assert forwarded_address([b""], "10.9.9.9", trusted, True) == "10.9.9.9"
    assert forwarded_address([b"nonsense"], "10.9.9.9", trusted, True) == "10.9.9.9"
    assert forwarded_address([b" 192.0.2.5 "], "10.9.9.9", trusted, False) == "192.0.2.5"


def test_config_errors_name_the_key() -> None:
    from gantry.config import ConfigError
    from gantry.config.front import front_config_from_dict

    cases = [
        ({"real_ip": {"from": ["nonsense"]}}, "front.real_ip.from"),
        ({"real_ip": {"from": ["10.0.0.0/8"], "header": "Forwarded"}}, "front.real_ip.header"),
        ({"listen": ["127.0.0.1:1 proxy_protocol"]}, "front.real_ip.from"),
        ({"listen": ["127.0.0.1:1 h2"]}, "front.listen[0]"),
    ]
    for table, key in cases:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            front_config_from_dict(table, "g.toml")


def test_a_dual_stack_listener_names_ipv4_clients_as_ipv4(
    launch: Launcher, short_tmp: Path
) -> None:
    """On "[::]:PORT" an IPv4 client's peer name is "::ffff:127.0.0.1": it is trusted as
    127.0.0.1, and without a forwarded address the app sees 127.0.0.1."""
    app_sock = short_tmp / "app.sock"
    launch.serve("tests.apps_contract:app", "--uwsgi-socket", str(app_sock), wait_for=str(app_sock))
    front = launch.front(
        f"""
[front]
listen = ["[::]:FRONT_PORT"]
[front.real_ip]
from = ["127.0.0.1"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{app_sock}" }}]
"""
    )
    for forwarded, expected in ((None, "127.0.0.1"), ("203.0.113.3", "203.0.113.3")):
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            status, body = _get(sock, "/environ", forwarded)
        assert status == 200
        assert json.loads(body)["REMOTE_ADDR"] == expected


def test_gantry_check_writes_the_key_from_and_reads_it_back(tmp_path: Path) -> None:
    """The schema's field is from_ (a Python keyword), the key is "from": the effective
    config `gantry check` prints must load back as it is."""
    from tests.support_config import check_file

    config = """
[front]
listen = ["127.0.0.1:8080 proxy_protocol"]
[front.real_ip]
from = ["10.0.0.0/8", "unix:"]
header = "proxy_protocol"
[[app]]
name = "hello"
module = "gantry.demo:app"
"""
    done = check_file(tmp_path / "gantry.toml", config)
    assert done.returncode == 0, done.stderr
    assert "from_" not in done.stdout and 'from = [\n    "10.0.0.0/8",' in done.stdout
    again = check_file(tmp_path / "again.toml", done.stdout)
    assert again.returncode == 0, again.stderr


def test_long_forwarded_values_are_not_remembered() -> None:
    """The handler remembers short values with their address; a client's long ones (up to
    the head's size limit) are read each time, so the memory they take is bounded."""
    import ipaddress

    from gantry.config.front_model import RealIp
    from gantry.front.real_ip import FOUND_VALUE, RealAddressHandler, TrustedPeers
    from gantry.protocol.http1 import RequestHead

    config = RealIp(trusted=(ipaddress.ip_network("127.0.0.1"),), header="X-Forwarded-For")
    handler = RealAddressHandler(config, TrustedPeers(config))

    class Request:
        peer_trusted = True
        peer_addr = remote_addr = "127.0.0.1"
        head = RequestHead()

    request = Request()
    long_value = b"192.0.2.1, " * (FOUND_VALUE // 8) + b"203.0.113.9"
    for value in (b"203.0.113.8", long_value):
        request.head.headers = [(b"X-Forwarded-For", value)]
        handler.handle(request, None)  # type: ignore[arg-type]
    assert request.remote_addr == "203.0.113.9"
    assert list(handler.found) == [b"203.0.113.8"]
