"""The front's HTTP/2 connections (open now) and streams (answered) in its stats JSON,
its Prometheus metrics and `gantry top`."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.process import Launcher, free_port, wait_for
from tests.support_http2 import RawH2


def _stats(path: Path) -> dict[str, Any]:
    from gantry.stats.top import fetch

    return fetch(str(path))


def _metric(port: int, name: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(name + "{")
    )


def test_http2_connections_and_streams_are_counted(launch: Launcher, short_tmp: Path) -> None:
    stats_path, metrics_port = short_tmp / "s.sock", free_port()
    www = short_tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("counted\n")
    front = launch.front(f"""
[front]
listen = ["127.0.0.1:FRONT_PORT h2c"]
workers = 2
stats = "{stats_path}"
metrics = "127.0.0.1:{metrics_port}"
[[front.server]]
[[front.server.location]]
path = "/"
root = "{www}"
""")  # fmt: skip
    assert wait_for(stats_path.exists)

    def totals() -> tuple[int, int]:
        workers = _stats(stats_path)["workers"]
        return (
            sum(w["http2_connections"] for w in workers),
            sum(w["http2_streams"] for w in workers),
        )

    clients = [RawH2(front.port) for _ in range(3)]
    try:
        for client in clients:
            streams = [client.request("/") for _ in range(5)]
            for stream_id in streams:
                assert client.wait(stream_id).body == b"counted\n"
        # the workers copy their counts to shared memory once a second
        assert wait_for(lambda: totals() == (3, 15)), totals()
        assert wait_for(lambda: _metric(metrics_port, "gantry_worker_http2_connections") == 3)
        assert _metric(metrics_port, "gantry_worker_http2_streams_total") == 15
        top = subprocess.run(
            [sys.executable, "-m", "gantry", "top", "--once", str(stats_path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "HTTP/2: 3 connections open, 15 streams" in top.stdout, top.stdout + top.stderr
    finally:
        for client in clients:
            client.close()
    assert wait_for(lambda: totals() == (0, 15)), totals()
