"""The configuration example of issue 17 (HTTPS at the front), as the issue writes it,
passes `gantry check` once TLS and the rewrite/header rules are one front: only the
certificate directory is the test's own (a pair for example.test made by the test's CA)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from gantry.config.front import front_config_from_dict
from gantry.config.front_model import ReturnRule
from tests.support_config import check_file
from tests.support_tls import TestCA

#: the issue's example, word for word
ISSUE_17 = """\
[front]
listen = ["0.0.0.0:80", "0.0.0.0:443 ssl"]

[[front.server]]
server_name = ["example.test", "www.example.test"]
listen = ["0.0.0.0:443 ssl"]                 # a server may name the listeners it answers on
ssl_certificate = "/etc/gantry/example.test/fullchain.pem"
ssl_certificate_key = "/etc/gantry/example.test/privkey.pem"
ssl_protocols = ["TLSv1.2", "TLSv1.3"]       # the default
hsts = "max-age=63072000; includeSubDomains"
add_header = { "X-Frame-Options" = "DENY", "X-Content-Type-Options" = "nosniff" }
gzip = true
gzip_comp_level = 1                          # 1-9, nginx's default 1
gzip_types = ["text/html", "text/css", "application/javascript", "application/json", "image/svg+xml"]
gzip_min_length = 256

[[front.server]]
server_name = ["example.test", "www.example.test"]
listen = ["0.0.0.0:80"]
return = "301 https://$host$request_uri"

[[front.server.location]]
path = "/old/"
rewrite = [["^/old/(.*)$", "/new/$1", "permanent"]]
"""  # noqa: E501 - as the issue writes it


def _as_checked(tmp: Path) -> str:
    """The example with its certificate directory made real."""
    ca = TestCA(tmp)
    pair = ca.issue("example.test", "www.example.test", stem="example")
    text = ISSUE_17.replace(
        "/etc/gantry/example.test/fullchain.pem", str(pair.certificate)
    ).replace("/etc/gantry/example.test/privkey.pem", str(pair.key))
    return text + "\n"


def test_the_issue_17_example_passes_gantry_check(short_tmp: Path) -> None:
    text = _as_checked(short_tmp)
    done = check_file(short_tmp / "gantry.toml", text)
    assert done.returncode == 0, done.stderr


def test_the_issue_17_example_means_what_it_says(short_tmp: Path) -> None:
    config = front_config_from_dict(tomllib.loads(_as_checked(short_tmp))["front"], "g.toml")
    assert [(li.address, li.ssl) for li in config.listeners] == [
        ("0.0.0.0:80", False),
        ("0.0.0.0:443", True),
    ]
    https, plain = config.servers
    assert https.listen == (1,) and plain.listen == (0,)
    assert https.hsts == "max-age=63072000; includeSubDomains"
    assert https.ssl_protocols == ("TLSv1.2", "TLSv1.3")
    assert {rule.name for rule in https.add_header} == {
        "X-Frame-Options",
        "X-Content-Type-Options",
    }
    assert isinstance(plain.rewrite.return_, ReturnRule)
    assert plain.rewrite.return_.status == 301
    (old,) = plain.locations
    assert old.path == "/old/" and len(old.rewrite.rewrites) == 1
    compression = https.compression
    assert compression is not None and compression.level == 1 and compression.min_length == 256
    assert {"text/css", "application/javascript", "image/svg+xml"} <= compression.types
