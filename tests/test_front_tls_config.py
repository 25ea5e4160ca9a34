"""The TLS keys of [front], without sockets: listen flags, a server's own listeners, the
checks of an ssl listener's default server, and the SNI choice of front.tls."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict, split_listen
from gantry.front.tls import FrontTLS
from tests.support_tls import TestCA


@pytest.mark.parametrize(
    ("text", "address", "flags"),
    [
        ("0.0.0.0:443 ssl", "0.0.0.0:443", {"ssl"}),
        ("[::]:443   ssl", "[::]:443", {"ssl"}),
        ("127.0.0.1:80", "127.0.0.1:80", set()),
        ("unix:/run/front.sock ssl", "unix:/run/front.sock", {"ssl"}),
    ],
)
def test_listen_flags_are_split_off(text: str, address: str, flags: set[str]) -> None:
    assert split_listen(text) == (address, frozenset(flags))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:443 h2", "the listen flag 'h2' needs 'ssl'"),
        ("0.0.0.0:443 http2", "the listen flag 'h2' needs 'ssl'"),
        ("0.0.0.0:443 tls", "unknown listen flag 'tls'"),
        ("localhost ssl", "expected HOST:PORT or a unix socket path, got 'localhost'"),
    ],
)
def test_bad_listen_specs_say_why(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        front_config_from_dict({"listen": [text]}, "g.toml")
    assert "g.toml: front.listen[0]" in str(error.value) and message in str(error.value)


def test_a_server_names_listeners_of_the_front(tmp_path: Path) -> None:
    config = front_config_from_dict(
        {
            "listen": ["127.0.0.1:80", "127.0.0.1:81"],
            "server": [{"listen": ["127.0.0.1:81"]}, {}],
        }
    )
    assert [s.listen for s in config.servers] == [(1,), ()]
    assert [(li.address, li.ssl) for li in config.listeners] == [
        ("127.0.0.1:80", False),
        ("127.0.0.1:81", False),
    ]
    assert config.listen == ("127.0.0.1:80", "127.0.0.1:81")
    with pytest.raises(ConfigError) as error:
        front_config_from_dict(
            {"listen": ["127.0.0.1:80"], "server": [{"listen": ["127.0.0.1:81"]}]}, "g.toml"
        )
    assert "g.toml: front.server[0].listen[0]: '127.0.0.1:81' is not one of" in str(error.value)


def test_the_default_server_of_an_ssl_listener_needs_a_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("a.test")
    certified = {
        "server_name": ["a.test"],
        "ssl_certificate": str(pair.certificate),
        "ssl_certificate_key": str(pair.key),
    }
    with pytest.raises(ConfigError) as error:
        front_config_from_dict(
            {"listen": ["127.0.0.1:443 ssl"], "server": [{"server_name": ["x"]}, certified]},
            "g.toml",
        )
    assert "g.toml: front.server[0].ssl_certificate: expected a certificate" in str(error.value)
    # default = true moves the default to the server that has one
    config = front_config_from_dict(
        {
            "listen": ["127.0.0.1:443 ssl"],
            "server": [{"server_name": ["x"]}, {**certified, "default": True}],
        }
    )
    assert config.listeners[0].ssl
    with pytest.raises(ConfigError, match=r"front.server\[0\].ssl_certificate_key: expected"):
        front_config_from_dict({"server": [{"ssl_certificate": str(pair.certificate)}]})


def test_sni_switches_to_the_servers_own_context(tmp_path: Path) -> None:
    """The callback FrontTLS sets, called as OpenSSL would: a known name switches the
    connection to its server's context, an unknown one leaves the default's."""
    ca = TestCA(tmp_path)
    a, b = ca.issue("a.test"), ca.issue("b.test")
    config = front_config_from_dict(
        {
            "listen": ["127.0.0.1:443 ssl"],
            "server": [
                {"server_name": [name], "ssl_certificate": str(p.certificate),
                 "ssl_certificate_key": str(p.key)}
                for name, p in (("a.test", a), ("*.b.test", b))
            ],
        }
    )  # fmt: skip
    listener = FrontTLS(config).listeners[0]
    callback = listener.sni_callback
    assert callback is not None

    class FakeConnection:  # what the callback reads and sets of an SSLObject
        context = listener

    for name, switched in (("a.test", False), ("www.b.test", True), ("nope.test", False)):
        conn = FakeConnection()
        callback(conn, name, listener)  # type: ignore[arg-type]
        assert (conn.context is not listener) == switched, name
    assert listener.minimum_version == ssl.TLSVersion.TLSv1_2
