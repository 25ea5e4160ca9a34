"""A cache zone's figures in shared memory (front.cache.counters), without sockets: summed
over worker slots, entries and bytes from a sweep's count plus what was added since, and
a child process's counts seen by its parent (as a master sees its workers')."""

from __future__ import annotations

import os

from gantry.config.front_model import CacheZone
from gantry.front.cache.counters import (
    ADDED_BYTES,
    ADDED_ENTRIES,
    HIT,
    MISS,
    STALE,
    CacheCounters,
)
from gantry.stats.prometheus import render_metric_rows


def zones() -> list[CacheZone]:
    return [CacheZone(name="pages", path="/x", max_size=1000), CacheZone(name="api", path="/y")]


def test_requests_are_summed_over_the_slots_per_zone() -> None:
    counters = CacheCounters(zones(), 4)
    counters.worker(0, "pages")[HIT] += 3
    counters.worker(3, "pages")[HIT] += 2
    counters.worker(3, "pages")[MISS] += 1
    counters.worker(1, "api")[STALE] += 7
    pages, api = counters.report()
    assert (pages["name"], pages["max_size"]) == ("pages", 1000)
    assert pages["requests"] == {
        "hit": 5, "miss": 1, "expired": 0, "stale": 0, "updating": 0, "revalidated": 0,
        "bypass": 0,
    }  # fmt: skip
    assert api["requests"]["stale"] == 7 and api["requests"]["hit"] == 0


def test_entries_are_the_sweeps_count_plus_what_was_added_since() -> None:
    counters = CacheCounters(zones(), 2)
    first = counters.worker(0, "pages")
    first[ADDED_ENTRIES] += 4
    first[ADDED_BYTES] += 400
    base = counters.sweep_begins("pages")
    assert base == (4, 400)
    counters.swept("pages", 10, 2000, base)  # the walk found 10 (the 4 among them)
    second = counters.worker(1, "pages")
    second[ADDED_ENTRIES] += 2
    second[ADDED_BYTES] += 150
    first[ADDED_ENTRIES] -= 1  # a removal
    first[ADDED_BYTES] -= 100
    pages = counters.report()[0]
    assert (pages["entries"], pages["bytes"]) == (11, 2050)
    assert pages["swept"] > 0


def test_a_child_counts_into_memory_its_parent_reads() -> None:
    counters = CacheCounters(zones(), 2)
    pid = os.fork()
    if pid == 0:  # the worker
        counters.worker(1, "api")[HIT] += 41
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counters.report()[1]["requests"]["hit"] == 41


def test_metrics_of_the_zones() -> None:
    counters = CacheCounters(zones(), 1)
    counters.worker(0, "pages")[HIT] += 2
    text = render_metric_rows([], 0.0, counters.report()).decode()
    assert "# TYPE gantry_cache_requests_total counter\n" in text
    assert 'gantry_cache_requests_total{zone="pages",status="hit"} 2\n' in text
    assert 'gantry_cache_requests_total{zone="api",status="miss"} 0\n' in text
    assert 'gantry_cache_entries{zone="pages"} 0\n' in text
    assert 'gantry_cache_max_bytes{zone="pages"} 1000\n' in text
