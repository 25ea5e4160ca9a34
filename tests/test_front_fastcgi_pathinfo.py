"""fastcgi_split_path_info (issue 20): PATH_INFO and SCRIPT_NAME split off the path as
nginx splits them, with a real php-fpm printing what it was given; the split never
makes php-fpm run a file that is not an existing script of the location."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from tests.process import Front, Launcher
from tests.support_php import fastcgi_front, php_pool

SERVER = b"""<?php
header('Content-Type: text/plain');
foreach (['SCRIPT_NAME', 'SCRIPT_FILENAME', 'PATH_INFO', 'PHP_SELF', 'REQUEST_URI',
          'DOCUMENT_URI', 'SPLIT'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? '(unset)', "\\n";
}
"""
# writes a marker beside the site if it ever runs
EVIL = b"<?php file_put_contents(__DIR__ . '/../../ran', 'pwned'); echo 'ran';\n"


@pytest.fixture(scope="module")
def site(module_launch: Launcher) -> Iterator[tuple[Front, Path]]:
    base = module_launch.workdir
    os.chmod(base, 0o755)  # php-fpm's children may be nobody
    root = base / "site"
    for folder in ("uploads", "loose"):
        (root / folder).mkdir(parents=True)
    (root / "server.php").write_bytes(SERVER)
    (root / "uploads" / "evil.jpg").write_bytes(EVIL)
    (root / "loose" / "evil.jpg").write_bytes(EVIL)
    (root / "loose" / "server.php").write_bytes(SERVER)
    for folder in (root, root / "uploads", root / "loose"):
        os.chmod(folder, 0o755)
    _, sock = php_pool(module_launch, base)
    front = module_launch.front(
        fastcgi_front(
            sock,
            f"""
# a split that would take any first segment as the script: the location's own
# regex and the file check still hold
[[front.server.location]]
modifier = "~"
path = "^/loose/.*\\\\.php(/|$)"
root = "{root}"
fastcgi_split_path_info = "^(/loose/[^/]+)(/.*)$"
proxy = "php"

[[front.server.location]]
modifier = "~"
path = "[^/]\\\\.php(/|$)"
root = "{root}"
fastcgi_split_path_info = "^(.+?\\\\.php)(/.*)$"
try_files = ["$fastcgi_script_name", "=404"]
proxy = "php"
fastcgi_param = {{ SPLIT = "$fastcgi_script_name|$fastcgi_path_info" }}
""",
            max_tries=1,
        )
    )
    yield front, root


def _server(body: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.decode().splitlines())


def test_path_info_is_split_off(site: tuple[Front, Path]) -> None:
    front, root = site
    response, body = front.request("GET", "/server.php/a/b%20c?x=1")
    assert response.status == 200, body
    got = _server(body)
    assert got["SCRIPT_NAME"] == "/server.php"
    assert got["SCRIPT_FILENAME"] == f"{root}/server.php"
    assert got["PATH_INFO"] == "/a/b c"
    assert got["PHP_SELF"] == "/server.php/a/b c"
    assert got["REQUEST_URI"] == "/server.php/a/b%20c?x=1"
    assert got["DOCUMENT_URI"] == "/server.php/a/b c"
    assert got["SPLIT"] == "/server.php|/a/b c"


def test_no_path_info_without_one(site: tuple[Front, Path]) -> None:
    front, root = site
    response, body = front.request("GET", "/server.php?x=1")
    assert response.status == 200, body
    got = _server(body)
    assert got["SCRIPT_NAME"] == "/server.php" and got["PATH_INFO"] in ("", "(unset)")
    assert got["SPLIT"] == "/server.php|"


@pytest.mark.parametrize(
    "path",
    [
        "/uploads/evil.jpg/x.php",  # the classic: no .php script in the path
        "/uploads/evil.jpg/x.php/more",  # the split's script is not a file
        "/uploads/evil.jpg.php/x",  # nor is this one
        "/loose/evil.jpg/x.php",  # a loose split names evil.jpg: not a .php script
        "/nothing.php/x",
    ],
)
def test_a_split_never_runs_what_is_not_a_script(site: tuple[Front, Path], path: str) -> None:
    front, root = site
    response, body = front.request("GET", path)
    assert response.status == 404, body
    assert not (root.parent / "ran").exists()


def test_loose_split_still_runs_real_scripts(site: tuple[Front, Path]) -> None:
    front, root = site
    response, body = front.request("GET", "/loose/server.php/tail")
    assert response.status == 200, body
    got = _server(body)
    assert got["SCRIPT_FILENAME"] == f"{root}/loose/server.php"
    assert got["PATH_INFO"] == "/tail"


def _front(location: dict[str, object]) -> dict[str, object]:
    return {
        "upstream": {
            "php": {"protocol": "fastcgi", "servers": [{"address": "unix:/tmp/x.sock"}]},
            "web": {"servers": [{"address": "127.0.0.1:9"}]},
        },
        "server": [{"location": [location]}],
    }


def test_config_errors_name_the_key() -> None:
    base = {"modifier": "~", "path": "\\.php", "root": "/srv", "proxy": "php"}
    where = re.escape("front.server[0].location[0].fastcgi_split_path_info")
    with pytest.raises(ConfigError, match=rf"t.toml: {where}: expected .* two groups"):
        front_config_from_dict(_front({**base, "fastcgi_split_path_info": "^(.+)$"}), "t.toml")
    with pytest.raises(ConfigError, match=rf"{where}: not a regular expression"):
        front_config_from_dict(_front({**base, "fastcgi_split_path_info": "^(.+"}), "t.toml")
    http = {"path": "/", "proxy": "web", "fastcgi_split_path_info": "^(.+)(/.*)$"}
    with pytest.raises(ConfigError, match=rf"{where}: only for a location whose proxy is"):
        front_config_from_dict(_front(http), "t.toml")
