"""Two cuts in a miss's cost (issue 15's miss bench) and what they must not change: a
miss's new entry is kept in the memory tier from its second use on, not when it is
stored; and a lookup looks on disk for an entry's own file only where the zone's index
holds a hint for it, which every file written in place leaves (so a worker finds what
another wrote, and the zone's counts stay right)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache.counters import ADDED_BYTES, ADDED_ENTRIES, CacheCounters
from gantry.front.cache.packs import FILE_HINT, packed_usage, slot_tag
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import SWEEP_SLICE, CacheStore, Entry

NOW = 1000.0


def zone(path: Path, **changes: object) -> CacheZone:
    return CacheZone(name="z", path=str(path), **changes)  # type: ignore[arg-type]


def entry(key: str, vary: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = ()) -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=1.0, response_time=2.0, initial_age=0.0, freshness=Freshness(60.0),
        vary=vary, vary_values=values,
    )  # fmt: skip


def counted(path: Path) -> tuple[CacheStore, memoryview]:
    """A store whose additions to the zone's counts can be read."""
    store = CacheStore(zone(path))
    counters = CacheCounters([store.zone], 1)
    store.usage = counters.worker(0, "z")
    return store, store.usage


def test_a_batched_miss_is_kept_in_memory_from_its_second_use(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    loop = asyncio.new_event_loop()
    try:
        writer = store.writer(entry("k"))
        assert writer.write(b"body")
        assert writer.commit_batched(None, loop)
        assert store.lookup("k", [], NOW) is not None  # pending: answered from memory
        store.flush_batch()
    finally:
        loop.close()
    assert "k" not in store.hot_keys and store.hot_bytes == 0  # stored, not kept
    found = store.lookup("k", [], NOW)  # its second use: read back from the pack
    assert found is not None and found.body == b"body"
    assert "k" in store.hot_keys
    assert store.lookup("k", [], NOW) is found  # from memory now


def test_a_miss_committed_at_once_is_not_kept_unless_asked(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    for key, packed in (("packed", True), ("file", False)):
        writer = store.writer(entry(key))
        assert writer.write(b"body of " + key.encode())
        done = writer.commit_packed() if packed else writer.commit(remember=False)
        assert done is not None
        assert key not in store.hot_keys
        assert store.lookup(key, [], NOW) is not None
        assert key in store.hot_keys
    writer = store.writer(entry("remembered"))
    assert writer.write(b"x") and writer.commit() is not None  # a 304's rewrite: kept
    assert "remembered" in store.hot_keys


def test_a_file_is_found_through_its_hint_only(tmp_path: Path) -> None:
    one = CacheStore(zone(tmp_path))
    writer = one.writer(entry("k"))
    assert writer.write(b"in a file") and writer.commit() is not None
    tag = slot_tag(one.digest("k"))
    found = one.index.find(tag)
    assert found is not None and found[1] == FILE_HINT
    other = CacheStore(zone(tmp_path))
    hit = other.lookup("k", [], NOW)
    assert hit is not None and hit.body == b"in a file"
    # without its hint the file is not looked for: a miss (never another's bytes)
    assert other.index.clear(found[0], tag, FILE_HINT, 0)
    third = CacheStore(zone(tmp_path))
    assert third.lookup("k", [], NOW) is None
    assert Path(one.path_of(one.digest("k"))).exists()  # still there, for the sweep


def test_a_varying_entry_is_found_by_another_worker(tmp_path: Path) -> None:
    one = CacheStore(zone(tmp_path))
    request = [(b"Accept-Language", b"fr")]
    writer = one.writer(entry("v", (b"accept-language",), (b"fr",)))
    assert writer.write(b"bonjour") and not writer.packable()
    assert writer.commit(remember=False) is not None
    other = CacheStore(zone(tmp_path))
    found = other.lookup("v", request, NOW)
    assert found is not None and found.body == b"bonjour"
    assert other.lookup("v", [(b"Accept-Language", b"de")], NOW) is None


def test_a_removed_files_hint_is_a_miss(tmp_path: Path) -> None:
    one = CacheStore(zone(tmp_path))
    writer = one.writer(entry("k"))
    assert writer.write(b"body") and writer.commit() is not None
    Path(one.path_of(one.digest("k"))).unlink()  # as the sweep does
    assert CacheStore(zone(tmp_path)).lookup("k", [], NOW) is None


def test_the_counts_stay_right_as_an_entry_moves_between_file_and_pack(tmp_path: Path) -> None:
    store, usage = counted(tmp_path)
    writer = store.writer(entry("k"))
    assert writer.write(b"first") and writer.commit(remember=False) is not None
    assert usage[ADDED_ENTRIES] == 1
    # the same key answered anew, packed: the file and its hint go, one entry stays
    assert store.lookup("k", [], NOW) is not None
    writer = store.writer(entry("k"))
    assert writer.write(b"second") and writer.commit_packed() is not None
    assert usage[ADDED_ENTRIES] == 1
    assert not Path(store.path_of(store.digest("k"))).exists()
    record = store.index.find(slot_tag(store.digest("k")))
    assert record is not None and record[1] != FILE_HINT
    assert usage[ADDED_BYTES] == record[3]
    # and back to a file (a large answer, say): still one
    writer = store.writer(entry("k"))
    assert writer.write(b"third") and writer.commit(remember=False) is not None
    assert usage[ADDED_ENTRIES] == 1
    assert packed_usage(str(tmp_path)) == (0, 0)  # a hint is not a packed entry
    assert store.lookup("k", [], NOW + 1) is not None
    assert store.remove("k") == 1
    assert usage[ADDED_ENTRIES] == 0 and usage[ADDED_BYTES] == 0


def test_the_sweep_keeps_hints_and_counts_files_once(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    writer = store.writer(entry("file"))
    assert writer.write(b"a") and writer.commit() is not None
    writer = store.writer(entry("packed"))
    assert writer.write(b"b") and writer.commit_packed() is not None
    entries, _ = store.sweep()
    assert entries == 2
    found = store.index.find(slot_tag(store.digest("file")))
    assert found is not None and found[1] == FILE_HINT  # not taken for a gone pack
    assert CacheStore(zone(tmp_path)).lookup("file", [], NOW) is not None


def test_the_sweep_goes_a_slice_of_the_index_at_a_time(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path, max_size=2 * 1024**3))
    assert store.index.slots >= 8 * SWEEP_SLICE  # 262,144 slots for 2 GiB
    for n in range(50):
        writer = store.writer(entry(f"k{n}"))
        assert writer.write(b"x" * 100) and writer.commit_packed() is not None
    other = CacheStore(zone(tmp_path, max_size=2 * 1024**3))
    steps = store.sweep_steps()
    pieces = 0
    while (step := next(steps)) is None:
        pieces += 1
        if pieces == 1:
            # under way: the zone's sweep lock is held between pieces
            assert other.sweep() == (-1, -1)
    assert pieces >= store.index.slots // SWEEP_SLICE
    assert step[0] == 50
    steps.close()
    assert other.sweep()[0] == 50  # the lock went with the last piece
    # a sweep given up midway lets its lock go too
    steps = store.sweep_steps()
    assert next(steps) is None
    steps.close()
    assert other.sweep()[0] == 50


def test_the_sweep_in_pieces_drops_what_the_whole_one_did(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path, max_size=128 * 1024, inactive=3600.0))
    for n in range(400):  # about 1 KiB each, several packs: more than max_size
        writer = store.writer(entry(f"k{n}"))
        assert writer.write(bytes(900)) and writer.commit_packed() is not None
    store.packer.close()  # the next record starts a pack anew
    before = len(list((tmp_path / "packs").glob("*.pack")))
    results = [step for step in store.sweep_steps() if step is not None]
    entries, size = results[-1]
    assert size <= 128 * 1024 and 0 < entries < 400
    assert len(list((tmp_path / "packs").glob("*.pack"))) < before
    # every slot left points into a pack that is there
    assert packed_usage(str(tmp_path)) == (entries, size)
    assert sum(1 for _ in store.index.scan()) == entries


def test_an_index_slot_goes_to_the_same_key_then_a_free_one_then_the_oldest(
    tmp_path: Path,
) -> None:
    index = CacheStore(zone(tmp_path)).index
    buckets = index.buckets
    tags = [1 + 2 * buckets * n for n in range(5)]  # odd, all in bucket 1
    assert index.put(tags[0], 7, 0, 10, NOW) == (0, 0)
    assert index.put(tags[1], 7, 10, 20, NOW - 5) == (0, 0)
    assert index.put(tags[0], 7, 30, 11, NOW) == (1, 10)  # its older version
    assert index.put(tags[2], 7, 41, 30, NOW) == (0, 0)
    assert index.put(tags[3], 7, 71, 40, NOW) == (0, 0)
    assert index.put(tags[4], 7, 111, 50, NOW) == (2, 20)  # tags[1], the least recent
    assert index.find(tags[1]) is None
    found = index.find(tags[4])
    assert found is not None and found[1:] == (7, 111, 50)
    slot = found[0]
    assert index.clear(slot, tags[4], 7, 111)
    assert index.put(tags[1], 7, 161, 60, NOW) == (0, 0)  # the slot freed
    assert index.find(tags[1]) == (slot, 7, 161, 60)
