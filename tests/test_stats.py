"""Monitoring a running master: stats JSON read by the real uwsgitop, Prometheus, gantry top."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.process import REPO, GantryServer, child_pids, free_port, http_get, wait_for
from tests.process import ready_workers as _ready_workers
from tests.support_process import uwsgitop_screen


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GantryServer, int, int]]:
    """A master with 2 workers, a stats socket and a metrics endpoint, after 40 requests."""
    tmp = tmp_path_factory.mktemp("stats")
    stats_port, metrics_port = free_port(), free_port()
    server = GantryServer(
        "tests.apps_process:app",
        "--workers", "2",
        "--stats", f"127.0.0.1:{stats_port}",
        "--metrics", f"127.0.0.1:{metrics_port}",
        log_path=tmp / "gantry.log",
    )  # fmt: skip
    server.start()
    try:
        _ready_workers(server.pid, 2)
        for _ in range(40):
            http_get(server.port, "/pid", headers={"Connection": "close"})

        # counters reach shared memory after each batch, RSS once a second: wait for both
        def published() -> bool:
            workers = _stats(stats_port)["workers"]
            counted = sum(w["requests"] for w in workers) >= 40
            return counted and all(w["rss"] > 1024 * 1024 for w in workers)

        assert wait_for(published, 5), _stats(stats_port)
        yield server, stats_port, metrics_port
    finally:
        server.stop()


def _stats(port: int) -> dict:
    from gantry.stats.top import fetch

    return fetch(f"127.0.0.1:{port}")


def test_stats_document_in_uwsgi_format(monitored: tuple[GantryServer, int, int]) -> None:
    server, stats_port, _ = monitored
    doc = _stats(stats_port)
    assert doc["pid"] == server.pid
    assert {w["pid"] for w in doc["workers"]} == child_pids(server.pid)
    assert sum(w["requests"] for w in doc["workers"]) >= 40
    for worker in doc["workers"]:
        for key in (
            "id",
            "requests",
            "exceptions",
            "status",
            "rss",
            "vsz",
            "running_time",
            "last_spawn",
            "respawn_count",
            "tx",
            "avg_rt",
            "harakiri_count",
            "cores",
        ):
            assert key in worker, key
        assert worker["rss"] > 1024 * 1024
        assert worker["status"] in ("idle", "busy")


def test_current_request_is_shown(monitored: tuple[GantryServer, int, int]) -> None:
    server, stats_port, _ = monitored
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/sleep?1.5")
    busy: list[dict] = []

    def shown() -> bool:  # the request is under way and has run a while
        busy[:] = [w for w in _stats(stats_port)["workers"] if w["status"] == "busy"]
        return bool(busy) and busy[0]["current_request_seconds"] >= 0.3

    wait_for(shown, 1.2)
    assert conn.getresponse().read() == b"slept"
    assert len(busy) == 1 and busy[0]["current_request"] == "GET /sleep?1.5"
    assert busy[0]["current_request_seconds"] >= 0.3


def test_gantry_top_once(monitored: tuple[GantryServer, int, int]) -> None:
    server, stats_port, _ = monitored
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "top", "--once", f"127.0.0.1:{stats_port}"],
        cwd=REPO, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"master pid {server.pid}" in result.stdout
    for pid in child_pids(server.pid):
        assert str(pid) in result.stdout


def test_gantry_top_reports_an_unreachable_socket() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "top", "--once", f"127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 1 and "cannot read stats" in result.stderr


def test_prometheus_text_parses(monitored: tuple[GantryServer, int, int]) -> None:
    _, _, metrics_port = monitored
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    requests = families["gantry_worker_requests"]  # the parser drops _total from counters
    assert requests.type == "counter"
    assert sum(s.value for s in requests.samples if s.name.endswith("_total")) >= 40
    assert families["gantry_workers"].samples[0].value == 2
    classes = {s.labels["class"] for s in families["gantry_worker_responses"].samples}
    assert classes == {"2xx", "3xx", "4xx", "5xx"}


def test_real_uwsgitop_shows_the_workers(monitored: tuple[GantryServer, int, int]) -> None:
    """uwsgitop is a curses program: run it on a pseudo-terminal for two refreshes."""
    server, stats_port, _ = monitored
    text = uwsgitop_screen(stats_port, 3.0)
    assert "Traceback" not in text and "unable to get" not in text, text[-2000:]
    assert "WID" in text
    for worker_pid in child_pids(server.pid):
        assert str(worker_pid) in text
