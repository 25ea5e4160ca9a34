"""A zone's entries on disk (front.cache.store): atomic, checked, bounded, shared."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache.policy import Fields, Freshness
from gantry.front.cache.store import CacheStore, Entry

NOW = 1000.0


def zone(path: Path, **changes: object) -> CacheZone:
    return CacheZone(name="z", path=str(path), **changes)  # type: ignore[arg-type]


def entry(
    key: str = "k", vary: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = ()
) -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=1.0, response_time=2.0, initial_age=0.0, freshness=Freshness(60.0),
        vary=vary, vary_values=values, tags=("t1",),
    )  # fmt: skip


def put(store: CacheStore, stored: Entry, body: bytes) -> Entry:
    writer = store.writer(stored)
    assert writer.write(body)
    done = writer.commit()
    assert done is not None
    return done


def test_written_entry_is_read_back_by_another_worker(tmp_path: Path) -> None:
    put(CacheStore(zone(tmp_path)), entry(), b"hello")
    other = CacheStore(zone(tmp_path))  # another worker: nothing in its memory
    found = other.lookup("k", [], NOW)
    assert found is not None
    assert (found.status, found.body, found.fields, found.tags) == (
        200, b"hello", [(b"Content-Type", b"text/plain")], ("t1",),
    )  # fmt: skip
    assert other.lookup("other", [], NOW) is None


def test_an_entry_being_written_is_not_seen(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    writer = store.writer(entry())
    writer.write(b"part")
    assert store.lookup("k", [], NOW) is None
    writer.abort()
    assert os.listdir(store.tmp) == [] and not list(tmp_path.rglob(".t*"))  # no temporaries


def _file(store: CacheStore) -> Path:
    return Path(store.path_of(store.digest("k")))


def test_truncated_corrupt_or_older_entries_are_misses(tmp_path: Path) -> None:
    for damage in ("truncate", "flip body", "flip head", "version"):
        store = CacheStore(zone(tmp_path))
        put(store, entry(), b"x" * 1000)
        path = _file(store)
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[:-20]
        elif damage == "flip body":
            data[-100] ^= 1
        elif damage == "flip head":
            data[12] ^= 1
        else:
            data[3] = 0
        path.write_bytes(bytes(data))
        assert CacheStore(zone(tmp_path)).lookup("k", [], NOW) is None, damage
        assert not path.exists(), damage  # removed: the next one is a miss too


def test_a_large_corrupt_body_is_a_miss(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    put(store, entry(), b"y" * (1024 * 1024))
    path = _file(store)
    data = bytearray(path.read_bytes())
    data[500_000] ^= 1
    path.write_bytes(bytes(data))
    assert CacheStore(zone(tmp_path)).lookup("k", [], NOW) is None


def test_the_memory_tier_sees_a_removal_by_another_worker(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
    put(one, entry(), b"v1")
    assert one.lookup("k", [], NOW) is not None
    assert two.remove("k") == 1
    assert one.lookup("k", [], NOW) is None
    put(two, entry(), b"v2")
    found = one.lookup("k", [], NOW)
    assert found is not None and found.body == b"v2"


def test_variants_by_secondary_key(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    gzip: Fields = [(b"accept-encoding", b"gzip")]
    put(store, entry(vary=(b"accept-encoding",), values=(b"gzip",)), b"zipped")
    put(store, entry(vary=(b"accept-encoding",), values=(None,)), b"plain")
    found = store.lookup("k", gzip, NOW)
    assert found is not None and found.body == b"zipped"
    found = store.lookup("k", [], NOW)
    assert found is not None and found.body == b"plain"
    assert store.lookup("k", [(b"accept-encoding", b"br")], NOW) is None
    assert store.remove("k") == 2


def test_too_large_objects_are_not_stored(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path, max_object_size=10))
    writer = store.writer(entry())
    assert writer.write(b"12345")
    assert not writer.write(b"678901")
    assert writer.commit() is None
    assert store.lookup("k", [], NOW) is None


def test_sweep_drops_inactive_and_least_recently_used(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path, max_size=3000, inactive=100.0))  # room for two, not three
    for key in ("a", "b", "c", "old"):
        put(store, entry(key), b"z" * 1000)
    now = time.time()
    os.utime(store.path_of(store.digest("old")), (now - 1000, now - 1000))
    os.utime(store.path_of(store.digest("a")), (now - 50, now - 50))
    entries, size = store.sweep()
    assert entries == 2 and size <= 3000
    assert store.lookup("a", [], NOW) is None and store.lookup("old", [], NOW) is None
    assert store.lookup("b", [], NOW) is not None and store.lookup("c", [], NOW) is not None


def test_head_update_keeps_the_body(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    stored = put(store, entry(), b"body")
    updated = store.update_head(stored, [(b"X-New", b"1")], {"response_time": 9.0})
    found = CacheStore(zone(tmp_path)).lookup("k", [], NOW)
    assert found is not None and updated.response_time == 9.0
    assert (found.body, found.fields, found.response_time) == (b"body", [(b"X-New", b"1")], 9.0)


def test_fill_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
    lock = one.try_lock("k")
    assert lock is not None
    assert two.try_lock("k") is None
    lock.release()
    again = two.try_lock("k")
    assert again is not None
    again.release()


def test_a_large_entry_replaced_by_a_corrupt_one_is_a_miss(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    put(store, entry(), b"y" * (1024 * 1024))
    assert store.lookup("k", [], NOW) is not None  # checked once, remembered
    assert store.lookup("k", [], NOW) is not None
    path = _file(store)
    data = bytearray(path.read_bytes())
    data[500_000] ^= 1
    replacement = path.with_name("new")
    replacement.write_bytes(bytes(data))
    os.rename(replacement, path)  # a new file (inode) in its place
    assert store.lookup("k", [], NOW) is None
