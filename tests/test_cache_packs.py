"""Small entries stored at a miss go to the worker's pack and the zone's index, not to a
file each (issue 15's miss bench): found by every worker, checked, purged, swept."""

from __future__ import annotations

import http.client
import os
import sys
import time
from pathlib import Path
from types import FrameType

import pytest

from gantry.config.front_model import CacheZone
from gantry.front.cache.packs import PackIndex, pack_path
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import CacheStore, Entry
from tests.process import Launcher
from tests.support_cache import Origin, cache_config

NOW = 1000.0


def zone(path: Path, **changes: object) -> CacheZone:
    return CacheZone(name="z", path=str(path), **changes)  # type: ignore[arg-type]


def entry(key: str = "k", tags: tuple[str, ...] = ("t1",)) -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=1.0, response_time=2.0, initial_age=0.0, freshness=Freshness(60.0),
        tags=tags,
    )  # fmt: skip


def pack(store: CacheStore, stored: Entry, body: bytes) -> Entry:
    writer = store.writer(stored)
    assert writer.write(body) and writer.packable()
    done = writer.commit_packed()
    assert done is not None
    return done


def entry_files(root: Path) -> list[Path]:
    return [p for p in root.glob("??/*") if p.is_file()]


def packs(root: Path) -> list[Path]:
    return sorted(root.glob("packs/*.pack"))


def test_a_packed_entry_makes_no_file_and_is_found_by_another_worker(tmp_path: Path) -> None:
    one = CacheStore(zone(tmp_path))
    for n in range(50):
        pack(one, entry(f"k{n}"), b"body %d" % n)
    assert entry_files(tmp_path) == [] and len(packs(tmp_path)) == 1
    two = CacheStore(zone(tmp_path))  # another worker: nothing in its memory
    for n in range(50):
        found = two.lookup(f"k{n}", [], NOW)
        assert found is not None and found.body == b"body %d" % n
        assert found.fields == [(b"Content-Type", b"text/plain")] and found.tags == ("t1",)
    assert two.lookup("k50", [], NOW) is None


def test_a_new_version_or_a_removal_by_another_worker_is_seen(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
    pack(one, entry(), b"v1")
    assert one.lookup("k", [], NOW) is not None and two.lookup("k", [], NOW) is not None
    pack(two, entry(), b"v2")
    for store in (one, two):
        found = store.lookup("k", [], NOW)
        assert found is not None and found.body == b"v2"
    assert two.mark_stale("k") == 1
    found = one.lookup("k", [], NOW)
    assert found is not None and found.purged and found.body == b"v2"
    pack(one, entry(), b"v3")  # a packed version replaces the file the soft purge made
    assert entry_files(tmp_path) == []
    found = two.lookup("k", [], NOW)
    assert found is not None and found.body == b"v3" and not found.purged
    assert two.remove("k") == 1
    assert one.lookup("k", [], NOW) is None and two.lookup("k", [], NOW) is None


def test_a_corrupt_or_truncated_record_is_a_miss(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    pack(store, entry("a"), b"a" * 500)
    pack(store, entry("b"), b"b" * 500)
    (path,) = packs(tmp_path)
    data = bytearray(path.read_bytes())
    data[data.index(b"a" * 500) + 10] ^= 1
    path.write_bytes(bytes(data))
    other = CacheStore(zone(tmp_path))
    assert other.lookup("a", [], NOW) is None
    found = other.lookup("b", [], NOW)
    assert found is not None and found.body == b"b" * 500
    assert CacheStore(zone(tmp_path)).index.find(int(other.digest("a")[:16], 16) | 1) is None
    path.write_bytes(bytes(data[: len(data) // 2]))  # b's record cut short
    assert CacheStore(zone(tmp_path)).lookup("b", [], NOW) is None


def test_purge_by_prefix_tag_and_soft(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
    for key, tags in (("/blog/1", ("news",)), ("/blog/2", ()), ("/shop/1", ("news",))):
        pack(one, entry(key, tags), key.encode())
        assert one.lookup(key, [], NOW) is not None  # in one's memory tier too
    assert two.purge(key_prefix="/blog/") == 2
    assert one.lookup("/blog/1", [], NOW) is None and one.lookup("/blog/2", [], NOW) is None
    assert two.purge(tag="news", soft=True) == 1
    found = one.lookup("/shop/1", [], NOW)
    assert found is not None and found.purged
    assert two.purge(tag="news") == 1
    assert one.lookup("/shop/1", [], NOW) is None


def test_the_sweep_drops_the_oldest_packs_past_max_size_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    store = CacheStore(zone(tmp_path, max_size=1024 * 1024))
    store.packer.limit = 20_000  # small packs, so that some go and some stay
    for n in range(60):
        pack(store, entry(f"k{n}"), b"z" * 1000)
    assert len(packs(tmp_path)) > 2
    # the order they were written in, one second apart (an mtime's clock is coarse: packs
    # written within a few milliseconds may have the same)
    first_key = {}
    for n in range(60):
        found = store.index.find(int(store.digest(f"k{n}")[:16], 16) | 1)
        assert found is not None
        first_key.setdefault(found[1], n)
    now = time.time()
    when: dict[int, float] = {}
    for rank, written in enumerate(sorted(first_key, key=first_key.__getitem__)):
        when[written] = now - 100 + rank
        os.utime(pack_path(str(tmp_path), written), (when[written], when[written]))
    for n in range(60):  # and each entry last used then
        tag = int(store.digest(f"k{n}")[:16], 16) | 1
        found = store.index.find(tag)
        assert found is not None
        store.index.touch(tag, when[found[1]])
    entries, size = store.sweep()
    assert entries == 60 and size > 60_000
    store.zone = zone(tmp_path, max_size=30_000)
    entries, size = store.sweep()
    assert 0 < entries < 60 and size <= 30_000
    other = CacheStore(zone(tmp_path))
    kept = [n for n in range(60) if other.lookup(f"k{n}", [], NOW) is not None]
    assert len(kept) == entries and kept == list(range(60 - entries, 60))  # the newest
    assert store.lookup("k0", [], NOW) is None  # its memory tier was told
    index = PackIndex(str(tmp_path), 0)
    assert all(os.path.exists(pack_path(str(tmp_path), p)) for _, _, p, *_ in index.scan())
    index.close()


def test_a_pack_unused_for_inactive_goes(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path, inactive=100.0))
    pack(store, entry("old"), b"o")
    store.packer.close()
    store.packer.fd = -1
    old = time.time() - 1000
    store.index.touch(int(store.digest("old")[:16], 16) | 1, old)
    (path,) = packs(tmp_path)
    os.utime(path, (old, old))
    pack(store, entry("new"), b"n")  # in a pack of its own
    assert store.sweep()[0] == 1
    assert not path.exists() and len(packs(tmp_path)) == 1
    assert CacheStore(zone(tmp_path)).lookup("old", [], NOW) is None


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("cache-status") or ""
    finally:
        conn.close()


def test_misses_of_a_front_make_no_file_each_and_hit_after_a_restart(
    launch: Launcher, short_tmp: Path
) -> None:
    cache = short_tmp / "c"
    with Origin() as origin:
        for i in range(30):
            origin.answers[f"/m{i}"] = (200, [("Cache-Control", "max-age=600")], b"m" * 700)
        config = cache_config(origin.port, str(cache), workers=2)
        first = launch.front(config, name="first")
        for i in range(30):
            assert get(first.port, f"/m{i}") == (200, "gantry; fwd=uri-miss; stored")
        assert entry_files(cache) == [] and packs(cache)
        first.stop()
        second = launch.front(config, name="second")
        for i in range(30):
            status, cache_status = get(second.port, f"/m{i}")
            assert status == 200 and cache_status.startswith("gantry; hit"), cache_status
        assert all(origin.count(f"/m{i}") == 1 for i in range(30))


def test_a_pack_removed_under_its_writer_is_not_written_on(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    pack(store, entry("a"), b"a")
    (first,) = packs(tmp_path)
    first.unlink()  # another worker's sweep: no entry of it was used for a while
    store.packer.written -= 60.0  # and this worker wrote none for as long
    pack(store, entry("b"), b"b")
    (second,) = packs(tmp_path)
    assert second != first
    found = CacheStore(zone(tmp_path)).lookup("b", [], NOW)
    assert found is not None and found.body == b"b"


def test_a_miss_raises_nothing_inside_the_store(tmp_path: Path) -> None:
    """A miss asks for a file that is not there: without an exception (making one costs
    its message, strerror, which took most of a miss's time in a worker)."""
    import gantry.front.cache.store as store_module

    if not store_module.__file__ or not store_module.__file__.endswith(".py"):
        pytest.skip("compiled: exceptions inside are not traced")
    store = CacheStore(zone(tmp_path))
    pack(store, entry("there"), b"x")
    raised: list[str] = []

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        if event == "exception" and frame.f_code.co_filename == store_module.__file__:
            raised.append(f"{frame.f_code.co_name}: {arg!r}")
        return tracer

    sys.settrace(tracer)
    try:
        for n in range(20):
            assert store.lookup(f"missing{n}", [], NOW) is None
            writer = store.writer(entry(f"missing{n}"))
            assert writer.write(b"v") and writer.commit_packed() is not None
    finally:
        sys.settrace(None)
    assert raised == []
