"""The front's own CPU time per request through its defences, measured in one process
(issue 16): the figure a loaded machine moves least, where wrk's req/s against nginx
swings by a third from round to round on a shared host.

A front worker runs in this process on uvloop behind a real listening socket, with one
client connection from a trusted proxy (real_ip); each request's bytes are handed to
the connection's ``data_received`` as the loop would, and its answer goes out through
the real transport (the client drains it). Three loads, in interleaved rounds:

- ``refused``: the client named by X-Forwarded-For is in the blocklist: 403;
- ``static``: another client, a 1 KiB static file;
- ``limited``: the same file through a location with a limit_req it never reaches.

Printed: each load's median process CPU time per request (us), and the limit's cost
over the static file, as the bench goal reads it (at most 5% of a request).

Run: ``PYTHONPATH=src python bench/front_defences.py [--rounds 15] [--requests 2000]``
(compiled: after ``tools/compile.py``; it says which build it measured).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fronts import BLOCKED_CLIENT, PASSING_CLIENT, make_site  # noqa: E402 - a sibling module

from gantry.config.front import front_config_from_dict
from gantry.front import connection as connection_module
from gantry.front.connection import FrontConnection
from gantry.front.worker import FrontWorker

CONFIG = """
[front]
listen = ["127.0.0.1:1"]
workers = 1
keepalive_requests = 1000000000
[front.real_ip]
from = ["127.0.0.1"]
[front.blocklist]
files = ["{tmp}/listed.txt"]
[front.limit_req_zone.perip]
key = "$binary_remote_addr"
rate = "1000000r/s"
size = "10m"
[[front.server]]
[[front.server.location]]
path = "/static/"
root = "{tmp}/site"
[[front.server.location]]
path = "/limited/"
root = "{tmp}/site"
limit_req = [{{ zone = "perip", burst = 1000000, nodelay = true }}]
"""


def request(path: str, client: str) -> bytes:
    """The request wrk sends in bench/front.py's blocklist load."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Forwarded-For: {client}\r\n\r\n"
    ).encode()


LOADS = {
    "refused": (request("/static/one.bin", BLOCKED_CLIENT), 403),
    "static": (request("/static/one.bin", PASSING_CLIENT), 200),
    "limited": (request("/limited/one.bin", PASSING_CLIENT), 200),
}


def main(argv: list[str] | None = None) -> int:
    """Measure and print; 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000, help="requests a round and load")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gdef-") as name:
        tmp = Path(name)
        make_site(tmp, "static", "limited")
        (tmp / "listed.txt").write_text(f"{BLOCKED_CLIENT}\n")
        results = measure(CONFIG.format(tmp=tmp), args.rounds, args.requests)
    build = "compiled" if not str(connection_module.__file__).endswith(".py") else "pure Python"
    print(f"{build} build, median of {args.rounds} rounds of {args.requests} requests")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"  {name:8} {value:6.2f} us CPU/request (min {min(results[name]):.2f})")
    cost = medians["limited"] - medians["static"]
    print(f"  limit_req over static: {cost:+.2f} us ({100 * cost / medians['static']:+.1f}%)")
    return 0


def measure(text: str, rounds: int, requests: int) -> dict[str, list[float]]:
    """Per load, each round's process CPU time per request (us)."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = FrontWorker(front_config_from_dict(tomllib.loads(text)["front"]), loop, None)
    server = loop.run_until_complete(
        loop.create_server(lambda: FrontConnection(worker), "127.0.0.1", 0)
    )
    client = socket.create_connection(server.sockets[0].getsockname()[:2])
    client.setblocking(False)
    try:
        loop.run_until_complete(asyncio.sleep(0.05))  # accepted
        (conn,) = worker.connections
        assert isinstance(conn, FrontConnection)
        results: dict[str, list[float]] = {name: [] for name in LOADS}
        for _ in range(rounds):
            for name, (data, status) in LOADS.items():
                results[name].append(_round(conn, client, data, requests))
                assert conn.status == status, (name, conn.status)
                loop.run_until_complete(asyncio.sleep(0))
        return results
    finally:
        client.close()
        server.close()
        worker.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def _round(conn: Any, client: socket.socket, data: bytes, requests: int) -> float:
    feed = conn.data_received
    _drain(client)
    started = time.process_time_ns()
    for n in range(requests):
        feed(data)
        if n % 50 == 49:  # the answers stay far below the socket's buffers
            _drain(client)
    return (time.process_time_ns() - started) / requests / 1000


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        pass


if __name__ == "__main__":
    sys.exit(main())
