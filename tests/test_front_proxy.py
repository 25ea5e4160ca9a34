"""gantry front as a reverse proxy, against real peers: script_name, streamed request bodies,
error pages, the access log, forwarded headers, next_upstream and timeouts."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Front, GantryServer, free_port
from tests.support_front import RawUpstream, proxied_site, start_front

# --- script_name ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """The Flask app behind gantry serve at /blog over uwsgi and at /http over HTTP."""
    workdir = tmp_path_factory.mktemp("mounted")
    sock = workdir / "app.sock"
    app = GantryServer(
        "tests.e2e.flask_mounted:app", "--uwsgi-socket", str(sock),
        log_path=workdir / "app.log",
    )  # fmt: skip
    app.start()
    front = start_front(
        workdir,
        f"""
[[front.server]]
[[front.server.location]]
path = "/blog/"
proxy = "uwsgi_app"
script_name = "/blog"
[[front.server.location]]
path = "/http/"
proxy = "http_app"
script_name = "/http"
[front.upstream.uwsgi_app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
[front.upstream.http_app]
servers = [{{ address = "127.0.0.1:{app.port}" }}]
""",
    )
    try:
        yield front
    finally:
        front.stop()
        app.stop()


def test_script_name_over_uwsgi_gives_flask_its_mount_point(mounted: Front) -> None:
    response, body = mounted.request("GET", "/blog/")
    assert response.status == 200, body
    seen = json.loads(body)
    assert seen == {"link": "/blog/page/first", "script_name": "/blog", "path_info": "/"}
    response, body = mounted.request("GET", "/blog/page/second")
    seen = json.loads(body)
    assert (seen["back"], seen["script_name"], seen["path_info"]) == (
        "/blog/",
        "/blog",
        "/page/second",
    )
    assert seen["x_script_name"] is None


def test_script_name_over_http_is_a_header_and_the_path_is_kept(mounted: Front) -> None:
    response, body = mounted.request("GET", "/http/page/third")
    assert response.status == 200, body
    seen = json.loads(body)
    assert seen["x_script_name"] == "/http"
    assert seen["path_sent"] == "/http/page/third"
    assert seen["back"] == "/http/"


def test_script_name_is_validated(tmp_path: Path) -> None:
    from gantry.config import ConfigError
    from gantry.config.front import front_config_from_dict

    base = {"server": [{"location": [{"path": "/", "proxy": "a", "script_name": "blog/"}]}],
            "upstream": {"a": {"servers": [{"address": "127.0.0.1:1"}]}}}  # fmt: skip
    with pytest.raises(ConfigError, match="script_name"):
        front_config_from_dict(base)
    base["server"][0]["location"][0]["script_name"] = "/blog"  # type: ignore[index]
    config = front_config_from_dict(base)
    assert config.servers[0].locations[0].script_name == "/blog"


# --- request bodies ------------------------------------------------------------------------

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfirst"


@pytest.mark.parametrize("buffering", [False, True])
def test_unbuffered_body_reaches_the_upstream_before_the_client_finishes(
    tmp_path: Path, buffering: bool
) -> None:
    """request_buffering = false: the head and first piece go out at once; with the
    default (true) nothing is proxied until the whole body is in."""
    upstream = RawUpstream(OK_RESPONSE, wait_for=1000)
    front = start_front(
        tmp_path,
        proxied_site(
            f"127.0.0.1:{upstream.port}",
            location=f"request_buffering = {str(buffering).lower()}",
            name="raw",
        ),
    )
    try:
        with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            sock.sendall(b"a" * 50_000)  # half of it; the rest is never sent
            sock.settimeout(1.5)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                answer = b""
        if buffering:
            proxied = [data for data in upstream.received if b"POST /up" in data]
            assert (answer, proxied) == (b"", []), upstream.received
        else:
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"first"), answer
            head, _, first = upstream.received[0].partition(b"\r\n\r\n")
            assert b"Content-Length: 100000" in head and first.startswith(b"a" * 1000)
    finally:
        front.stop()
        upstream.close()


VHOSTS = {
    "u.test": "uwsgi_app",
    "ub.test": "uwsgi_app",
    "h.test": "http_app",
    "hb.test": "http_app",
}


@pytest.fixture(scope="module")
def echo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Front, Path]]:
    """gantry serve's contract app over uwsgi and HTTP, bodies streamed (u.test, h.test) or
    buffered (ub.test, hb.test), a refused server first in each pool; an error page and an
    access log."""
    workdir = tmp_path_factory.mktemp("echo")
    sock = workdir / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), log_path=workdir / "app.log"
    )
    app.start()
    (workdir / "502.html").write_text("<h1>our own 502 page</h1>")
    dead = free_port()
    servers = "".join(
        f"""
[[front.server]]
server_name = ["{name}"]
[[front.server.location]]
path = "/"
proxy = "{upstream}"
request_buffering = {"true" if name.endswith("b.test") else "false"}
"""
        for name, upstream in VHOSTS.items()
    )
    front = start_front(
        workdir,
        f"""
access_log = "{workdir / "access.log"}"
error_pages = {{ "502" = "{workdir / "502.html"}", "404" = "{workdir / "missing.html"}" }}
[[front.server]]
default = true
[[front.server.location]]
path = "/dead/"
proxy = "dead"
[[front.server.location]]
path = "/static/"
alias = "{workdir}/"
{servers}
[front.upstream.uwsgi_app]
protocol = "uwsgi"
servers = [{{ address = "127.0.0.1:{dead}" }}, {{ address = "unix:{sock}" }}]
[front.upstream.http_app]
servers = [{{ address = "127.0.0.1:{dead}" }}, {{ address = "127.0.0.1:{app.port}" }}]
[front.upstream.dead]
servers = [{{ address = "127.0.0.1:{dead}" }}]
""",
    )
    try:
        yield front, workdir
    finally:
        front.stop()
        app.stop()


@pytest.mark.parametrize("host", VHOSTS)
def test_large_bodies_streamed_or_spooled_reach_the_app(
    echo_stack: tuple[Front, Path], host: str
) -> None:
    """A 6 MiB POST (not idempotent) after a refused first server arrives whole; a small
    one too (sent with the head)."""
    front, _ = echo_stack
    for size in (6 * 1024 * 1024, 1000):
        data = os.urandom(size)
        response, body = front.request("POST", "/echo", data, {"Host": host})
        assert (response.status, body) == (200, b"%d:%d" % (size, size))


def test_error_page_replaces_the_front_own_error(echo_stack: tuple[Front, Path]) -> None:
    front, _ = echo_stack
    response, body = front.request("GET", "/dead/x")
    assert (response.status, body) == (502, b"<h1>our own 502 page</h1>")
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    # a page that cannot be read falls back to the plain one
    response, body = front.request("GET", "/static/missing")
    assert (response.status, body) == (404, b"404 Not Found\n")


def test_access_log_is_combined_plus_upstream(echo_stack: tuple[Front, Path]) -> None:
    front, workdir = echo_stack
    front.request("GET", "/hello?x=1", headers={"Host": "h.test", "Referer": "http://r/",
                                                "User-Agent": 'agent "quoted"'})  # fmt: skip
    front.request("GET", "/static/502.html")
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline and len(lines) < 2:
        lines = [
            line for line in (workdir / "access.log").read_text().splitlines()
            if "/hello?x=1" in line or "/static/502.html" in line
        ]  # fmt: skip
        time.sleep(0.05)
    combined = (
        r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" '
        r'"(?P<agent>(?:[^"\\]|\\x..)*)" "(?P<addr>[^"]*)" "(?P<urt>[^"]*)" (?P<rt>\d+\.\d{3})$'
    )
    proxied = re.match(combined, lines[0])
    assert proxied, lines[0]
    assert proxied["request"] == "GET /hello?x=1 HTTP/1.1"
    assert (proxied["status"], proxied["bytes"], proxied["referer"]) == ("200", "12", "http://r/")
    assert proxied["agent"] == "agent \\x22quoted\\x22"
    # every server tried, ", " between them as nginx's $upstream_addr (the refused one is
    # listed unless an earlier request already took it out for its fail_timeout)
    addresses = proxied["addr"].split(", ")
    times = proxied["urt"].split(", ")
    assert len(addresses) == len(times) and addresses[-1].startswith("127.0.0.1:"), lines[0]
    assert all(re.fullmatch(r"\d+\.\d{3}", t) for t in times)
    static = re.match(combined, lines[1])
    assert static and (static["addr"], static["urt"], static["status"]) == ("-", "-", "200")


# --- headers, next_upstream, timeouts ---------------------------------------------------------

HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Private\r\n"
    b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
    b"Trailer: X-T\r\nX-Kept: yes\r\n\r\nok"
)


def test_forwarded_headers_added_and_hop_by_hop_removed(tmp_path: Path) -> None:
    upstream = RawUpstream(HOP_RESPONSE)
    front = start_front(
        tmp_path,
        proxied_site(f"127.0.0.1:{upstream.port}", name="raw"),
    )
    try:
        response, body = front.request(
            "GET", "/p?q=1",
            headers={"Host": "site.test:8000", "X-Forwarded-For": "203.0.113.9",
                     "X-Real-IP": "6.6.6.6", "Keep-Alive": "timeout=9", "TE": "trailers",
                     "Proxy-Authorization": "Basic eA==", "X-Custom": "kept"},
        )  # fmt: skip
        assert (response.status, body) == (200, b"ok")
        assert response.getheader("X-Kept") == "yes"
        for name in ("Keep-Alive", "Proxy-Connection", "Upgrade", "Trailer"):
            assert response.getheader(name) is None, name
        assert response.getheader("Connection") in (None, "keep-alive")
        head = upstream.received[0].decode("latin-1")
        lines = head.split("\r\n")
        assert lines[0] == "GET /p?q=1 HTTP/1.1"
        fields = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(": ")
                assert name.lower() not in fields, f"{name} twice"
                fields[name.lower()] = value
        assert fields["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert fields["x-real-ip"] == "127.0.0.1"
        assert fields["x-forwarded-proto"] == "http"
        assert fields["x-forwarded-host"] == "site.test:8000"
        assert fields["host"] == "site.test:8000" and fields["x-custom"] == "kept"
        for name in ("keep-alive", "te", "proxy-authorization", "transfer-encoding"):
            assert name not in fields, name
    finally:
        front.stop()
        upstream.close()


UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
)


def test_next_upstream_http_503_and_timeout_for_idempotent_requests(tmp_path: Path) -> None:
    """GETs go on to the next server after a 503 or a read timeout; a POST does not."""
    busy = RawUpstream(UNAVAILABLE)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    good = GantryServer("tests.apps_contract:app", log_path=tmp_path / "good.log")
    good.start()
    front = start_front(
        tmp_path,
        f"""
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "pool"
[[front.server.location]]
path = "/slow"
proxy = "alone"
[front.upstream.pool]
read_timeout = 0.5
next_upstream = ["error", "timeout", "http_503"]
servers = [{{ address = "127.0.0.1:{busy.port}", max_fails = 0 }},
           {{ address = "127.0.0.1:{silent.getsockname()[1]}", max_fails = 0 }},
           {{ address = "127.0.0.1:{good.port}", max_fails = 0 }}]
[front.upstream.alone]
read_timeout = 0.5
servers = [{{ address = "127.0.0.1:{good.port}" }}]
""",
    )
    try:
        statuses = [front.request("GET", "/hello")[0].status for _ in range(6)]
        assert statuses == [200] * 6
        assert len(busy.received) >= 2  # round robin did send GETs there first
        posts = [front.request("POST", "/hello", b"x")[0].status for _ in range(3)]
        assert 503 in posts and 504 in posts and 200 in posts, posts
        started = time.monotonic()
        response, _ = front.request("GET", "/slow?3")
        assert response.status == 504 and time.monotonic() - started < 2.5
    finally:
        front.stop()
        good.stop()
        busy.close()
        silent.close()
