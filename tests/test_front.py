"""gantry front with real peers behind it: gantry serve over uwsgi, gunicorn over HTTP."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import REPO, GantryServer, free_port, read_all

STATIC_BYTES = bytes(range(256)) * 4  # 1 KiB


class Front:
    """A `gantry front -c FILE` process."""

    def __init__(self, config: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.port = free_port()
        self.path = workdir / "front.toml"
        self.path.write_text(config.replace("FRONT_PORT", str(self.port)))
        self.log = workdir / "front.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log.open("ab")
        env = dict(os.environ, **self.env)
        # the caller's PYTHONPATH too (as tests.process does): it names the tree under test
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), self.env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gantry", "front", "-c", str(self.path)],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gantry front exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gantry front did not listen: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Front, GantryServer, Path]]:
    """gantry front: /static/ from a folder, the rest to gantry serve over a uwsgi unix socket."""
    workdir = Path(tempfile.mkdtemp(prefix="g"))
    site = workdir / "site"
    (site / "static").mkdir(parents=True)
    (site / "static" / "one.bin").write_bytes(STATIC_BYTES)
    (site / "static" / "page.html").write_text("<p>hi</p>")
    (site / "static" / ".secret").write_text("hidden")
    (workdir / "outside.txt").write_text("outside the root")
    sock = workdir / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), log_path=workdir / "app.log",
        http=False,
    )  # fmt: skip
    app.start(wait_for=str(sock))
    front = Front(
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
""",
        workdir,
    )
    front.start()
    try:
        yield front, app, site
    finally:
        front.stop()
        app.stop()


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


def test_in_front_of_gunicorn_over_http(tmp_path: Path) -> None:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if gunicorn is None:
        pytest.fail("gunicorn is not installed in the test environment")
    port = free_port()
    proc = subprocess.Popen(
        [gunicorn, "-w", "1", "-b", f"127.0.0.1:{port}", "tests.apps_contract:app"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=(tmp_path / "gunicorn.log").open("wb"),
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
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        front.start()
        response, body = front.request("GET", "/hello")
        assert (response.status, body) == (200, b"Hello World!")
        data = os.urandom(300_000)
        _, echoed = front.request("POST", "/echo", data)
        assert echoed == b"%d:%d" % (len(data), len(data))
        response, body = front.request("GET", "/stream")
        assert body == b"part0;part1;part2;part3;part4;"
        assert front.request("GET", "/raise")[0].status == 500
        assert hashlib.sha256(body).hexdigest()
    finally:
        front.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_in_front_of_real_uwsgi_over_uwsgi(tmp_path: Path) -> None:
    uwsgi = Path(sys.executable).parent / "uwsgi"
    if not uwsgi.exists():
        pytest.fail("uWSGI is not installed in the test environment (pip install uwsgi)")
    directory = Path(tempfile.mkdtemp(prefix="g"))
    sock = directory / "u.sock"
    proc = subprocess.Popen(
        [str(uwsgi), "--socket", str(sock), "--chmod-socket=666", "--wsgi",
         "tests.apps_contract:app", "--chdir", str(REPO), "--master", "--processes", "1",
         "--die-on-term", "--disable-logging", "--need-app"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=(tmp_path / "uwsgi.log").open("wb"),
    )  # fmt: skip
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "u"
[front.upstream.u]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
""",
        tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        front.start()
        response, body = front.request("GET", "/hello")
        assert (response.status, body) == (200, b"Hello World!"), (
            tmp_path / "uwsgi.log"
        ).read_text()
        data = os.urandom(500_000)
        _, echoed = front.request("POST", "/echo", data)
        assert echoed == b"%d:%d" % (len(data), len(data))
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
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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
