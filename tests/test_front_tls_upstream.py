"""HTTPS upstreams (protocol = "https"): the front checks the upstream's certificate by
default (502 when it is not trusted or not for the name), against a real TLS server
(another `gantry front` serving a file over TLS)."""

from __future__ import annotations

from pathlib import Path

from tests.process import Launcher
from tests.support_config import check_file
from tests.support_tls import TestCA


def test_an_https_upstream_is_verified_and_refused_when_not_trusted(
    launch: Launcher, short_tmp: Path
) -> None:
    ca = TestCA(short_tmp)
    pair = ca.issue("upstream.test", "127.0.0.1", stem="upstream")
    (short_tmp / "other").mkdir()
    other_ca = TestCA(short_tmp / "other")
    root = short_tmp / "www"
    root.mkdir()
    origin = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT ssl"]
[[front.server]]
ssl_certificate = "{pair.certificate}"
ssl_certificate_key = "{pair.key}"
[[front.server.location]]
path = "/"
root = "{root}"
""", name="origin")  # fmt: skip
    address = f"127.0.0.1:{origin.port}"
    upstreams = {
        "trusted": f'ssl_trusted_certificate = "{ca.ca_file}"\nssl_name = "upstream.test"',
        "by_ip": f'ssl_trusted_certificate = "{ca.ca_file}"',
        "stranger": f'ssl_trusted_certificate = "{other_ca.ca_file}"',
        "wrong_name": f'ssl_trusted_certificate = "{ca.ca_file}"\nssl_name = "other.test"',
        "unchecked": f'ssl_trusted_certificate = "{other_ca.ca_file}"\nssl_verify = false',
        "system": "",  # the system's CAs do not know the test's CA
    }
    config = '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n[[front.server]]\n'
    for name in upstreams:
        config += f'[[front.server.location]]\npath = "/{name}/"\nproxy = "{name}"\n'
    for name, extra in upstreams.items():
        config += (
            f'[front.upstream.{name}]\nprotocol = "https"\nmax_tries = 1\n'
            f'servers = [{{ address = "{address}" }}]\n{extra}\n'
        )
    for name in upstreams:
        (root / name).mkdir(exist_ok=True)
        (root / name / "page.txt").write_text(f"{name} over https\n")
    front = launch.front(config)
    expected = {
        "trusted": 200, "by_ip": 200, "unchecked": 200,
        "stranger": 502, "wrong_name": 502, "system": 502,
    }  # fmt: skip
    for name, status in expected.items():
        response, body = front.request("GET", f"/{name}/page.txt")
        assert response.status == status, (name, body, front.log_text()[-2000:])
        if status == 200:
            assert body == f"{name} over https\n".encode()
    assert "certificate verify failed" in front.log_text()


def test_an_unreadable_trusted_certificate_is_a_config_error(short_tmp: Path) -> None:
    done = check_file(
        short_tmp / "g.toml",
        '[front]\n[front.upstream.api]\nprotocol = "https"\n'
        'servers = [{ address = "127.0.0.1:8443" }]\n'
        f'ssl_trusted_certificate = "{short_tmp / "nope.pem"}"\n',
    )
    assert done.returncode != 0
    assert "front.upstream.api.ssl_trusted_certificate" in done.stderr, done.stderr
    assert "nope.pem" in done.stderr
