"""[front] listen after the TLS merge: one grammar for the 'ssl' and 'proxy_protocol'
flags (the TLS branch's split_listen and the real_ip branch's were two), HTTP/2's flags
checked for what they need, and each flag reaching its listener."""

from __future__ import annotations

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict, split_listen


@pytest.mark.parametrize(
    ("text", "address", "flags"),
    [
        ("0.0.0.0:8080 proxy_protocol", "0.0.0.0:8080", {"proxy_protocol"}),
        ("unix:/run/front.sock proxy_protocol", "unix:/run/front.sock", {"proxy_protocol"}),
        ("0.0.0.0:443 ssl", "0.0.0.0:443", {"ssl"}),
        ("127.0.0.1:80", "127.0.0.1:80", set()),
    ],
)
def test_both_flags_are_known(text: str, address: str, flags: set[str]) -> None:
    assert split_listen(text) == (address, frozenset(flags))


def test_each_listener_keeps_its_own_flags() -> None:
    config = front_config_from_dict(
        {
            "listen": ["127.0.0.1:80", "127.0.0.1:81 proxy_protocol"],
            "real_ip": {"from": ["127.0.0.1/32"], "header": "proxy_protocol"},
        }
    )
    assert config.listen == ("127.0.0.1:80", "127.0.0.1:81")
    assert [(li.ssl, li.proxy_protocol) for li in config.listeners] == [
        (False, False),
        (False, True),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0.0.0:443 ssl proxy_protocol", "not supported yet"),
        ("0.0.0.0:443 proxy_protocol h2", "the listen flag 'h2' needs 'ssl'"),
        ("0.0.0.0:443 ssl h2c", "'h2c' (cleartext HTTP/2 with prior knowledge) takes no"),
        ("0.0.0.0:80 proxy-protocol", "unknown listen flag 'proxy-protocol'"),
    ],
)
def test_bad_flags_say_why(text: str, message: str) -> None:
    data = {"listen": [text], "real_ip": {"from": ["127.0.0.1/32"]}}
    with pytest.raises(ConfigError) as error:
        front_config_from_dict(data, "g.toml")
    assert "g.toml: front.listen[0]" in str(error.value) and message in str(error.value)


def test_proxy_protocol_still_needs_trusted_peers() -> None:
    with pytest.raises(ConfigError) as error:
        front_config_from_dict({"listen": ["127.0.0.1:81 proxy_protocol"]}, "g.toml")
    assert "front.real_ip.from" in str(error.value)
