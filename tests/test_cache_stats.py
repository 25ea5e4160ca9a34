"""The cache's figures with real processes: each zone's requests by status, entries and
bytes in the stats JSON, the Prometheus metrics and `gantry top` (of a 2-worker front
and of `gantry up`), $upstream_cache_status in the access log, and Cache-Status on the
front's own errors of a cached location."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.process import Launcher, free_port, try_get, wait_for
from tests.support_cache import Origin, cache_config


def get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (so a 2-worker front spreads them)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def stats(path: str) -> dict[str, Any]:
    from gantry.stats.top import fetch

    return fetch(path)


def metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def zone_files(root: Path) -> tuple[int, int]:
    """(entries, bytes) of a zone as its folder holds them (no vary marker here)."""
    sizes = [
        f.stat().st_size for d in root.iterdir() if d.is_dir() and len(d.name) == 2
        for f in d.iterdir()
    ]  # fmt: skip
    return len(sizes), sum(sizes)


def test_hits_and_misses_of_two_workers_are_counted_exactly(
    launch: Launcher, short_tmp: Path
) -> None:
    stats_path, metrics_port = short_tmp / "s.sock", free_port()
    extra = f'stats = "{stats_path}"\nmetrics = "127.0.0.1:{metrics_port}"\n'
    with Origin() as origin:
        for i in range(200):
            origin.answers[f"/p{i}"] = (200, [("Cache-Control", "max-age=300")], b"y" * (i + 1))
        front = launch.front(
            cache_config(origin.port, str(short_tmp / "c"), workers=2, front=extra)
        )
        assert wait_for(lambda: len(stats(str(stats_path))["workers"]) == 2), front.log_text()
        hits = misses = 0

        def both_workers_served() -> bool:
            return all(w["requests"] > 0 for w in stats(str(stats_path))["workers"])

        # each round: a new path (a miss) then three hits of it, on new connections,
        # until both workers answered some (a worker's request count is published once
        # a second); bounded by the paths the origin knows
        for i in range(200):
            for turn in range(4):
                status, fields, body = get(front.port, f"/p{i}")
                assert (status, body) == (200, b"y" * (i + 1))
                expected = "fwd=uri-miss" if turn == 0 else "hit"
                assert expected in fields["cache-status"], fields
                misses += turn == 0
                hits += turn > 0
            if i >= 4 and i % 5 == 0 and both_workers_served():
                break
        assert wait_for(both_workers_served, 5), stats(str(stats_path))["workers"]
        assert origin.count("/p0") == 1

        doc = stats(str(stats_path))
        (zone,) = doc["caches"]
        assert zone["name"] == "pages"
        assert zone["requests"] == {
            "hit": hits, "miss": misses, "expired": 0, "stale": 0, "updating": 0,
            "revalidated": 0, "bypass": 0,
        }  # fmt: skip
        entries, size = zone_files(short_tmp / "c")
        assert entries == misses and zone["entries"] == misses
        assert zone["bytes"] == size > 0

        text = metrics(metrics_port)
        assert f'gantry_cache_requests_total{{zone="pages",status="hit"}} {hits}\n' in text
        assert f'gantry_cache_requests_total{{zone="pages",status="miss"}} {misses}\n' in text
        assert 'gantry_cache_requests_total{zone="pages",status="stale"} 0\n' in text
        assert f'gantry_cache_entries{{zone="pages"}} {misses}\n' in text
        assert f'gantry_cache_bytes{{zone="pages"}} {size}\n' in text

        top = subprocess.run(
            [sys.executable, "-m", "gantry", "top", "--once", str(stats_path)],
            capture_output=True, text=True, timeout=30, env=front.env,
        )  # fmt: skip
        assert top.returncode == 0, top.stderr
        lines = top.stdout.splitlines()
        header = next(line for line in lines if line.startswith("CACHE"))
        assert header.split()[:8] == [
            "CACHE", "HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "BYPASS"
        ]  # fmt: skip
        row = next(line for line in lines if line.startswith("pages")).split()
        assert row[1:8] == [str(hits), str(misses), "0", "0", "0", "0", "0"], top.stdout
        assert row[9] == str(misses)


def test_the_entries_removed_by_purge_leave_the_count(launch: Launcher, short_tmp: Path) -> None:
    stats_path = short_tmp / "s.sock"
    with Origin() as origin:
        for i in range(6):
            origin.answers[f"/q{i}"] = (200, [("Cache-Control", "max-age=300")], b"z" * 100)
        front = launch.front(
            cache_config(origin.port, str(short_tmp / "c"), front=f'stats = "{stats_path}"')
        )
        for i in range(6):
            assert get(front.port, f"/q{i}")[0] == 200
        assert stats(str(stats_path))["caches"][0]["entries"] == 6
        assert get(front.port, "/q0", method="PURGE")[0] == 200
        assert get(front.port, "/q*", method="PURGE")[0] == 200
        (zone,) = stats(str(stats_path))["caches"]
        assert (zone["entries"], zone["bytes"]) == (0, 0) == zone_files(short_tmp / "c")


STACK = """
[stack]
graceful_timeout = 5
stats = "{stats}"
metrics = "127.0.0.1:{metrics}"

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2

[front.cache.pages]
path = "{cache}"
valid = {{ "200" = "5m" }}

[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "hello"
cache = "pages"

[[app]]
name = "hello"
module = "gantry.demo:app"
workers = 1
graceful_timeout = 5
"""


def test_gantry_up_shows_the_front_zones(launch: Launcher, short_tmp: Path) -> None:
    stats_path, metrics_port = short_tmp / "stack.sock", free_port()
    up = launch.up(STACK.format(stats=stats_path, metrics=metrics_port, cache=short_tmp / "c"))
    assert wait_for(lambda: try_get(up.port, "/hello")[0] == 200, limit=30), up.log_text()
    for _ in range(4):
        assert try_get(up.port, "/hello")[0] == 200

    def zone() -> dict[str, Any]:
        caches = stats(str(stats_path)).get("caches") or [{}]
        return dict(caches[0])

    # the first /hello answered may have been one before the pool was up (a 502)
    assert wait_for(lambda: zone().get("requests", {}).get("hit", 0) >= 4, limit=10), zone()
    counted = zone()
    assert counted["name"] == "pages" and counted["entries"] == 1
    text = metrics(metrics_port)
    hits = counted["requests"]["hit"]
    assert f'gantry_cache_requests_total{{zone="pages",status="hit"}} {hits}\n' in text
    assert 'gantry_cache_entries{zone="pages"} 1\n' in text
    top = subprocess.run(
        [sys.executable, "-m", "gantry", "top", "--once", str(stats_path)],
        capture_output=True, text=True, timeout=30, env=up.env,
    )  # fmt: skip
    assert top.returncode == 0 and any(
        line.startswith("pages") for line in top.stdout.splitlines()
    ), top.stdout
