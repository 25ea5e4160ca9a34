"""The front's limit_req and limit_conn (issue 16), on real `gantry front` processes with
two workers sharing each zone: nginx's counts, delays, statuses, dry runs, the access
log's $limit_req_status, a full zone's LRU, and a zone kept across a reload."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process import (
    Front,
    Launcher,
    accepts,
    child_pids,
    free_port,
    read_until_closed,
    ready_workers,
    try_get,
    wait_for,
)
from tests.support_front import RawUpstream, limit_req_zone, limited_site
from tests.support_limits import Burst, burst, log_lines, spread_connections

#: the zone of the burst tests: a key per client and round (a test's attempts each start
#: a full bucket)
PER_ROUND = limit_req_zone("$binary_remote_addr$http_x_round", "10r/s", "10m")


def _front(launch: Launcher, limit: str, name: str = "front") -> tuple[Front, Path]:
    root = launch.workdir / f"{name}-root"
    root.mkdir()
    (root / "index.html").write_text("hello")
    (root / "warm").mkdir()
    (root / "warm" / "w").write_text("warm")
    log = launch.workdir / f"{name}-access.log"
    config = limited_site(
        root, limit, zones=PER_ROUND, unlimited="/warm/", workers=2, front=f'access_log = "{log}"'
    )
    front = launch.front(config, name=name)
    return front, log


def _rounds(front: Front, expected: tuple[int, int]) -> Burst:
    """20 requests at once over connections both workers hold, again with a fresh key if
    a worker held none or the machine was too slow for them to arrive within 100 ms
    (then the bucket leaks a request more)."""
    result = Burst()
    for attempt in range(3):
        conns = spread_connections(front.port, front.pid, 10, "/warm/w")
        result = burst(front.port, 20, "/index.html", f"X-Round: {attempt}\r\n", conns)
        answered = result.count(200)
        if (answered, 20 - answered) == expected:
            break
    return result


def test_burst_nodelay_on_two_workers(launch: Launcher) -> None:
    front, log = _front(launch, '{ zone = "perip", burst = 5, nodelay = true }')
    statuses = _rounds(front, (6, 14)).statuses
    assert sorted(statuses) == [200] * 6 + [503] * 14, statuses
    assert wait_for(lambda: len(log_lines(log, '"REJECTED"')) >= 14, 10)
    assert len(log_lines(log, '"PASSED"')) >= 6
    assert "limiting requests, excess: 5" in front.log_text()


def test_burst_with_delay(launch: Launcher) -> None:
    front, log = _front(launch, '{ zone = "perip", burst = 5, delay = 2 }')
    result = _rounds(front, (6, 14))
    assert sorted(result.statuses) == [200] * 6 + [503] * 14, result.statuses
    answered = sorted(t for s, t in zip(result.statuses, result.times, strict=True) if s == 200)
    # three at once, then three at the rate: about 0.1 s, 0.2 s and 0.3 s late
    assert answered[-1] >= 0.25, answered
    assert answered[3] >= 0.07, answered
    assert wait_for(lambda: len(log_lines(log, '"DELAYED"')) >= 3, 10)


def test_status_429(launch: Launcher) -> None:
    front, _ = _front(launch, '{ zone = "perip", burst = 5, nodelay = true, status = 429 }')
    statuses = _rounds(front, (6, 14)).statuses
    assert sorted(statuses) == [200] * 6 + [429] * 14, statuses


def test_dry_run_lets_everything_through_and_logs(launch: Launcher) -> None:
    front, log = _front(launch, '{ zone = "perip", burst = 5, nodelay = true, dry_run = true }')
    assert burst(front.port, 20, "/index.html").statuses == [200] * 20
    assert wait_for(lambda: len(log_lines(log, '"REJECTED_DRY_RUN"')) >= 10, 10)
    assert "limiting requests" in front.log_text()


def test_delay_dry_run(launch: Launcher) -> None:
    front, log = _front(launch, '{ zone = "perip", burst = 50, dry_run = true }')
    result = burst(front.port, 10, "/index.html")
    assert result.statuses == [200] * 10
    assert max(result.times) < 0.5, (
        result.times
    )  # not delayed: nine of them would wait 0.1 s to 0.9 s
    assert wait_for(lambda: len(log_lines(log, '"DELAYED_DRY_RUN"')) >= 5, 10)


def test_empty_key_is_not_limited(launch: Launcher) -> None:
    root = launch.workdir / "root"
    root.mkdir()
    (root / "a").write_text("a")
    front = launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
{limit_req_zone("$http_x_token", "1r/m", name="bytoken")}
[[front.server]]
limit_req = [{{ zone = "bytoken" }}]
[[front.server.location]]
path = "/"
root = "{root}"
"""
    )
    assert burst(front.port, 5, "/a").statuses == [200] * 5
    assert sorted(burst(front.port, 3, "/a", "X-Token: t\r\n").statuses) == [200, 503, 503]


def test_several_limits_the_strictest_decides(launch: Launcher) -> None:
    root = launch.workdir / "root"
    root.mkdir()
    (root / "a").write_text("a")
    front = launch.front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2
{limit_req_zone(rate="100r/s", name="loose")}
{limit_req_zone("$server_name", "1r/m", name="strict")}
[[front.server]]
server_name = ["t"]
[[front.server.location]]
path = "/"
root = "{root}"
limit_req = [{{ zone = "loose", burst = 10, nodelay = true }},
             {{ zone = "strict", burst = 2, nodelay = true, status = 429 }}]
"""
    )
    statuses = burst(front.port, 8, "/a").statuses
    assert sorted(statuses) == [200] * 3 + [429] * 5, statuses


LIMIT_CONN = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2
[front.limit_conn_zone.perip]
key = "$binary_remote_addr"
[front.upstream.slow]
servers = [{{ address = "127.0.0.1:{port}" }}]
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "slow"
limit_conn = [{{ zone = "perip", limit = 3{extra} }}]
"""


@pytest.fixture
def held() -> Iterator[RawUpstream]:
    upstream = RawUpstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nheld", hold=True
    )
    try:
        yield upstream
    finally:
        upstream.close()


def _in_flight(front: Front, count: int) -> tuple[list[tuple[int, bytes]], list[threading.Thread]]:
    """``count`` requests on threads; their (status, body) once answered."""
    results: list[tuple[int, bytes]] = []

    def one() -> None:
        results.append(try_get(front.port, "/x"))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def test_limit_conn_refuses_the_one_past_the_limit(launch: Launcher, held: RawUpstream) -> None:
    front = launch.front(LIMIT_CONN.format(port=held.port, extra=""))
    results, threads = _in_flight(front, 3)
    assert wait_for(lambda: held.held == 3, 10)
    assert try_get(front.port, "/x")[0] == 503  # the fourth, while three are in progress
    held.release()
    for thread in threads:
        thread.join(15)
    assert sorted(status for status, _ in results) == [200] * 3
    # the counts were released at the end of each request: the limit is free again
    assert [try_get(front.port, "/x")[0] for _ in range(4)] == [200] * 4


def test_limit_conn_released_when_the_client_goes(launch: Launcher, held: RawUpstream) -> None:
    front = launch.front(LIMIT_CONN.format(port=held.port, extra=", status = 429"))
    clients = [socket.create_connection(("127.0.0.1", front.port)) for _ in range(3)]
    for client in clients:
        client.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert wait_for(lambda: held.held == 3, 10)
    assert try_get(front.port, "/x")[0] == 429
    for client in clients:
        client.close()
    held.release()
    assert wait_for(lambda: try_get(front.port, "/x")[0] == 200, 10)


def test_limit_conn_dry_run(launch: Launcher, held: RawUpstream) -> None:
    front = launch.front(LIMIT_CONN.format(port=held.port, extra=", dry_run = true"))
    results, threads = _in_flight(front, 4)
    assert wait_for(lambda: held.held == 4, 10)
    held.release()
    for thread in threads:
        thread.join(15)
    assert sorted(status for status, _ in results) == [200] * 4
    assert "limiting connections" in front.log_text()


def _lru(root: Path) -> str:
    """Two workers serving ``root``, each key allowed one request a minute in a zone of
    4 KiB (59 keys)."""
    zone = limit_req_zone("$http_x_key", "1r/m", "4k", name="tiny")
    return limited_site(root, '{ zone = "tiny" }', zones=zone, workers=2)


def _get(front: Front, key: str) -> int:
    return try_get(front.port, "/a", headers={"X-Key": key})[0]


def test_full_zone_drops_the_least_recently_used(launch: Launcher) -> None:
    root = launch.workdir / "root"
    root.mkdir()
    (root / "a").write_text("a")
    front = launch.front(_lru(root))
    slots = 4096 // 68  # 64 bytes an entry, 4 a bucket
    assert _get(front, "k0") == 200
    assert _get(front, "k0") == 503  # one a minute
    for n in range(1, slots):
        assert _get(front, f"k{n}") == 200  # the zone is now full
    assert _get(front, "k0") == 503  # k0 is used again: the most recent now
    assert _get(front, "new") == 200  # makes room: k1, the least recently used, goes
    assert _get(front, "k1") == 200  # forgotten: a new key again (k2 went for it)
    assert _get(front, "k0") == 503  # still remembered


def test_zone_survives_a_reload(launch: Launcher) -> None:
    root = launch.workdir / "root"
    root.mkdir()
    (root / "a").write_text("a")
    front = launch.front(_lru(root))
    assert _get(front, "kept") == 200
    assert _get(front, "kept") == 503
    before = ready_workers(front.pid, 2)
    os.kill(front.pid, signal.SIGHUP)
    assert wait_for(lambda: not before & child_pids(front.pid), 20), front.log_text()
    ready_workers(front.pid, 2)
    assert _get(front, "kept") == 503


def test_without_burst_a_key_passes_again_after_one_interval(launch: Launcher) -> None:
    root = launch.workdir / "root"
    root.mkdir()
    (root / "a").write_text("a")
    front = launch.front(limited_site(root))
    assert sorted(burst(front.port, 2, "/a").statuses) == [200, 503]
    # nginx adds the request before clamping the leaked excess at zero: 0.1 s later the
    # key passes again (and a key refused meanwhile still does, once 0.1 s passed)
    assert wait_for(lambda: try_get(front.port, "/a")[0] == 200, 2)


def test_refusals_in_the_stats_and_metrics(launch: Launcher) -> None:
    root = launch.workdir / "stats-root"
    (root / "warm").mkdir(parents=True)
    (root / "index.html").write_text("hello")
    (root / "warm" / "w").write_text("warm")
    config = launch.workdir / "stats.toml"
    port, metrics_port = free_port(), free_port()
    stats_path = launch.workdir / "stats.sock"
    limit = '{ zone = "perip", burst = 5, nodelay = true }'
    config.write_text(
        limited_site(
            root, limit, zones=PER_ROUND, unlimited="/warm/", workers=2, listen=f"127.0.0.1:{port}"
        )
    )
    code = (
        "import sys; from gantry.config.front import load_front_config; "
        "from gantry.front.run import run_front; "
        f"sys.exit(run_front(load_front_config({str(config)!r}), stats={str(stats_path)!r}, "
        f"metrics='127.0.0.1:{metrics_port}'))"
    )
    launch.program([sys.executable, "-c", code], ("127.0.0.1", port), "stats-front")
    statuses = burst(port, 20, "/index.html").statuses
    refused = statuses.count(503)
    assert refused >= 14, statuses

    def document() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(stats_path))
            return json.loads(read_until_closed(sock, 5).data)  # type: ignore[no-any-return]

    assert wait_for(lambda: accepts(stats_path), 10)
    zone = document()["limits"]["limit_req"]["perip"]
    assert zone["rejected"] == refused and zone["keys"] == 1
    status, body = try_get(metrics_port, "/metrics")
    assert status == 200
    assert f'gantry_limit_req_rejected_total{{zone="perip"}} {refused}' in body.decode()
