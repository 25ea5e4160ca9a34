"""A cache zone's tables in C (front/cache/_index.c, built with the compiled modules):
the pack index's find and put, the change marks' and invalidation times' reads and an
entry's record give what the Python code they stand in for gives, byte for byte in the
shared maps. Without the build (GANTRY_PURE=1) there is nothing to compare: skipped."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest

from gantry.front.cache.invalidations import Invalidations
from gantry.front.cache.packs import INDEX_HELPER, WAYS, PackIndex
from gantry.front.cache.store import Generation, _file_bytes

pytestmark = pytest.mark.skipif(
    INDEX_HELPER is None, reason="the C helpers are not built (GANTRY_PURE=1 or no build)"
)


def index(path: Path, python_only: bool) -> PackIndex:
    path.mkdir()
    made = PackIndex(str(path), 0)
    if python_only:
        made.view.close()
        made.view = None
    return made


def test_the_index_finds_and_puts_as_the_python_code(tmp_path: Path) -> None:
    helped, python = index(tmp_path / "c", False), index(tmp_path / "p", True)
    assert helped.view is not None and helped.slots == python.slots
    chooser = random.Random(15)
    # few buckets, more keys than their ways: displaced versions and evictions by age
    # (tag % buckets picks the bucket: 6 tags for each of 5 buckets, with their ways 4)
    tags = [
        b + helped.buckets * (2 * chooser.randrange(1 << 40) + 1)
        for b in range(1, 10, 2)
        for _ in range(WAYS + 2)
    ]
    tags += [(1 << 64) - 1, (1 << 63) + 1]  # the tag's whole 64 bits
    kinds: set[int] = set()
    for step in range(6000):
        tag = chooser.choice(tags)
        if chooser.random() < 0.5:
            assert helped.find(tag) == python.find(tag), step
            continue
        pack = chooser.choice((1, 3, (1 << 64) - 1))
        offset = chooser.randrange(1 << 40)
        length = chooser.choice((0, 1, 1100, (1 << 32) - 1))
        now = float(chooser.randrange(1_000, 1_050)) + chooser.random()
        got = helped.put(tag, pack, offset, length, now)
        assert got == python.put(tag, pack, offset, length, now), step
        kinds.add(got[0])
    assert kinds == {0, 1, 2}  # a free slot, the same key's, another key's evicted
    assert helped.map[:] == python.map[:]
    with pytest.raises(OverflowError):
        helped.put(tags[0], 1, 0, 1 << 32, 1.0)  # past a slot's length field
    for made in (helped, python):
        made.close()


def test_a_record_is_the_entry_files_bytes() -> None:
    chooser = random.Random(7)
    for size in (0, 1, 7, 300, 70_000):
        head = chooser.randbytes(size)
        body = chooser.randbytes(chooser.choice((0, 1, 1024, 100_000)))
        crc = zlib.crc32(body)
        made = INDEX_HELPER.record(head, body, len(body), crc)
        assert made == _file_bytes(head, [body], len(body), crc)
    with pytest.raises(TypeError):
        INDEX_HELPER.record("not bytes", b"", 0, 0)


def test_the_change_marks_and_invalidation_times_read_as_struct_does(tmp_path: Path) -> None:
    generation = Generation(str(tmp_path))
    assert generation.words is not None
    for _ in range(20):
        generation.bump()
        generation.bump_purges()
        assert generation.value() == struct.unpack_from("=Q", generation.map, 0)[0]
        assert generation.purges() == struct.unpack_from("=Q", generation.map, 8)[0]
    times = Invalidations(str(tmp_path))
    assert times.words is not None
    assert times.horizon() == 1.0  # never: the margin past zero
    times.mark(12345, 1_700_000_000.25)
    assert times.horizon() == 1_700_000_001.25
    assert times.since(12345, 1_700_000_000.25) and not times.since(12345, 1_700_000_000.5)
    assert not times.since(12346, 1.0)
    with pytest.raises(IndexError):
        times.words.f64(len(times.map) - 7)  # no read past the map
