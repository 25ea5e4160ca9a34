"""The cache's figures with real processes: each zone's requests by status, entries and
bytes in the stats JSON, the Prometheus metrics and `gantry top` (of a 2-worker front
and of `gantry up`), $upstream_cache_status in the access log, and Cache-Status on the
front's own errors of a cached location."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from gantry.front.cache.packs import PackIndex, pack_path
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
    """The stats document; the master binds its socket a moment after the listen sockets
    the launcher waits on (a restarted front's old file refuses meanwhile): waited for."""
    from gantry.stats.top import fetch

    answer: list[dict[str, Any]] = []

    def fetched() -> bool:
        try:
            answer.append(fetch(path))
        except OSError:
            return False
        return True

    assert wait_for(fetched, 15), f"no stats on {path}"
    return answer[0]


def metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def zone_files(root: Path) -> tuple[int, int]:
    """(entries, bytes) of a zone as its folder holds them (no vary marker here): files,
    and the records its index names in packs that are there."""
    sizes = [
        f.stat().st_size for d in root.iterdir() if d.is_dir() and len(d.name) == 2
        for f in d.iterdir()
    ]  # fmt: skip
    index = PackIndex(str(root), 0)
    try:
        sizes += [
            length for _, _, pack, _, length, _ in index.scan()
            if os.path.exists(pack_path(str(root), pack))
        ]  # fmt: skip
    finally:
        index.close()
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
        assert wait_for(lambda: len(stats(str(stats_path))["workers"]) == 2, 30), front.log_text()
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
        assert wait_for(both_workers_served, 15), stats(str(stats_path))["workers"]
        assert origin.count("/p0") == 1

        doc = stats(str(stats_path))
        (zone,) = doc["caches"]
        assert zone["name"] == "pages"
        assert zone["requests"] == {
            "hit": hits, "miss": misses, "expired": 0, "stale": 0, "updating": 0,
            "revalidated": 0, "bypass": 0,
        }  # fmt: skip
        entries, size = zone_files(short_tmp / "c")
        assert entries == misses and size > 0

        def settled() -> tuple[int, int]:
            zone = stats(str(stats_path))["caches"][0]
            return zone["entries"], zone["bytes"]

        # a write that lands while a sweep walks the zone is counted twice until the next
        # sweep (every 10 s) sets the figures from the disk again
        assert wait_for(lambda: settled() == (misses, size), 25), settled()

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


def _revalidating(fields: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    head = [("ETag", '"v1"'), ("Cache-Control", "max-age=0")]
    if fields.get("if-none-match") == '"v1"':
        return 304, head, b""
    return 200, head, b"r"


def test_each_status_in_the_access_log_and_the_counters(launch: Launcher, short_tmp: Path) -> None:
    log_path, stats_path = short_tmp / "access.log", short_tmp / "s.sock"
    extra = (
        f'stats = "{stats_path}"\naccess_log = "{log_path}"\n'
        "access_log_format = '$request_method $request_uri $status $upstream_cache_status "
        '"$http_x_note"\'\n'
    )
    zone = 'use_stale = ["error", "http_502"]\nbypass = ["$cookie_nocache"]\n'
    with Origin() as origin:
        origin.answers["/r"] = _revalidating
        origin.answers["/e"] = (200, [("Cache-Control", "max-age=0")], b"e")
        origin.answers["/s"] = (200, [("Cache-Control", "max-age=0")], b"s")
        origin.answers["/f"] = (200, [("Cache-Control", "max-age=300")], b"f")
        origin.answers["/p"] = (201, [], b"p")
        config = cache_config(origin.port, str(short_tmp / "c"), zone, front=extra)
        config += '\n[[front.server.location]]\npath = "/plain/"\nproxy = "app"\n'
        front = launch.front(config)
        for path in ("/r", "/e", "/s", "/f"):
            assert get(front.port, path)[0] == 200
        assert get(front.port, "/r")[1]["cache-status"].endswith("fwd-status=304")
        origin.answers["/e"] = (200, [("Cache-Control", "max-age=0")], b"e2")
        assert get(front.port, "/e")[2] == b"e2"
        origin.answers["/s"] = (502, [], b"down")
        assert get(front.port, "/s")[2] == b"s"
        assert get(front.port, "/f", {"X-Note": 'a "quoted" note'})[0] == 200
        assert get(front.port, "/f", {"Cookie": "nocache=1"})[0] == 200
        assert get(front.port, "/p", method="POST")[0] == 201
        assert get(front.port, "/plain/x")[0] == 404  # proxied, not cached
        expected = [
            'GET /r 200 MISS "-"', 'GET /e 200 MISS "-"', 'GET /s 200 MISS "-"',
            'GET /f 200 MISS "-"', 'GET /r 200 REVALIDATED "-"', 'GET /e 200 EXPIRED "-"',
            'GET /s 200 STALE "-"', 'GET /f 200 HIT "a \\x22quoted\\x22 note"',
            'GET /f 200 BYPASS "-"', 'POST /p 201 BYPASS "-"', 'GET /plain/x 404 - "-"',
        ]  # fmt: skip
        assert wait_for(lambda: len(log_path.read_text().splitlines()) == len(expected))
        assert log_path.read_text().splitlines() == expected
        (counted,) = stats(str(stats_path))["caches"]
        assert counted["requests"] == {
            "hit": 1, "miss": 4, "expired": 1, "stale": 1, "updating": 0, "revalidated": 1,
            "bypass": 2,
        }  # fmt: skip


def test_json_access_log_carries_the_cache_status(launch: Launcher, short_tmp: Path) -> None:
    log_path = short_tmp / "access.log"
    extra = f'access_log = "{log_path}"\naccess_log_format = "json"\n'
    with Origin() as origin:
        origin.answers["/j"] = (200, [("Cache-Control", "max-age=300")], b"j")
        config = cache_config(origin.port, str(short_tmp / "c"), front=extra)
        front = launch.front(config)
        get(front.port, "/j")
        get(front.port, "/j")
        get(front.port, "/j", method="PURGE")
        assert wait_for(lambda: len(log_path.read_text().splitlines()) == 3)
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [line["upstream_cache_status"] for line in lines] == ["MISS", "HIT", None]


def test_an_unknown_log_variable_is_a_config_error(launch: Launcher, short_tmp: Path) -> None:
    config = short_tmp / "bad.toml"
    config.write_text("[front]\naccess_log = \"-\"\naccess_log_format = '$status $nope'\n")
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert result.returncode != 0
    assert "front.access_log_format" in result.stderr and "$nope" in result.stderr, result.stderr
    assert str(config) in result.stderr


def test_cache_status_on_the_fronts_own_errors(launch: Launcher, short_tmp: Path) -> None:
    stats_path = short_tmp / "s.sock"
    log_path = short_tmp / "access.log"
    extra = (
        f'stats = "{stats_path}"\naccess_log = "{log_path}"\n'
        "access_log_format = '$request_uri $status $upstream_cache_status'\n"
    )
    origin = Origin()
    with origin:
        origin.answers["/old"] = (200, [("Cache-Control", "max-age=0")], b"old")
        config = cache_config(origin.port, str(short_tmp / "c"), "", front=extra)
        config = config.replace(
            'servers = [{ address = "127.0.0.1:',
            'read_timeout = "1s"\nservers = [{ address = "127.0.0.1:',
        )
        front = launch.front(config)
        assert get(front.port, "/old")[2] == b"old"
        origin.gate = threading.Event()  # never opened while the front waits
        status, fields, _ = get(front.port, "/slow")
        assert status == 504
        assert fields["cache-status"] == "gantry; fwd=uri-miss; detail=upstream-timeout"
    # the origin is gone: its port refuses
    status, fields, _ = get(front.port, "/new")
    assert status == 502
    assert fields["cache-status"] == "gantry; fwd=uri-miss; detail=upstream-error"
    # a stored entry that may not be served stale (no use_stale): said so too
    status, fields, _ = get(front.port, "/old")
    assert status == 502
    assert fields["cache-status"] == "gantry; fwd=stale; detail=upstream-error"
    status, fields, _ = get(front.port, "/new", {"Cache-Control": "only-if-cached"})
    assert status == 504 and fields["cache-status"] == "gantry; fwd=uri-miss"
    expected = ["/old 200 MISS", "/slow 504 MISS", "/new 502 MISS", "/old 502 EXPIRED",
                "/new 504 MISS"]  # fmt: skip
    assert wait_for(lambda: len(log_path.read_text().splitlines()) == len(expected))
    assert log_path.read_text().splitlines() == expected
    (zone,) = stats(str(stats_path))["caches"]
    assert (zone["requests"]["miss"], zone["requests"]["expired"]) == (4, 1)


def test_a_restarted_front_counts_the_entries_already_on_disk(
    launch: Launcher, short_tmp: Path
) -> None:
    stats_path = short_tmp / "s.sock"
    with Origin() as origin:
        for i in range(5):
            origin.answers[f"/k{i}"] = (200, [("Cache-Control", "max-age=600")], b"k" * 300)
        config = cache_config(
            origin.port, str(short_tmp / "c"), workers=2, front=f'stats = "{stats_path}"'
        )
        first = launch.front(config, name="first")
        for i in range(5):
            assert get(first.port, f"/k{i}")[0] == 200
        first.stop()
        second = launch.front(config, name="second")

        def counted() -> tuple[int, int]:
            zone = stats(str(stats_path))["caches"][0]
            return zone["entries"], zone["bytes"]

        # the first sweep, soon after the workers start, counts what is on disk
        assert wait_for(lambda: counted() == zone_files(short_tmp / "c"), 30), counted()
        assert counted()[0] == 5
        assert get(second.port, "/k0")[1]["cache-status"].startswith("gantry; hit")


def test_a_stale_entry_served_while_another_request_refreshes_it_is_updating(
    launch: Launcher, short_tmp: Path
) -> None:
    log_path = short_tmp / "access.log"
    extra = (
        f'access_log = "{log_path}"\naccess_log_format = "$request_uri $upstream_cache_status"\n'
    )
    zone = 'use_stale = ["updating"]\nlock = true\n'
    with Origin() as origin:
        origin.answers["/u"] = (200, [("Cache-Control", "max-age=0")], b"u")
        front = launch.front(cache_config(origin.port, str(short_tmp / "c"), zone, front=extra))
        assert get(front.port, "/u")[2] == b"u"
        origin.gate = threading.Event()  # the refresh waits at the origin, holding the lock
        refresh: list[tuple[int, dict[str, str], bytes]] = []
        first = threading.Thread(target=lambda: refresh.append(get(front.port, "/u")))
        first.start()
        try:
            assert wait_for(lambda: origin.count("/u") == 2)
            status, fields, body = get(front.port, "/u")
            assert (status, body) == (200, b"u") and "hit" in fields["cache-status"]
        finally:
            origin.gate.set()
            first.join(30)
        assert refresh and refresh[0][0] == 200
        assert wait_for(lambda: len(log_path.read_text().splitlines()) == 3)
        assert log_path.read_text().splitlines() == ["/u MISS", "/u UPDATING", "/u EXPIRED"]


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
    assert wait_for(lambda: zone().get("requests", {}).get("hit", 0) >= 4, limit=30), zone()
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


def test_front_stats_under_gantry_up_is_a_config_error(short_tmp: Path) -> None:
    """Under gantry up the stack serves the front's figures: [front] stats would be a
    second server nobody reads, so the file is refused, naming the key and why."""
    config = short_tmp / "stack.toml"
    config.write_text(
        '[front]\nstats = "/tmp/never.sock"\n[[app]]\nname = "hello"\nmodule = "gantry.demo:app"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "GANTRY_PURE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}: front.stats: under gantry up" in result.stderr, result.stderr
