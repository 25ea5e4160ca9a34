"""HTTPS upstreams on the proxy's own sockets (after the TLS merge): the TLS session
runs through memory BIOs inside the upstream connection, driven by the worker's poller.
Large bodies both ways arrive byte for byte, and a kept connection is filed under its
pool: one checked against one CA never serves a pool that trusts another."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.apps_contract import FILE_SIZE, _file_bytes
from tests.process import Launcher
from tests.support_tls import TestCA


def _stack(launch: Launcher, tmp: Path) -> tuple[str, str]:
    """The app (HTTP) behind a TLS origin front; the origin's address, and the config
    of a front whose upstreams reach it over https (trusted, and trusting another CA)."""
    ca = TestCA(tmp)
    pair = ca.issue("upstream.test", "127.0.0.1", stem="upstream")
    (tmp / "other").mkdir()
    other_ca = TestCA(tmp / "other")
    app = launch.serve("tests.apps_contract:app")
    origin = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
[[front.server]]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
protocol = "http"
servers = [{{ address = "127.0.0.1:{app.port}" }}]
""", name="origin")  # fmt: skip
    address = f"127.0.0.1:{origin.port}"
    config = f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "trusted"
[[front.server.location]]
path = "/stranger/"
proxy = "stranger"
[front.upstream.trusted]
protocol = "https"
keepalive = 8
max_tries = 1
servers = [{{ address = "{address}" }}]
ssl_trusted_certificate = "{ca.ca_file}"
ssl_name = "upstream.test"
[front.upstream.stranger]
protocol = "https"
keepalive = 8
max_tries = 1
servers = [{{ address = "{address}" }}]
ssl_trusted_certificate = "{other_ca.ca_file}"
ssl_name = "upstream.test"
"""  # fmt: skip
    return address, config


def test_large_bodies_cross_an_https_upstream_both_ways(launch: Launcher, short_tmp: Path) -> None:
    _, config = _stack(launch, short_tmp)
    front = launch.front(config)
    response, body = front.request("GET", "/file")
    assert response.status == 200, front.log_text()[-2000:]
    assert len(body) == FILE_SIZE
    assert hashlib.sha256(body).digest() == hashlib.sha256(_file_bytes()).digest()
    # past the connection's write high-water mark: the sender waits on the TLS socket
    sent = bytes(range(251)) * (3 * 1024 * 1024 // 251)
    for _ in range(2):  # the second on the kept connection
        response, body = front.request("POST", "/echo", body=sent)
        assert response.status == 200, front.log_text()[-2000:]
        assert response.getheader("X-Body-SHA256") == hashlib.sha256(sent).hexdigest()
        assert body == b"%d:%d" % (len(sent), len(sent))


def test_a_kept_tls_connection_serves_only_its_own_pool(launch: Launcher, short_tmp: Path) -> None:
    _, config = _stack(launch, short_tmp)
    front = launch.front(config)
    for _ in range(3):
        response, body = front.request("GET", "/hello")
        assert (response.status, body) == (200, b"Hello World!"), front.log_text()[-2000:]
    # the same server, a pool that does not trust its certificate: the connection the
    # other pool checked and kept must not be taken
    response, _ = front.request("GET", "/stranger/hello")
    assert response.status == 502
    assert "certificate verify failed" in front.log_text()
    response, body = front.request("GET", "/hello")
    assert (response.status, body) == (200, b"Hello World!")
