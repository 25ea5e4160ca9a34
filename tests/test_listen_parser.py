"""One parser for [front] listen: parse_listener gives the Listener the front runs with,
and split_listen (what `gantry up` binds by) and the normalised spec `gantry check`
prints are read off that Listener, so the two can no longer disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from gantry.config.front import front_config_from_dict, parse_listener, split_listen
from gantry.config.front_model import Listener
from tests.support_config import check_file


@pytest.mark.parametrize(
    ("text", "listener"),
    [
        ("127.0.0.1:80", Listener("127.0.0.1:80")),
        ("0.0.0.0:443   ssl", Listener("0.0.0.0:443", ssl=True)),
        ("[::1]:81 proxy_protocol", Listener("[::1]:81", proxy_protocol=True)),
        ("unix:/run/f.sock proxy_protocol", Listener("unix:/run/f.sock", proxy_protocol=True)),
    ],
)
def test_one_parser_gives_the_listener(text: str, listener: Listener) -> None:
    assert parse_listener(text) == listener
    assert split_listen(text) == (listener.address, listener.flags)
    if not listener.ssl:  # an ssl listener needs a server with certificates
        config = front_config_from_dict(
            {"listen": [text], "real_ip": {"from": ["127.0.0.1/32"]}}, "g.toml"
        )
        assert config.listeners == (listener,)
        assert config.listen == (listener.address,)


@pytest.mark.parametrize("text", ["nowhere ssl", "127.0.0.1:99999", "127.0.0.1:80 spdy"])
def test_bad_entries_are_refused_by_both(text: str) -> None:
    with pytest.raises(ValueError) as parsed:
        parse_listener(text)
    with pytest.raises(ValueError) as split:
        split_listen(text)
    assert str(parsed.value) == str(split.value)


def test_check_prints_the_flags_in_one_order(tmp_path: Path) -> None:
    done = check_file(
        tmp_path / "gantry.toml",
        '[front]\nlisten = ["127.0.0.1:8080", "127.0.0.1:8081   proxy_protocol"]\n'
        '[front.real_ip]\nfrom = ["127.0.0.1/32"]\n',
    )
    assert done.returncode == 0, done.stderr
    assert '"127.0.0.1:8081 proxy_protocol"' in done.stdout, done.stdout
