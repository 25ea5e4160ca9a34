"""Where a zone keeps its small entries without a file each: pack files and their index.

Creating a file is most of what a miss costs (an inode, a directory entry, a rename:
hundreds of microseconds of kernel time on ext4 here, against a few for one write to
an open file), so a small entry that does not vary is appended to its worker's pack
file instead (``PATH/packs/<id>.pack``, the same bytes an entry's own file would hold)
and named in the zone's index (``PATH/index``), a table every worker maps: a slot
says in which pack, at which offset and how long the entry is, and when it was last
used. A slot is written in place with no lock: its entry carries its key and
checksums, so a torn or stale slot leads to a record that does not match (a miss),
never to another response. A pack is removed whole by the sweep (the oldest first,
or once unused for ``inactive``); the slots that pointed into it are cleared.

An entry in a file of its own has a slot too, a hint with pack ``FILE_HINT``: a
lookup that finds no slot for its key is a miss without looking on disk (a stat per
miss). A hint left by a removed file costs a lookup that stat; a file whose hint
another key's slot took (a full bucket), or that a version before the hints wrote, is
not found: a miss, and the sweep removes it in time.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import mmap
import os
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any, Final

__all__ = [
    "FILE_HINT",
    "INDEX_HELPER",
    "MapWords",
    "PackIndex",
    "PackReaders",
    "PackWriter",
    "pack_path",
    "packed_usage",
    "slot_tag",
    "slot_tag_of",
    "words_of",
]

_HEAD: Final = struct.Struct("=4sI")
_MAGIC: Final = b"GCI1"
#: tag (nonzero: the slot is used), pack id, offset, length, last use (seconds)
_SLOT: Final = struct.Struct("=QQQII")
#: their sizes as constants (a struct's size is an attribute lookup)
_HEAD_SIZE: Final = 8
_SLOT_SIZE: Final = 32
#: slots of a bucket: a key goes to one bucket and takes any of its slots
WAYS: Final = 4
#: the tags of a bucket's slots
_TAGS: Final = struct.Struct("=" + "Q24x" * WAYS)
#: a slot's length; the lengths and last uses of a bucket's slots
_LENGTH: Final = struct.Struct("=24xI")
_SIZES: Final = struct.Struct("=" + "24xII" * WAYS)
#: bounds of a zone's slots (one per 8 KiB of ``max_size``)
MIN_SLOTS: Final = 4096
MAX_SLOTS: Final = 1 << 20
#: how many packs a worker keeps open for reading
OPEN_PACKS: Final = 64
#: a worker's pack grows to this size (or max_size / 16, if less), then it starts one anew
PACK_BYTES: Final = 64 * 1024 * 1024
#: writes between two checks that another worker's sweep did not remove the pack
LINK_CHECK_EVERY: Final = 64
#: a pack not written for this long (seconds) is checked before the next write: the
#: sweep removes a pack no entry points into once it is a minute old
IDLE_CHECK: Final = 20.0


def _index_helper() -> Any:
    """The C helper of a zone's tables (src/gantry/front/cache/_index.c), or None: not
    built, or kept out with the compiled modules (GANTRY_PURE=1, a stale build). It does
    what PackIndex.find and put, Generation's and Invalidations' reads and store.py's
    record do here, without a Python object per number."""
    try:
        return importlib.import_module("gantry.front.cache._index")
    except ImportError:
        return None


INDEX_HELPER: Final[Any] = _index_helper()

_U64: Final = struct.Struct("=Q")
_F64: Final = struct.Struct("=d")


class MapWords:
    """The 64-bit numbers of a small shared map (change marks, times), read through
    struct: what the C helper's ``Words`` does without it."""

    def __init__(self, view: mmap.mmap) -> None:
        self.map = view

    def u64(self, at: int) -> int:
        """The unsigned 64-bit number at byte ``at``."""
        value: int = _U64.unpack_from(self.map, at)[0]
        return value

    def f64(self, at: int) -> float:
        """The double at byte ``at``."""
        value: float = _F64.unpack_from(self.map, at)[0]
        return value


def words_of(view: mmap.mmap) -> Any:
    """A reader of ``view``'s 64-bit numbers: the C helper's (no struct call, no tuple)
    when it is built, else a MapWords; both have ``u64(at)`` and ``f64(at)``."""
    return MapWords(view) if INDEX_HELPER is None else INDEX_HELPER.Words(view)


#: the pack id of a slot that names no record but says the key has a file of its own
#: (a large or varying entry, one a 304 rewrote): no pack has it (``PackWriter`` makes
#: odd ids)
FILE_HINT: Final = 0


def slot_tag(digest: str) -> int:
    """A key's tag in the index, from its SHA-256 (hex): never 0, which marks a free slot."""
    return int(digest[:16], 16) | 1


def slot_tag_of(raw: bytes) -> int:
    """``slot_tag`` of the hex of ``raw``, the SHA-256 itself (no hex to parse back)."""
    return int.from_bytes(raw[:8], "big") | 1


def pack_path(root: str, pack: int) -> str:
    """The file of pack ``pack`` in zone folder ``root``."""
    return os.path.join(root, "packs", f"{pack:016x}.pack")


def pack_id(name: str) -> int:
    """The id of a pack file's name; 0 when it is not one."""
    stem, dot, ext = name.partition(".")
    if ext != "pack" or len(stem) != 16:
        return 0
    try:
        return int(stem, 16)
    except ValueError:
        return 0


class PackIndex:
    """The zone's table of packed entries (a mapped file shared by its workers)."""

    def __init__(self, root: str, max_size: int) -> None:
        wanted = MIN_SLOTS
        while wanted < MAX_SLOTS and wanted * 8192 < max_size:
            wanted *= 2
        path = os.path.join(root, "index")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # workers starting together: one makes the table, the others find it made
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            slots = 0
            if size >= _HEAD.size:
                magic, count = _HEAD.unpack(os.pread(fd, _HEAD.size, 0))
                if magic == _MAGIC and count >= WAYS and size >= _HEAD.size + count * _SLOT.size:
                    slots = count  # made before (perhaps for another max_size): kept
            if not slots:
                slots = wanted
                os.ftruncate(fd, 0)  # not an index of ours: made anew
                os.ftruncate(fd, _HEAD.size + slots * _SLOT.size)
                os.pwrite(fd, _HEAD.pack(_MAGIC, slots), 0)
            self.slots = slots
            self.buckets = slots // WAYS
            self.map = mmap.mmap(fd, _HEAD.size + slots * _SLOT.size)
            #: the C helper's view of the map (None without it): find and put in one call
            self.view: Any = None
            if INDEX_HELPER is not None:
                self.view = INDEX_HELPER.IndexView(self.map, slots)
        finally:
            # let go by hand: the map holds a duplicate of the descriptor, and with it
            # the lock, as long as it lives
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _at(self, slot: int) -> int:
        return _HEAD.size + slot * _SLOT.size

    def find(self, tag: int) -> tuple[int, int, int, int] | None:
        """(slot, pack, offset, length) of the entry tagged ``tag``; None if none."""
        view = self.view
        if view is not None:
            found: tuple[int, int, int, int] | None = view.find(tag)
            return found
        base = (tag % self.buckets) * WAYS
        at = _HEAD_SIZE + base * _SLOT_SIZE
        # the bucket's tags in one read of the map (each read takes the map's buffer), the
        # rest of a slot only when it is the one: a miss reads 4 numbers, not 20, and
        # looks for its tag among them in one step
        tags = _TAGS.unpack_from(self.map, at)
        if tag not in tags:
            return None
        way = tags.index(tag)
        _, pack, offset, length, _ = _SLOT.unpack_from(self.map, at + way * _SLOT_SIZE)
        return base + way, pack, offset, length

    def put(self, tag: int, pack: int, offset: int, length: int, now: float) -> tuple[int, int]:
        """Point ``tag`` at a record; what it displaced: (0, 0) nothing, (1, length) an
        older version of the same key, (2, length) another key's entry (evicted)."""
        view = self.view
        if view is not None:
            displaced: tuple[int, int] = view.put(tag, pack, offset, length, now)
            return displaced
        base = (tag % self.buckets) * WAYS
        at = _HEAD_SIZE + base * _SLOT_SIZE
        # the tags first: the lengths and last uses only when they decide
        tags = _TAGS.unpack_from(self.map, at)
        if tag in tags:  # the same key's older version
            way = tags.index(tag)
            kind, old_length = 1, _LENGTH.unpack_from(self.map, at + way * _SLOT_SIZE)[0]
        elif 0 in tags:  # the first free slot
            way, kind, old_length = tags.index(0), 0, 0
        else:  # the least recently used (the first of equals)
            sizes = _SIZES.unpack_from(self.map, at)
            way, oldest = 0, sizes[1]
            for other in range(1, WAYS):
                if sizes[2 * other + 1] < oldest:
                    way, oldest = other, sizes[2 * other + 1]
            kind, old_length = 2, sizes[2 * way]
        _SLOT.pack_into(self.map, at + way * _SLOT_SIZE, tag, pack, offset, length, int(now))
        return kind, old_length

    def clear(self, slot: int, tag: int, pack: int, offset: int) -> bool:
        """Free ``slot`` if it still points where it did; whether it did."""
        at = self._at(slot)
        found, now_pack, now_offset, _, _ = _SLOT.unpack_from(self.map, at)
        if (found, now_pack, now_offset) != (tag, pack, offset):
            return False
        self.map[at : at + 8] = bytes(8)
        return True

    def touch(self, tag: int, now: float) -> None:
        """Mark ``tag``'s entry used now (its recency, for the sweep)."""
        found = self.find(tag)
        if found is not None:
            at = self._at(found[0])
            self.map[at + 28 : at + 32] = struct.pack("=I", int(now))

    def scan(self, first: int = 0, end: int = -1) -> Iterator[tuple[int, int, int, int, int, int]]:
        """Every used slot from ``first`` to ``end`` (-1: the last): (slot, tag, pack,
        offset, length, last use)."""
        if end < 0 or end > self.slots:
            end = self.slots
        view = self.map
        for slot, (tag, pack, offset, length, used) in enumerate(
            _SLOT.iter_unpack(view[self._at(first) : self._at(end)]), first
        ):
            if tag:
                yield slot, tag, pack, offset, length, used

    def close(self) -> None:
        """Unmap the table."""
        if self.view is not None:
            self.view.close()
        with contextlib.suppress(BufferError, ValueError):
            self.map.close()


class PackReaders:
    """A worker's open packs, for reading records (the least recently used closed)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: OrderedDict[int, int] = OrderedDict()
        #: packs the sweep (on another thread) removed: closed by the next read, on the
        #: loop's thread (closing one under a read could hand it another file's number)
        self.removed: deque[int] = deque()

    def read(self, pack: int, offset: int, length: int) -> bytes | None:
        """The record's bytes; None when the pack is gone (swept) or short."""
        while self.removed:
            self.forget(self.removed.popleft())
        fd = self.fds.get(pack)
        if fd is None:
            try:
                fd = os.open(pack_path(self.root, pack), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            self.fds[pack] = fd
            if len(self.fds) > OPEN_PACKS:
                _, old = self.fds.popitem(last=False)
                os.close(old)
        else:
            self.fds.move_to_end(pack)
        try:
            data = os.pread(fd, length, offset)
        except OSError:
            return None
        return data if len(data) == length else None

    def forget(self, pack: int) -> None:
        """Close ``pack`` (removed)."""
        fd = self.fds.pop(pack, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close every pack."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class PackWriter:
    """A worker's pack being filled: records are appended with one write each."""

    def __init__(self, root: str, max_size: int) -> None:
        self.root = root
        self.limit = max(64 * 1024, min(PACK_BYTES, max_size // 16))
        self.fd = -1
        self.pack = 0
        self.end = 0
        self.writes = 0
        self.written = 0.0

    def _start(self) -> None:
        self.close()
        folder = os.path.join(self.root, "packs")
        os.makedirs(folder, exist_ok=True)
        while True:
            pack = int.from_bytes(os.urandom(8), "big") | 1
            try:
                fd = os.open(
                    pack_path(self.root, pack),
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
            except FileExistsError:
                continue
            break
        self.fd, self.pack, self.end, self.writes = fd, pack, 0, 0

    def append(self, record: bytes) -> tuple[int, int]:
        """Write ``record`` at the end of the pack (a new pack when this one is full, or
        was swept by another worker); (pack, offset). OSError if it cannot."""
        self.writes += 1
        now = time.monotonic()
        idle, self.written = now - self.written > IDLE_CHECK, now
        if (
            self.fd < 0
            or self.end + len(record) > self.limit
            or ((idle or self.writes % LINK_CHECK_EVERY == 0) and os.fstat(self.fd).st_nlink == 0)
        ):
            self._start()
        fd, offset = self.fd, self.end
        written = os.pwrite(fd, record, offset)
        at = offset + written
        if written < len(record):  # rare (a full disk, a signal): the rest piece by piece
            view = memoryview(record)[written:]
            while view:
                written = os.pwrite(fd, view, at)
                if written <= 0:
                    raise OSError("short write to a pack")
                view = view[written:]
                at += written
        self.end = at
        return self.pack, offset

    def close(self) -> None:
        """Stop filling the pack (what it holds stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def packed_usage(root: str) -> tuple[int, int]:
    """(entries, bytes) the index of zone folder ``root`` names in packs that are there."""
    if not os.path.exists(os.path.join(root, "index")):
        return 0, 0
    index = PackIndex(root, 0)
    try:
        there: dict[int, bool] = {}
        entries = size = 0
        for _, _, pack, _, length, _ in index.scan():
            if pack == FILE_HINT:
                continue  # a file's hint: the file is counted as one
            if pack not in there:
                there[pack] = os.path.exists(pack_path(root, pack))
            if there[pack]:
                entries += 1
                size += length
        return entries, size
    finally:
        index.close()
