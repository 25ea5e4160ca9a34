"""add_header, proxy_set_header and proxy_hide_header at the front (issue 17): the same
rules run by a real nginx side by side, then what Gantry does differently on purpose
(a location keeps the server's fields), and static, proxied, cached and error
responses alike."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from tests.process import Launcher, free_port
from tests.support_rewrite import Answer, ask, start_nginx

ADDED = ("x-frame-options", "x-content-type-options", "x-always")

NGINX_SERVERS = """
server {
    listen 127.0.0.1:NGINX_PORT;
    server_name site.test;
    add_header X-Frame-Options DENY;
    add_header X-Content-Type-Options nosniff;
    add_header X-Always yes always;
    location /static/ { root STATIC_ROOT; }
    location /app/ {
        proxy_pass http://127.0.0.1:APP_PORT;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Client-Secret "";
        proxy_set_header X-Uri $uri;
        proxy_hide_header X-Powered-By;
    }
    location /dead/ { proxy_pass http://127.0.0.1:DEAD_PORT; }
    location /redirect { return 301 /elsewhere; }
}
"""

GANTRY_CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.upstream.app]
servers = [{ address = "127.0.0.1:APP_PORT" }]
[front.upstream.dead]
servers = [{ address = "127.0.0.1:DEAD_PORT" }]
[front.upstream.uwsgi]
protocol = "uwsgi"
servers = [{ address = "unix:UWSGI_SOCKET" }]

[front.cache.zone]
path = "CACHE_DIR"
valid = { "200" = "1m" }

[[front.server]]
server_name = ["site.test"]
[front.server.add_header]
"X-Frame-Options" = "DENY"
"X-Content-Type-Options" = "nosniff"
"X-Always" = { value = "yes", always = true }

[[front.server.location]]
path = "/static/"
root = "STATIC_ROOT"

[[front.server.location]]
path = "/app/"
proxy = "app"
proxy_hide_header = ["X-Powered-By"]
[front.server.location.proxy_set_header]
"Host" = "$host"
"X-Real-IP" = "$remote_addr"
"X-Client-Secret" = ""
"X-Uri" = "$uri"

[[front.server.location]]
path = "/dead/"
proxy = "dead"

[[front.server.location]]
path = "/redirect"
return = "301 /elsewhere"

[[front.server.location]]
path = "/merged/"
root = "STATIC_ROOT"
add_header = { "x-frame-options" = "SAMEORIGIN", "X-Uri" = { value = "$uri", always = true } }

[[front.server.location]]
path = "/cached/"
proxy = "app"
cache = "zone"

[[front.server.location]]
path = "/uwsgi/"
proxy = "uwsgi"
proxy_set_header = { "Host" = "backend.internal", "X-Client-Secret" = "" }
proxy_hide_header = ["x-powered-by"]
"""


@dataclass
class Pair:
    """A Gantry front and a real nginx running the same rules."""

    front: int
    nginx: int


@pytest.fixture(scope="module")
def pair(module_launch: Launcher) -> Iterator[Pair]:
    root = module_launch.workdir / "www"
    for folder in ("static", "merged"):
        (root / folder).mkdir(parents=True)
        (root / folder / "file.txt").write_text("a static file\n")
        os.chmod(root / folder, 0o755)
    os.chmod(root, 0o755)
    app_port, dead_port = free_port(), free_port()
    socket = module_launch.workdir / "app.sock"
    module_launch.serve("tests.apps_rewrite:app", "--http", f"127.0.0.1:{app_port}")
    module_launch.serve(
        "tests.apps_rewrite:app", "--uwsgi-socket", str(socket), name="uwsgi",
        wait_for=str(socket),
    )  # fmt: skip
    values = {
        "APP_PORT": str(app_port),
        "DEAD_PORT": str(dead_port),
        "STATIC_ROOT": str(root),
        "UWSGI_SOCKET": str(socket),
        "CACHE_DIR": str(module_launch.workdir / "cache"),
    }
    config, servers = GANTRY_CONFIG, NGINX_SERVERS
    for key, value in values.items():
        config, servers = config.replace(key, value), servers.replace(key, value)
    front = module_launch.front(config)
    yield Pair(front.port, start_nginx(module_launch, servers))


def _added(answer: Answer) -> dict[str, list[str]]:
    return {name: answer.all(name) for name in ADDED}


@pytest.mark.parametrize(
    ("path", "status", "added"),
    [
        ("/static/file.txt", 200, ADDED),
        ("/static/missing.txt", 404, ("x-always",)),  # an error: `always` fields only
        ("/app/x", 200, ADDED),
        ("/app/x?status=500", 500, ("x-always",)),
        ("/app/x?status=201", 201, ADDED),
        ("/dead/x", 502, ("x-always",)),  # the front's own error
        ("/redirect", 301, ADDED),
        ("/nowhere", 404, ("x-always",)),  # no location: the server's fields
    ],
)
def test_add_header_as_nginx(pair: Pair, path: str, status: int, added: tuple[str, ...]) -> None:
    ours, theirs = ask(pair.front, path), ask(pair.nginx, path)
    assert ours.status == theirs.status == status
    assert _added(ours) == _added(theirs)
    assert [name for name in ADDED if ours.field(name) is not None] == list(added)


def test_add_header_on_not_modified(pair: Pair) -> None:
    first = ask(pair.front, "/static/file.txt")
    since = {"If-Modified-Since": first.field("last-modified") or ""}
    ours = ask(pair.front, "/static/file.txt", headers=since)
    theirs = ask(pair.nginx, "/static/file.txt", headers=since)
    assert ours.status == theirs.status == 304
    assert _added(ours) == _added(theirs)


def test_proxy_set_and_hide_header_as_nginx(pair: Pair) -> None:
    sent = {"X-Client-Secret": "s3cret", "X-Real-IP": "6.6.6.6"}
    ours = ask(pair.front, "/app/p?q=1", host="site.test:81", headers=sent)
    theirs = ask(pair.nginx, "/app/p?q=1", host="site.test:81", headers=sent)
    seen, expected = json.loads(ours.body), json.loads(theirs.body)
    keys = ("HTTP_HOST", "HTTP_X_REAL_IP", "HTTP_X_CLIENT_SECRET", "HTTP_X_URI")
    assert {k: seen.get(k) for k in keys} == {k: expected.get(k) for k in keys}
    assert seen["HTTP_HOST"] == "site.test" and seen["HTTP_X_REAL_IP"] == "127.0.0.1"
    assert "HTTP_X_CLIENT_SECRET" not in seen and seen["HTTP_X_URI"] == "/app/p"
    assert ours.field("x-powered-by") is None and theirs.field("x-powered-by") is None
    assert ours.field("x-kept") == theirs.field("x-kept") == "yes"


@pytest.mark.parametrize("query", ["", "?stream=1"])
def test_proxy_hide_header_whole_or_streamed(pair: Pair, query: str) -> None:
    """A response the proxy passes whole and one it relays as it streams."""
    ours = ask(pair.front, "/app/h" + query)
    assert ours.status == 200 and json.loads(ours.body)["PATH_INFO"] == "/app/h"
    assert ours.field("x-powered-by") is None and ours.field("x-kept") == "yes"
    assert (ours.field("transfer-encoding") == "chunked") == bool(query)


def test_a_location_keeps_the_servers_fields(pair: Pair) -> None:
    """Unlike nginx: a location naming its own add_header keeps the server's others, and
    its own value wins on the same name (whatever its case)."""
    answer = ask(pair.front, "/merged/file.txt")
    assert answer.status == 200
    assert answer.all("x-frame-options") == ["SAMEORIGIN"]
    assert answer.field("x-content-type-options") == "nosniff"
    assert answer.field("x-always") == "yes"
    assert answer.field("x-uri") == "/merged/file.txt"


def test_cached_answers_get_the_fields_too(pair: Pair) -> None:
    first = ask(pair.front, "/cached/c")
    second = ask(pair.front, "/cached/c")
    assert first.status == second.status == 200
    assert "hit" in (second.field("cache-status") or "")
    assert (
        _added(first)
        == _added(second)
        == {name: ["DENY", "nosniff", "yes"][i : i + 1] for i, name in enumerate(ADDED)}
    )


def test_proxy_set_header_reaches_a_uwsgi_upstream(pair: Pair) -> None:
    answer = ask(pair.front, "/uwsgi/u", headers={"X-Client-Secret": "s3cret"})
    seen = json.loads(answer.body)
    assert seen["HTTP_HOST"] == "backend.internal"
    assert "HTTP_X_CLIENT_SECRET" not in seen
    assert answer.field("x-powered-by") is None and answer.field("x-kept") == "yes"


def test_a_variable_cannot_end_a_field_early(pair: Pair) -> None:
    """$uri is decoded: a %0D%0A in the path stays escaped in the field."""
    answer = ask(pair.front, "/merged/a%0D%0AX-Evil:%20yes")
    assert answer.status == 404 and answer.field("x-evil") is None
    assert answer.field("x-uri") == "/merged/a%0D%0AX-Evil: yes"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"add_header": {"Bad Name": "x"}}, "front.server[0].add_header: expected a header"),
        ({"add_header": {"X-A": "$nope"}}, "front.server[0].add_header: unknown variable"),
        (
            {"add_header": {"X-A": {"value": "x", "alwyas": True}}},
            "front.server[0].add_header.X-A.alwyas: unknown key",
        ),
        (
            {"proxy_set_header": {"Host": "$hots"}},
            "front.server[0].proxy_set_header: unknown variable '$hots'",
        ),
        ({"proxy_hide_header": ["a b"]}, "front.server[0].proxy_hide_header: expected a header"),
    ],
)
def test_bad_header_rules_are_config_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        front_config_from_dict({"server": [table]}, "gantry.toml")
    assert f"gantry.toml: {message}" in str(caught.value)
