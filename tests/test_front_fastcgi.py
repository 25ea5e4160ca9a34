"""FastCGI upstreams: a gantry front in front of a real php-fpm (issue 20)."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Front, Launcher, recv_until, wait_for
from tests.support_php import fastcgi_front, php_pool

INDEX = b"<?php echo 'index of ', $_SERVER['SCRIPT_NAME'];\n"
INFO = b"""<?php
header('Content-Type: text/plain');
echo 'uri=', $_SERVER['REQUEST_URI'], "\\n";
echo 'script=', $_SERVER['SCRIPT_FILENAME'], "\\n";
echo 'query=', $_SERVER['QUERY_STRING'], "\\n";
echo 'a=', $_GET['a'] ?? '', "\\n";
echo 'method=', $_SERVER['REQUEST_METHOD'], "\\n";
echo 'remote=', $_SERVER['REMOTE_ADDR'], "\\n";
echo 'env=', $_SERVER['APP_ENV'] ?? '', "\\n";
echo 'host=', $_SERVER['HTTP_HOST'] ?? '', "\\n";
"""
HASH = b"""<?php
$in = fopen('php://input', 'rb');
$ctx = hash_init('sha256');
$n = 0;
while (!feof($in)) { $chunk = fread($in, 65536); $n += strlen($chunk); hash_update($ctx, $chunk); }
header('Status: 201 Created');
echo $n, ' ', hash_final($ctx);
"""
STREAM = b"""<?php
echo "first\\n"; flush();
file_put_contents(__DIR__ . '/../flushed', '1');
$deadline = microtime(true) + 10;
while (!file_exists(__DIR__ . '/../go') && microtime(true) < $deadline) {
    usleep(10000);
    clearstatcache();
}
echo "second\\n";
"""
FATAL = b"<?php undefined_function_here();\n"
STDERR = b"<?php error_log('note from php'); echo 'ok';\n"
EVIL = b"<?php file_put_contents(__DIR__ . '/../../ran', 'pwned'); echo 'ran';\n"


@pytest.fixture(scope="module")
def site(module_launch: Launcher) -> Iterator[tuple[Front, Path, Path]]:
    base = module_launch.workdir
    os.chmod(base, 0o755)  # php-fpm's children and the front's workers may be nobody
    root = base / "site"
    (root / "blog").mkdir(parents=True)
    (root / "uploads").mkdir()
    (root / "streamed").mkdir()
    files = {
        "index.php": INDEX, "info.php": INFO, "hash.php": HASH, "stream.php": STREAM,
        "fatal.php": FATAL, "stderr.php": STDERR, "uploads/evil.jpg": EVIL,
        "blog/index.php": INFO, "plain.txt": b"plain\n", "streamed/hash.php": HASH,
    }  # fmt: skip
    for name, data in files.items():
        (root / name).write_bytes(data)
    for folder in (root, root / "blog", root / "uploads", root / "streamed"):
        os.chmod(folder, 0o777)  # stream.php writes its marker beside the site
    fpm, sock = php_pool(module_launch, base)
    front = module_launch.front(
        fastcgi_front(
            sock,
            f"""
[[front.server.location]]
path = "/"
root = "{root}"

[[front.server.location]]
path = "/blog/"
root = "{root}"
try_files = ["$uri", "$uri/", "/blog/index.php$is_args$args"]

[[front.server.location]]
modifier = "~"
path = "^/streamed/.*\\\\.php$"
root = "{root}"
try_files = ["$uri", "=404"]
proxy = "php"
request_buffering = false

[[front.server.location]]
modifier = "~"
path = "\\\\.php$"
root = "{root}"
try_files = ["$uri", "=404"]
proxy = "php"
fastcgi_param = {{ APP_ENV = "prod" }}
""",
            read_timeout=20,
            max_tries=1,
        )
    )
    yield front, root, fpm


def lines(body: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)


def test_index_php(site: tuple[Front, Path, Path]) -> None:
    front, root, _ = site
    response, body = front.request("GET", "/index.php")
    assert response.status == 200 and body == b"index of /index.php"


def test_params_and_query_string(site: tuple[Front, Path, Path]) -> None:
    front, root, _ = site
    response, body = front.request("GET", "/info.php?a=1%202&b", headers={"Host": "ex.test:8"})
    assert response.status == 200, body
    assert response.getheader("Content-Type") == "text/plain;charset=UTF-8"
    got = lines(body)
    assert got["uri"] == "/info.php?a=1%202&b"
    assert got["script"] == f"{root}/info.php"
    assert got["query"] == "a=1%202&b" and got["a"] == "1 2"
    assert got["method"] == "GET" and got["remote"] == "127.0.0.1"
    assert got["env"] == "prod" and got["host"] == "ex.test:8"


def test_pretty_url_reaches_the_front_controller(site: tuple[Front, Path, Path]) -> None:
    front, root, _ = site
    response, body = front.request("GET", "/blog/2024/hello-world?a=x")
    assert response.status == 200, body
    got = lines(body)
    assert got["uri"] == "/blog/2024/hello-world?a=x"
    assert got["script"] == f"{root}/blog/index.php"
    assert got["a"] == "x"


def test_20_mib_post_hashed_by_php(site: tuple[Front, Path, Path]) -> None:
    front, _, _ = site
    data = os.urandom(1 << 20) * 20
    response, body = front.request(
        "POST", "/hash.php", body=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status == 201, body
    assert body.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_streamed_request_body(site: tuple[Front, Path, Path]) -> None:
    front, _, _ = site
    data = os.urandom(3 << 20)
    response, body = front.request("POST", "/streamed/hash.php", body=data)
    assert response.status == 201, body
    assert body.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_chunked_upload(site: tuple[Front, Path, Path]) -> None:
    front, _, _ = site
    pieces = [os.urandom(70000), b"x", os.urandom(300000)]
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/hash.php",
            body=iter(pieces),
            headers={"Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    data = b"".join(pieces)
    assert response.status == 201, body
    assert body.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_streamed_response(site: tuple[Front, Path, Path]) -> None:
    front, root, _ = site
    base = root.parent
    (base / "go").unlink(missing_ok=True)
    (base / "flushed").unlink(missing_ok=True)
    with socket.create_connection(("127.0.0.1", front.port), timeout=15) as sock:
        sock.sendall(b"GET /stream.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # the first part arrives while PHP still waits: flush() reached the client
        first = recv_until(sock, lambda got: b"first" in got, limit=10)
        assert b"second" not in first
        (base / "go").write_text("1")
        rest = first + recv_until(sock, lambda got: b"0\r\n\r\n" in got, limit=10)
    assert b" 200 " in rest.split(b"\r\n", 1)[0] and b"second" in rest


def test_head(site: tuple[Front, Path, Path]) -> None:
    front, _, _ = site
    response, body = front.request("HEAD", "/index.php")
    assert response.status == 200 and body == b""
    # the connection to php-fpm and the client's stay usable
    response, body = front.request("GET", "/index.php")
    assert body == b"index of /index.php"


def test_fatal_error_is_a_500_from_php_and_stderr_is_logged(
    site: tuple[Front, Path, Path],
) -> None:
    front, _, _ = site
    response, _ = front.request("GET", "/fatal.php")
    assert response.status == 500
    response, body = front.request("GET", "/stderr.php?x=1")
    assert response.status == 200 and body == b"ok"
    assert wait_for(lambda: "note from php" in front.log_text())
    line = next(line for line in front.log_text().splitlines() if "note from php" in line)
    assert "GET /stderr.php?x=1" in line


def test_missing_script_is_a_404_without_asking_php(site: tuple[Front, Path, Path]) -> None:
    front, _, fpm = site
    response, _ = front.request("GET", "/nothing-here.php")
    assert response.status == 404
    # php-fpm would have said "Primary script unknown" in its log
    log = fpm / "php-fpm.log"
    assert "nothing-here" not in (log.read_text() if log.exists() else "")


def test_php_code_in_an_upload_never_runs(site: tuple[Front, Path, Path]) -> None:
    front, root, _ = site
    for path in ("/uploads/evil.jpg/x.php", "/uploads/evil.jpg%2fx.php", "/uploads/evil.jpg/"):
        response, body = front.request("GET", path)
        assert response.status == 404, path
    # served as the file it is (by the static location), never run
    response, body = front.request("GET", "/uploads/evil.jpg")
    assert body == EVIL
    assert not (root.parent / "ran").exists()


def test_php_fpm_stopped_is_a_502_and_back(
    site: tuple[Front, Path, Path], module_launch: Launcher
) -> None:
    front, _, fpm = site
    pid = int((fpm / "php-fpm.pid").read_text())
    os.kill(pid, 15)
    # php-fpm removes its socket as it exits
    assert wait_for(lambda: not (fpm / "php.sock").exists())
    response, _ = front.request("GET", "/index.php")
    assert response.status == 502
    php_pool(module_launch, fpm.parent, name="php-fpm-again")
    response, body = front.request("GET", "/index.php")
    assert response.status == 200 and body == b"index of /index.php"


def test_one_child_serves_more_clients_than_it_has_children(launch: Launcher) -> None:
    """Connections to php-fpm are not kept: a kept one would hold the only child, and
    the other requests' connections would wait unaccepted until the read timeout."""
    base = launch.workdir
    os.chmod(base, 0o755)
    root = base / "site"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "slow.php").write_bytes(b"<?php usleep(100000); echo 'slow';\n")
    _, sock = php_pool(launch, base, children=1)
    location = f'modifier = "~"\npath = "\\\\.php$"\nroot = "{root}"\nproxy = "php"\n'
    front = launch.front(
        fastcgi_front(sock, "[[front.server.location]]\n" + location, read_timeout=10)
    )
    results: list[tuple[int, float]] = []

    def one() -> None:
        started = time.monotonic()
        response, body = front.request("GET", "/slow.php")
        results.append((response.status, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert [status for status, _ in results] == [200] * 4
    # served one after the other by the one child (0.4 s); with kept connections the
    # others waited unaccepted until the read timeout (504)
    assert max(elapsed for _, elapsed in results) < 5
