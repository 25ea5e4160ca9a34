"""return and rewrite at the front (issue 17): nginx's documented results, the same rules
run by a real nginx side by side, the loop limit, and the issue's configuration."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from tests.process import Launcher, free_port, read_all, wait_for
from tests.support_rewrite import Answer, ask, start_nginx


@dataclass
class Pair:
    """A Gantry front and a real nginx running the same rules."""

    front: int
    nginx: int


# Each rule in both syntaxes. The app (an HTTP upstream) says what request reached it.
NGINX_SERVERS = """
server {
    listen 127.0.0.1:NGINX_PORT;
    server_name old.test;
    return 301 https://$host$request_uri;
}
server {
    listen 127.0.0.1:NGINX_PORT default_server;
    server_name site.test;
    rewrite ^/server-old/(.*)$ /static/$1 last;
    location /old/ { rewrite ^/old/(.*)$ /new/$1 permanent; }
    location /temp/ { rewrite ^/temp/(.*)$ /new/$1? redirect; }
    location /args/ { rewrite ^/args/(.*)$ /new?x=$1 redirect; }
    location /abs/ { rewrite ^/abs/(.*)$ $scheme://$host/landing/$1; }
    location /last/ { rewrite ^/last/(.*)$ /text/$1 last; }
    location /text/ { return 200 "uri=$uri args=$args"; }
    location /t/ { return 200 "uri=$uri args=$args"; }
    location /brk/ { rewrite ^/brk/(.*)$ /app/$1 break; proxy_pass http://127.0.0.1:APP_PORT; }
    location /newargs/ {
        rewrite ^/newargs/(.*)$ /app/$1?a=1 break;
        proxy_pass http://127.0.0.1:APP_PORT;
    }
    location /app/ { proxy_pass http://127.0.0.1:APP_PORT; }
    location /chain/ {
        rewrite ^/chain/a/(.*)$ /chain/b/$1;
        rewrite ^/chain/b/(.*) /t/$1;
    }
    location /loop/ { rewrite ^/loop/(.*)$ /loop/x$1 last; }
    location /gone { return 410; }
    location /empty { return 200; }
    location /vars { return 200 "$http_x_test|$arg_a|$cookie_c|$is_args"; }
    location /vars2 { return 200 "$request_method|$server_name|$scheme|${host}!"; }
    location /see { return 303 /other; }
    location /bare { return https://example.test/bare; }
    location ~ ^/u/(\\d+)$ { return 301 /user/$1; }
    location /forbidden { return 403 "nope $remote_addr"; }
    location /static/ { root STATIC_ROOT; }
}
"""

GANTRY_CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.upstream.app]
servers = [{ address = "127.0.0.1:APP_PORT" }]

[[front.server]]
server_name = ["old.test"]
return = "301 https://$host$request_uri"

[[front.server]]
server_name = ["site.test"]
default = true
rewrite = [["^/server-old/(.*)$", "/static/$1", "last"]]
location = [
  { path = "/old/", rewrite = [["^/old/(.*)$", "/new/$1", "permanent"]] },
  { path = "/temp/", rewrite = [["^/temp/(.*)$", "/new/$1?", "redirect"]] },
  { path = "/args/", rewrite = [["^/args/(.*)$", "/new?x=$1", "redirect"]] },
  { path = "/abs/", rewrite = [["^/abs/(.*)$", "$scheme://$host/landing/$1"]] },
  { path = "/last/", rewrite = [["^/last/(.*)$", "/text/$1", "last"]] },
  { path = "/text/", return = "200 \\"uri=$uri args=$args\\"" },
  { path = "/t/", return = "200 \\"uri=$uri args=$args\\"" },
  { path = "/brk/", rewrite = [["^/brk/(.*)$", "/app/$1", "break"]], proxy = "app" },
  { path = "/newargs/", rewrite = [["^/newargs/(.*)$", "/app/$1?a=1", "break"]], proxy = "app" },
  { path = "/app/", proxy = "app" },
  { path = "/chain/", rewrite = [["^/chain/a/(.*)$", "/chain/b/$1"], ["^/chain/b/(.*)", "/t/$1"]] },
  { path = "/loop/", rewrite = [["^/loop/(.*)$", "/loop/x$1", "last"]] },
  { path = "/gone", return = "410" },
  { path = "/empty", return = "200" },
  { path = "/vars", return = "200 $http_x_test|$arg_a|$cookie_c|$is_args" },
  { path = "/vars2", return = "200 $request_method|$server_name|$scheme|${host}!" },
  { path = "/see", return = "303 /other" },
  { path = "/bare", return = "https://example.test/bare" },
  { path = "^/u/(\\\\d+)$", modifier = "~", return = "301 /user/$1" },
  { path = "/forbidden", return = "403 nope $remote_addr" },
  { path = "/static/", root = "STATIC_ROOT" },
]
"""


@pytest.fixture(scope="module")
def pair(module_launch: Launcher) -> Iterator[Pair]:
    root = module_launch.workdir / "www"
    (root / "static").mkdir(parents=True)
    (root / "static" / "file.txt").write_text("a static file\n")
    os.chmod(root, 0o755)
    os.chmod(root / "static", 0o755)
    app_port = free_port()
    module_launch.serve("tests.apps_rewrite:app", "--http", f"127.0.0.1:{app_port}")
    front = module_launch.front(
        GANTRY_CONFIG.replace("APP_PORT", str(app_port)).replace("STATIC_ROOT", str(root))
    )
    nginx = start_nginx(
        module_launch,
        NGINX_SERVERS.replace("APP_PORT", str(app_port)).replace("STATIC_ROOT", str(root)),
    )
    yield Pair(front.port, nginx)


def _both(pair: Pair, path: str, host: str = "site.test", method: str = "GET") -> Answer:
    """The front's answer, checked against nginx's: same status and Location."""
    ours = ask(pair.front, path, host, method)
    theirs = ask(pair.nginx, path, host, method)
    assert (ours.status, ours.location()) == (theirs.status, theirs.location()), path
    return ours


@pytest.mark.parametrize(
    ("path", "host", "status", "location"),
    [
        # a server that only returns: every path, args kept ($request_uri)
        ("/any/thing?a=1&b=2", "old.test", 301, "https://old.test/any/thing?a=1&b=2"),
        # permanent: 301, made absolute with the Host's name and the listener's port
        ("/old/page?q=1", "site.test", 301, "http://site.test:PORT/new/page?q=1"),
        # a replacement ending in "?" drops the request's args
        ("/temp/page?q=1", "site.test", 302, "http://site.test:PORT/new/page"),
        # args of the replacement first, the request's after "&"
        ("/args/v?y=2", "site.test", 302, "http://site.test:PORT/new?x=v&y=2"),
        # a replacement starting with $scheme is a redirect (302) without a flag
        ("/abs/p?z=3", "site.test", 302, "http://site.test/landing/p?z=3"),
        # a regex location's captures in its return
        ("/u/42", "site.test", 301, "http://site.test:PORT/user/42"),
        ("/see", "site.test", 303, "http://site.test:PORT/other"),
        # a URL alone is a 302
        ("/bare", "site.test", 302, "https://example.test/bare"),
        ("/gone", "site.test", 410, None),
    ],
)
def test_redirects_as_nginx(
    pair: Pair, path: str, host: str, status: int, location: str | None
) -> None:
    answer = _both(pair, path, host)
    assert (answer.status, answer.location()) == (status, location)


def test_last_chooses_the_location_again_and_return_sends_text(pair: Pair) -> None:
    """/last/x becomes /text/x (last): that location's return answers with $uri and
    $args of the rewritten request."""
    answer = _both(pair, "/last/x?k=v")
    assert answer.status == 200
    assert answer.body == ask(pair.nginx, "/last/x?k=v").body == b"uri=/text/x args=k=v"
    assert answer.field("content-type") == "text/plain"


def test_rewrites_without_a_flag_go_on_then_choose_the_location(pair: Pair) -> None:
    answer = _both(pair, "/chain/a/end")
    assert answer.body == ask(pair.nginx, "/chain/a/end").body == b"uri=/t/end args="


def test_break_proxies_the_rewritten_uri(pair: Pair) -> None:
    """break: the location stays, and the upstream gets the new URI with the args."""
    ours = _both(pair, "/brk/some/where?q=1")
    theirs = ask(pair.nginx, "/brk/some/where?q=1")
    seen, expected = json.loads(ours.body), json.loads(theirs.body)
    assert seen["PATH_INFO"] == expected["PATH_INFO"] == "/app/some/where"
    assert seen["QUERY_STRING"] == expected["QUERY_STRING"] == "q=1"


def test_args_of_an_internal_rewrite_come_first(pair: Pair) -> None:
    ours = _both(pair, "/newargs/p?q=1")
    theirs = ask(pair.nginx, "/newargs/p?q=1")
    assert json.loads(ours.body)["QUERY_STRING"] == "a=1&q=1"
    assert json.loads(theirs.body)["QUERY_STRING"] == "a=1&q=1"


def test_a_server_rewrite_runs_before_the_location_is_chosen(pair: Pair) -> None:
    answer = _both(pair, "/server-old/file.txt")
    assert answer.status == 200 and answer.body == b"a static file\n"


def test_a_rewrite_loop_is_a_500(pair: Pair) -> None:
    """nginx's limit: 10 times to another location, the 11th is a 500."""
    assert _both(pair, "/loop/a").status == 500


def test_return_of_a_code_alone(pair: Pair) -> None:
    ours, theirs = _both(pair, "/empty"), ask(pair.nginx, "/empty")
    assert ours.status == 200 and ours.body == theirs.body == b""
    gone = _both(pair, "/gone")
    assert gone.status == 410 and gone.reason == ask(pair.nginx, "/gone").reason == "Gone"


def test_variables_as_nginx_fills_them(pair: Pair) -> None:
    fields = {"X-Test": "one two", "Cookie": "a=1; c=cookie; d=2"}
    for path, expected in [
        ("/vars?b=2&a=x%20y", b"one two|x%20y|cookie|?"),
        ("/vars2", b"GET|site.test|http|site.test!"),
    ]:
        ours = ask(pair.front, path, host="Site.Test:80", headers=fields)
        theirs = ask(pair.nginx, path, host="Site.Test:80", headers=fields)
        assert ours.body == theirs.body == expected


def test_return_with_text_and_variables(pair: Pair) -> None:
    answer = _both(pair, "/forbidden")
    assert answer.status == 403 and answer.body == b"nope 127.0.0.1"
    head = ask(pair.front, "/forbidden", method="HEAD")
    assert head.status == 403 and head.body == b"" and head.field("content-length") == "14"


def test_the_access_log_shows_the_request_as_sent(launch: Launcher) -> None:
    """A rewritten request is logged with its own request line, not the rewritten one."""
    log = launch.workdir / "access.log"
    front = launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
access_log = "{log}"
[[front.server]]
location = [
  {{ path = "/a/", rewrite = [["^/a/(.*)$", "/b/$1", "last"]] }},
  {{ path = "/b/", return = "200 $uri from $request_uri" }},
]
"""
    )
    answer = ask(front.port, "/a/x?y=1")
    assert answer.body == b"/b/x from /a/x?y=1"
    # written once the response went out
    assert wait_for(lambda: '"GET /a/x?y=1 HTTP/1.1" 200' in log.read_text(), limit=5)


def test_a_redirect_without_any_host_name_stays_relative(launch: Launcher) -> None:
    """An HTTP/1.0 request without Host, to a server without server_name: nothing to
    make the URL absolute with (never "http:///x")."""
    front = launch.front(
        """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
location = [{ path = "/", return = "301 /elsewhere" }]
"""
    )
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 301 ")
    assert b"\r\nLocation: /elsewhere\r\n" in data


def test_a_rewrite_cannot_lead_around_a_deny(launch: Launcher) -> None:
    """The rewritten request is checked against its new location's access rules."""
    front = launch.front(
        """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
location = [
  { path = "/public/", rewrite = [["^/public/(.*)$", "/private/$1", "last"]] },
  { path = "/private/", access = ["deny all"], return = "200 secret" },
]
"""
    )
    assert ask(front.port, "/public/x").status == 403
    assert ask(front.port, "/private/x").status == 403


def test_the_issue_example_on_a_plain_listener(launch: Launcher, tmp_path: Path) -> None:
    """The issue's port-80 server as written (listen and the TLS server's keys come with
    the TLS work): every request, /old/ too, is sent to https with its URI."""
    front = launch.front(
        """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[[front.server]]
server_name = ["example.test", "www.example.test"]
return = "301 https://$host$request_uri"

[[front.server.location]]
path = "/old/"
rewrite = [["^/old/(.*)$", "/new/$1", "permanent"]]
"""
    )
    for path in ("/", "/old/page?x=1", "/a%20b"):
        answer = ask(front.port, path, host="www.example.test:8080")
        assert answer.status == 301
        assert answer.field("location") == "https://www.example.test" + path


def test_the_location_rewrite_of_the_example_without_the_server_return(
    launch: Launcher,
) -> None:
    front = launch.front(
        """
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[[front.server]]
server_name = ["example.test", "www.example.test"]

[[front.server.location]]
path = "/old/"
rewrite = [["^/old/(.*)$", "/new/$1", "permanent"]]
"""
    )
    answer = ask(front.port, "/old/a/b?c=d", host="example.test")
    assert answer.status == 301
    assert answer.field("location") == f"http://example.test:{front.port}/new/a/b?c=d"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"return": "abc"}, "front.server[0].return: expected 'CODE'"),
        ({"return": "99 x"}, "front.server[0].return: expected a status from 200 to 599"),
        ({"return": "301 https://$hots/"}, "front.server[0].return: unknown variable '$hots'"),
        ({"rewrite": [["(", "/x"]]}, "front.server[0].rewrite: bad regular expression '('"),
        ({"rewrite": [["^/", "/x", "lst"]]}, "front.server[0].rewrite: expected a flag"),
        ({"rewrite": [["^/"]]}, "front.server[0].rewrite: expected [regex, replacement]"),
        (
            {"location": [{"path": "/", "rewrite": [["a(", "/b"]]}]},
            "front.server[0].location[0].rewrite: bad regular expression",
        ),
    ],
)
def test_bad_rules_are_config_errors_naming_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        front_config_from_dict({"server": [table]}, "gantry.toml")
    assert f"gantry.toml: {message}" in str(caught.value)


def test_gantry_check_writes_the_key_return_and_reads_it_back(tmp_path: Path) -> None:
    """The schema's field is return_ (a Python keyword), the key is "return": the
    effective config `gantry check` prints loads back as it is, and `gantry up` (which
    passes the [front] table on by field names) takes it too."""
    from gantry.config.stack import load_stack
    from tests.support_config import check_file

    config = """
[front]
listen = ["127.0.0.1:8080"]
[[front.server]]
return = "301 https://$host$request_uri"
[[app]]
name = "hello"
module = "gantry.demo:app"
"""
    done = check_file(tmp_path / "gantry.toml", config)
    assert done.returncode == 0, done.stderr
    assert 'return = "301 https://$host$request_uri"' in done.stdout
    assert "return_" not in done.stdout
    again = check_file(tmp_path / "again.toml", done.stdout)
    assert again.returncode == 0, again.stderr
    plan = load_stack(str(tmp_path / "gantry.toml"), str(tmp_path / "run"))
    server = front_config_from_dict(plan.front_table()).servers[0]
    assert server.rewrite.return_ is not None and server.rewrite.return_.status == 301
