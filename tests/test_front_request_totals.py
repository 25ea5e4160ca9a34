"""A front worker counts its requests in a compiled object (front.worker.FrontCounters)
copied into its shared-memory slot once a second: the stats JSON still gets every request,
its bytes, its status class and its time."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.process import Launcher, accepts, read_until_closed, responses, wait_for

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2
stats = "{stats}"

[[front.server]]
[[front.server.location]]
path = "/"
root = "{root}"
"""

BODY = b"hello, totals\n"


def _stats(path: Path) -> dict[str, Any] | None:
    if not accepts(path):
        return None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        doc: dict[str, Any] = json.loads(read_until_closed(sock, 5).data)
    return doc


def _summed(path: Path) -> tuple[int, int, int, int]:
    """(requests, 2xx, 4xx, bytes sent) over the front's workers."""
    doc = _stats(path)
    if doc is None:
        return (-1, -1, -1, -1)
    workers = doc["workers"]
    return (
        sum(w["requests"] for w in workers),
        sum(w["status_2xx"] for w in workers),
        sum(w["status_4xx"] for w in workers),
        sum(w["tx"] for w in workers),
    )


def test_the_stats_count_every_request(launch: Launcher, tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_bytes(BODY)
    stats = tmp_path / "stats.sock"
    front = launch.front(CONFIG.format(stats=stats, root=root))
    assert wait_for(lambda: _summed(stats)[0] == 0, 10)
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        sock.sendall(
            b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n" * 3
            + b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n" * 2
            + b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        got = read_until_closed(sock, 10).data
    answers = responses(got)
    assert [status for status, _ in answers] == [200, 200, 200, 404, 404, 200]
    sent_bodies = sum(len(body) for _, body in answers)
    # stored once a second by each worker: wait for all six
    assert wait_for(lambda: _summed(stats)[0] == 6, 10)
    requests, ok, missing, tx = _summed(stats)
    assert (requests, ok, missing) == (6, 4, 2)
    assert tx == sent_bodies
    doc = _stats(stats)
    assert doc is not None
    assert sum(w["running_time"] for w in doc["workers"]) >= 0
