"""Requests and connections leave nothing for the cycle collector.

A `sitecustomize` in the path of the process under test logs every collection its
workers make; after a warm-up, a load must not start a single one in the worker.

- The front worker freezes its start-up heap and raises its young-collection
  threshold (gantry.process.runtime.freeze_startup_heap), which only pays if a
  request's objects die by reference counting. A real `gantry front` serves static
  files and proxies to a real `gantry serve` over the uwsgi protocol (one connection
  per request, and kept connections) and over HTTP. A request path that leaked cyclic
  garbage, or only kept objects alive, would fill the young generation and collect.
- `gantry serve` keeps CPython's default threshold, so a closed connection that
  stayed in a reference cycle (~24 objects) would collect every ~30 connections:
  behind nginx's uwsgi_pass, and for `Connection: close` clients, every request is
  one.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

from gantry.protocol.uwsgi import encode_packet
from tests.process import Front, GantryServer, read_all

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1

[[front.server]]
server_name = ["plain.test"]
[[front.server.location]]
path = "/"
proxy = "plain"

[[front.server]]
server_name = ["kept.test"]
[[front.server.location]]
path = "/"
proxy = "kept"

[[front.server]]
server_name = ["http.test"]
[[front.server.location]]
path = "/"
proxy = "http"

[[front.server]]
default = true
[[front.server.location]]
path = "/static/"
root = "{site}"

[front.upstream.plain]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]

[front.upstream.kept]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
gantry_keepalive = true

[front.upstream.http]
protocol = "http"
servers = [{{ address = "127.0.0.1:{http_port}" }}]
"""

# Logs "pid generation" for every collection this process (and its forks) makes, and
# "pid freeze N" when one freezes its heap (N objects frozen).
SITECUSTOMIZE = """
import gc, os
_LOG = os.environ["GANTRY_TEST_GC_LOG"]
def _write(line):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {line}\\n")
def _log(phase, info):
    if phase == "stop":
        _write(info["generation"])
gc.callbacks.append(_log)
_freeze = gc.freeze
def _logged_freeze():
    _freeze()
    _write(f"freeze {gc.get_freeze_count()}")
gc.freeze = _logged_freeze
"""

# (Host, path, expected body start) for each kind of request
KINDS = [
    ("plain.test", "/hello", b"Hello World!"),
    ("kept.test", "/hello", b"Hello World!"),
    ("http.test", "/hello", b"Hello World!"),
    ("static.test", "/static/page.html", b"<p>static</p>"),
]
# As many requests in flight as the benchmark's wrk -c50 (CPython's default threshold of
# 700 collects then), and more requests than the threshold: a leak of one container
# object a request would collect too.
CLIENTS = 50
ROUNDS = 40  # per client, each round one request of each kind: 8,000 requests
#: closed app-server connections, one request each: ~24 objects of garbage each would
#: collect about 30 times
CONNECTIONS = 1000


def _gc_hook(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment that loads the collection-logging hook, and the log it writes."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    gc_log = tmp_path / "gc.log"
    return {"PYTHONPATH": str(hook), "GANTRY_TEST_GC_LOG": str(gc_log)}, gc_log


def _lines(log: Path, pid: int) -> list[list[str]]:
    lines = log.read_text().split("\n") if log.exists() else []
    return [fields[1:] for fields in (line.split(" ") for line in lines) if fields[0] == str(pid)]


def _collections(log: Path, pid: int) -> int:
    return sum(1 for fields in _lines(log, pid) if fields[0] != "freeze")


def _frozen(log: Path, pid: int) -> int:
    """How many objects ``pid`` froze as it started serving (0: it did not)."""
    return max((int(fields[1]) for fields in _lines(log, pid) if fields[0] == "freeze"), default=0)


def _worker_pid(pid: int, forked: bool = False) -> int:
    """The worker: ``gantry front`` with one worker and no master is its own worker.

    ``forked``: ``pid`` is a master, whose worker may not be forked yet (the master
    binds the sockets first, so they accept before the worker exists): wait for it.
    """
    deadline = time.monotonic() + (5.0 if forked else 0.0)
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) <= 1, children
        if children:
            return int(children[0])
        if time.monotonic() > deadline:
            assert not forked, f"master {pid} forked no worker within 5 s"
            return pid
        time.sleep(0.02)


async def _client(port: int, rounds: int, failures: list[str]) -> None:
    """One keep-alive connection, ``rounds`` times each kind of request in turn."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        failures.append(f"connect: {exc}")
        return
    try:
        for _ in range(rounds):
            for host, path, body in KINDS:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.I)
                data = await reader.readexactly(int(length[1])) if length else b""
                if not head.startswith(b"HTTP/1.1 200 ") or not data.startswith(body):
                    failures.append(f"{host}{path}: {head[:60]!r} {data[:60]!r}")
                    return
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _closing_clients(port: int, count: int, failures: list[str]) -> None:
    """``count`` connections one after another, each one request with Connection: close."""
    for number in range(count):
        host, path, body = KINDS[number % len(KINDS)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        if not answer.startswith(b"HTTP/1.1 200 ") or not answer.endswith(
            body + b"\n" if host == "static.test" else body
        ):
            failures.append(f"{host}{path}: {answer[:80]!r}")
            return


async def _load(port: int, clients: int, rounds: int, failures: list[str]) -> None:
    tasks = [_client(port, rounds, failures) for _ in range(clients)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


def test_front_requests_leave_nothing_to_collect(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "static").mkdir(parents=True)
    (site / "static" / "page.html").write_bytes(b"<p>static</p>\n")
    env, gc_log = _gc_hook(tmp_path)
    sock = tmp_path / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), "--workers", "1",
        log_path=tmp_path / "app.log",
    )  # fmt: skip
    app.start()
    config = CONFIG.format(site=site, sock=sock, http_port=app.port)
    front = Front(config, tmp_path, env=env)
    front.start()
    try:
        assert front.process is not None
        worker = _worker_pid(front.process.pid)
        failures: list[str] = []
        asyncio.run(_load(front.port, 4, 20, failures))  # warm-up: caches fill
        assert failures == []
        before = _collections(gc_log, worker)
        assert before > 0, "the hook saw no collection: is sitecustomize loaded?"
        assert _frozen(gc_log, worker) > 1000, "the worker did not freeze its start-up heap"
        started = time.monotonic()
        asyncio.run(_load(front.port, CLIENTS, ROUNDS, failures))
        assert failures == []
        elapsed = time.monotonic() - started
        made = _collections(gc_log, worker) - before
        assert made == 0, (
            f"the front worker collected {made} times in {CLIENTS * ROUNDS * len(KINDS)} "
            f"requests ({elapsed:.1f} s): a request path keeps objects alive or makes cycles"
        )
        # Clients that close after each response: a closed connection must not stay in
        # a cycle either (~15 objects each would pass the threshold within 500).
        asyncio.run(_closing_clients(front.port, CONNECTIONS, failures))
        assert failures == []
        made = _collections(gc_log, worker) - before
        assert made == 0, (
            f"the front worker collected {made} times in {CONNECTIONS} closed connections"
        )
    finally:
        front.stop()
        app.stop()


def test_closed_app_server_connections_leave_nothing_to_collect(tmp_path: Path) -> None:
    env, gc_log = _gc_hook(tmp_path)
    sock = tmp_path / "app.sock"
    app = GantryServer(
        "tests.apps_contract:app", "--uwsgi-socket", str(sock), "--workers", "1",
        log_path=tmp_path / "app.log", env=env,
    )  # fmt: skip
    app.start()
    packet = encode_packet(
        [(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/hello"), (b"QUERY_STRING", b""),
         (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"HTTP_HOST", b"a.test")]
    )  # fmt: skip
    http = b"GET /hello HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"

    def one_of_each() -> None:
        with socket.socket(socket.AF_UNIX) as client:  # as nginx's uwsgi_pass
            client.connect(str(sock))
            client.sendall(packet)
            answer = read_all(client)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"Hello World!")
        with app.connect() as client:  # an HTTP client that closes after each response
            client.sendall(http)
            answer = read_all(client)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"Hello World!")

    try:
        worker = _worker_pid(app.pid, forked=True)
        for _ in range(20):
            one_of_each()  # warm-up
        before = _collections(gc_log, worker)
        assert before > 0, "the hook saw no collection: is sitecustomize loaded?"
        assert _frozen(gc_log, worker) > 1000, "the worker did not freeze its start-up heap"
        for _ in range(CONNECTIONS // 2):
            one_of_each()
        made = _collections(gc_log, worker) - before
        assert made == 0, (
            f"the app worker collected {made} times in {CONNECTIONS} connections: a closed "
            f"connection stays in a reference cycle"
        )
    finally:
        app.stop()
