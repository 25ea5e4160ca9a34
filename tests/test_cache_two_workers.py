"""A 2-worker front's cache: an answer the client has whole is already stored, so its
next request, on a new connection that the other worker may take, is a hit."""

from __future__ import annotations

import http.client
from pathlib import Path

from tests.process import Launcher
from tests.support_cache import Origin, cache_config


def cache_status(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.getheader("cache-status") or ""
    finally:
        conn.close()


def test_the_next_request_after_a_miss_hits_on_either_worker(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        for i in range(40):
            # the origin writes its head and body apart: the front relays them as they come
            origin.answers[f"/n{i}"] = (200, [("Cache-Control", "max-age=300")], b"n" * (i + 1))
        front = launch.front(cache_config(origin.port, str(short_tmp / "c"), workers=2))
        missed = []
        for i in range(40):
            assert "fwd=uri-miss" in cache_status(front.port, f"/n{i}")
            statuses = [cache_status(front.port, f"/n{i}") for _ in range(3)]
            if not all("hit" in status for status in statuses):
                missed.append((i, statuses))
        assert not missed
        assert all(origin.count(f"/n{i}") == 1 for i in range(40))
