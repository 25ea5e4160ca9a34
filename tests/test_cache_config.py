"""The `[front.cache.NAME]` table and a location's `cache` key."""

from __future__ import annotations

import ipaddress
import tomllib
from typing import Any

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict

ZONE = """
[front.upstream.app]
servers = [{ address = "127.0.0.1:9000" }]

[front.cache.pages]
path = "/var/cache/gantry/pages"
max_size = "2g"
memory = "64m"
inactive = "10m"
key = "$scheme$host$request_uri"
valid = { "200" = "10m", "301" = "1h", "404" = "1m", "any" = "5s" }
use_stale = ["error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504"]
background_update = true
lock = true
lock_timeout = "5s"
min_uses = 1
bypass = ["$cookie_sessionid", "$http_authorization"]
purge_allow = ["127.0.0.1/32", "::1/128"]

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
cache = "pages"
"""


def _front(text: str) -> dict[str, Any]:
    front = tomllib.loads(text)["front"]
    assert isinstance(front, dict)
    return front


def test_the_issues_example_is_read_with_units() -> None:
    config = front_config_from_dict(_front(ZONE), "g.toml")
    zone = config.caches["pages"]
    assert zone.max_size == 2 * 1024**3 and zone.memory == 64 * 1024**2
    assert zone.inactive == 600 and zone.lock_timeout == 5
    assert zone.valid == {200: 600, 301: 3600, 404: 60, 0: 5}
    assert zone.use_stale[:3] == ("error", "timeout", "updating")
    assert zone.lock and zone.background_update
    assert zone.bypass == ("$cookie_sessionid", "$http_authorization")
    assert zone.purge_allow == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.servers[0].locations[0].cache == "pages"


def test_a_location_without_cache_has_none() -> None:
    text = ZONE.replace('cache = "pages"\n', "")
    assert front_config_from_dict(_front(text)).servers[0].locations[0].cache is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('cache = "pages"', 'cache = "other"', "cache: no cache zone named 'other' (known: pages)"),
        ('proxy = "app"\n', "", "cache: a cached location needs proxy"),
        ('max_size = "2g"', 'max_size = "2x"', "front.cache.pages.max_size"),
        ('inactive = "10m"', "inactive = 0", "front.cache.pages.inactive"),
        ('"404" = "1m"', '"44" = "1m"', "front.cache.pages.valid"),
        ('"127.0.0.1/32"', '"nowhere"', "front.cache.pages.purge_allow"),
        ('"updating"', '"sometimes"', "front.cache.pages.use_stale"),
        ("lock = true", "lokc = true", "front.cache.pages.lokc"),
    ],
)
def test_errors_name_the_file_and_key(old: str, new: str, expected: str) -> None:
    assert old in ZONE
    with pytest.raises(ConfigError) as info:
        front_config_from_dict(_front(ZONE.replace(old, new)), "g.toml")
    assert "g.toml: " in str(info.value)
    assert expected in str(info.value)
