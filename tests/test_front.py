"""gantry front with real peers behind it: gantry serve over uwsgi, gunicorn over HTTP."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.process import Front, GantryServer, Launcher, free_port, read_all
from tests.support_front import start_uwsgi, uwsgi_front_config

STATIC_BYTES = bytes(range(256)) * 4  # 1 KiB


@pytest.fixture(scope="module")
def stack(module_launch: Launcher) -> tuple[Front, GantryServer, Path]:
    """gantry front: /static/ from a folder, the rest to gantry serve over a uwsgi unix socket."""
    workdir = module_launch.workdir
    site = workdir / "site"
    (site / "static").mkdir(parents=True)
    (site / "static" / "one.bin").write_bytes(STATIC_BYTES)
    (site / "static" / "page.html").write_text("<p>hi</p>")
    (site / "static" / ".secret").write_text("hidden")
    (workdir / "outside.txt").write_text("outside the root")
    sock = workdir / "app.sock"
    app = module_launch.serve(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), http=False, wait_for=str(sock)
    )
    front = module_launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
default = true

[[front.server.location]]
path = "/static/"
root = "{site}"

[[front.server.location]]
path = "/"
proxy = "app"

[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
"""
    )
    return front, app, site


def test_proxied_to_the_app_over_uwsgi(stack: tuple[Front, GantryServer, Path]) -> None:
    front, _, _ = stack
    response, body = front.request("GET", "/hello")
    assert (response.status, body) == (200, b"Hello World!")
    assert response.getheader("Server") == "gantry"


def test_post_body_through_the_front(stack: tuple[Front, GantryServer, Path]) -> None:
    front, _, _ = stack
    data = os.urandom(1024 * 1024)
    response, body = front.request("POST", "/echo", data)
    assert body == b"%d:%d" % (len(data), len(data))
    assert response.getheader("X-Body-SHA256") == hashlib.sha256(data).hexdigest()


def test_streamed_response_is_rechunked(stack: tuple[Front, GantryServer, Path]) -> None:
    front, _, _ = stack
    response, body = front.request("GET", "/stream")
    assert body == b"part0;part1;part2;part3;part4;"
    assert response.getheader("Transfer-Encoding") == "chunked"


def test_app_errors_pass_through(stack: tuple[Front, GantryServer, Path]) -> None:
    front, _, _ = stack
    assert front.request("GET", "/raise")[0].status == 500
    assert front.request("GET", "/nowhere")[0].status == 404


def test_static_file_200_304_206_416_head(stack: tuple[Front, GantryServer, Path]) -> None:
    front, _, _ = stack
    response, body = front.request("GET", "/static/one.bin")
    assert response.status == 200 and body == STATIC_BYTES
    etag = response.getheader("ETag")
    assert etag and response.getheader("Last-Modified")
    assert front.request("GET", "/static/one.bin", headers={"If-None-Match": etag})[0].status == 304
    partial, piece = front.request("GET", "/static/one.bin", headers={"Range": "bytes=10-19"})
    assert partial.status == 206 and piece == STATIC_BYTES[10:20]
    assert partial.getheader("Content-Range") == f"bytes 10-19/{len(STATIC_BYTES)}"
    bad = front.request("GET", "/static/one.bin", headers={"Range": "bytes=5000-6000"})[0]
    assert bad.status == 416
    head, empty = front.request("HEAD", "/static/page.html")
    assert head.status == 200 and empty == b""
    assert head.getheader("Content-Type", "").startswith("text/html")
    assert head.getheader("Content-Length") == "9"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../outside.txt",
        "/static/%2e%2e/outside.txt",
        "/static/%252e%252e/outside.txt",
        "/static/.secret",
        "/static/one.bin%00.html",
    ],
)
def test_traversal_and_hidden_files_refused(
    stack: tuple[Front, GantryServer, Path], path: str
) -> None:
    front, _, _ = stack
    host, port = "127.0.0.1", front.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = read_all(sock)
    status = int(data.split(b" ", 2)[1])
    assert status in (400, 403, 404), data[:200]
    assert b"outside the root" not in data and b"hidden" not in data


def test_malformed_client_input_refused(stack: tuple[Front, GantryServer, Path]) -> None:
    front, _, _ = stack
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 400")


def test_upstream_down_gives_502(tmp_path: Path) -> None:
    dead = free_port()
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "gone"
[front.upstream.gone]
servers = [{{ address = "127.0.0.1:{dead}" }}]
""",
        tmp_path,
    )
    front.start()
    try:
        assert front.request("GET", "/")[0].status == 502
    finally:
        front.stop()


def _backend(tmp_path: Path, name: str) -> GantryServer:
    server = GantryServer("tests.apps_process:app", log_path=tmp_path / f"{name}.log")
    server.start()
    return server


def test_round_robin_and_failover_over_http(tmp_path: Path) -> None:
    """Two HTTP backends share the load; stopping one loses no idempotent request."""
    one, two = _backend(tmp_path, "one"), _backend(tmp_path, "two")
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "pool"
[front.upstream.pool]
protocol = "http"
servers = [{{ address = "127.0.0.1:{one.port}" }}, {{ address = "127.0.0.1:{two.port}" }}]
""",
        tmp_path,
    )
    front.start()
    try:
        seen: dict[bytes, int] = {}
        for _ in range(100):
            response, body = front.request("GET", "/pid")
            assert response.status == 200
            seen[body] = seen.get(body, 0) + 1
        assert len(seen) == 2 and all(40 <= n <= 60 for n in seen.values()), seen
        one.stop()
        failures = 0
        for _ in range(50):
            response, _ = front.request("GET", "/pid")
            failures += response.status != 200
        assert failures == 0
    finally:
        front.stop()
        one.stop()
        two.stop()


def test_in_front_of_gunicorn_over_http(tmp_path: Path, launch: Launcher) -> None:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if gunicorn is None:
        pytest.fail("gunicorn is not installed in the test environment")
    port = free_port()
    launch.program(
        [gunicorn, "-w", "1", "-b", f"127.0.0.1:{port}", "tests.apps_contract:app"],
        ("127.0.0.1", port), "gunicorn",
    )  # fmt: skip
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "g"
[front.upstream.g]
servers = [{{ address = "127.0.0.1:{port}" }}]
""",
        tmp_path,
    )
    try:
        front.start()
        response, body = front.request("GET", "/hello")
        assert (response.status, body) == (200, b"Hello World!")
        data = os.urandom(300_000)
        echo, echoed = front.request("POST", "/echo", data)
        assert echoed == b"%d:%d" % (len(data), len(data))
        assert echo.getheader("X-Body-SHA256") == hashlib.sha256(data).hexdigest()
        response, body = front.request("GET", "/stream")
        assert body == b"part0;part1;part2;part3;part4;"
        assert front.request("GET", "/raise")[0].status == 500
    finally:
        front.stop()


def test_in_front_of_real_uwsgi_over_uwsgi(tmp_path: Path, launch: Launcher) -> None:
    sock = start_uwsgi(launch, "tests.apps_contract:app")
    front = Front(uwsgi_front_config(f"unix:{sock}"), tmp_path)
    try:
        front.start()
        response, body = front.request("GET", "/hello")
        assert (response.status, body) == (200, b"Hello World!"), (
            launch.workdir / "uwsgi.log"
        ).read_text()
        data = os.urandom(500_000)
        echo, echoed = front.request("POST", "/echo", data)
        assert echoed == b"%d:%d" % (len(data), len(data))
        assert echo.getheader("X-Body-SHA256") == hashlib.sha256(data).hexdigest()
        response, body = front.request("GET", "/stream")
        assert body == b"part0;part1;part2;part3;part4;"
        assert response.getheader("Transfer-Encoding") == "chunked"
        head, empty = front.request("HEAD", "/hello")
        assert head.status == 200 and empty == b""
        # uWSGI closes without a response when the app raises: a broken upstream, 502
        # (nginx answers the same: "upstream prematurely closed connection")
        assert front.request("GET", "/raise")[0].status == 502
        assert front.request("GET", "/nowhere")[0].status == 404
    finally:
        front.stop()


def test_a_backend_coming_back_is_used_again(tmp_path: Path) -> None:
    one, two = _backend(tmp_path, "one"), _backend(tmp_path, "two")
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "pool"
[front.upstream.pool]
servers = [{{ address = "127.0.0.1:{one.port}", fail_timeout = 1 }},
           {{ address = "127.0.0.1:{two.port}", fail_timeout = 1 }}]
""",
        tmp_path,
    )
    front.start()
    try:
        one.stop()
        for _ in range(10):
            assert front.request("GET", "/pid")[0].status == 200
        one.start()
        time.sleep(1.2)  # past fail_timeout
        seen = {front.request("GET", "/pid")[1] for _ in range(20)}
        assert len(seen) == 2
    finally:
        front.stop()
        one.stop()
        two.stop()


def test_active_health_checks_take_a_server_out_and_back(tmp_path: Path) -> None:
    one, two = _backend(tmp_path, "one"), _backend(tmp_path, "two")
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "pool"
[front.upstream.pool]
servers = [{{ address = "127.0.0.1:{one.port}" }}, {{ address = "127.0.0.1:{two.port}" }}]
[front.upstream.pool.health_check]
path = "/pid"
interval = 0.2
timeout = 1
fall = 2
rise = 1
""",
        tmp_path,
    )
    front.start()
    try:
        one.stop()
        address = f"127.0.0.1:{one.port}"

        def logged(state: str) -> bool:
            return f"{address} in upstream pool is {state}" in front.log.read_text()

        deadline = time.monotonic() + 10
        while not logged("down") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logged("down"), front.log.read_text()
        assert {front.request("GET", "/pid")[0].status for _ in range(10)} == {200}
        one.start()
        deadline = time.monotonic() + 10
        while not logged("up") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logged("up")
        assert len({front.request("GET", "/pid")[1] for _ in range(20)}) == 2
    finally:
        front.stop()
        one.stop()
        two.stop()
