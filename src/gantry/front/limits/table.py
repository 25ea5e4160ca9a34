"""A fixed-size hash table in shared memory, one per limit zone, that every worker of a
front reads and writes: nginx's shared zone with its LRU.

The front's master makes it before forking (an anonymous shared map, so the workers and
the workers of a reload all see the same one). Each entry holds a 16-byte digest of its
key and three integers whose meaning is the zone's (a leaky bucket's excess and last
time; a count of requests in progress; an event count and window). When every slot is
taken, the least recently used entry makes room.

Updates are made under the zone's lock: a POSIX record lock (``fcntl.lockf``) on a
temporary file. Such a lock belongs to the process that took it, so a worker that dies
holding it releases it (a spin lock in the map would leave the zone locked forever).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
from typing import Final

__all__ = ["SLOT_BYTES", "SharedTable", "digest"]

#: bytes of one entry: key digest, three values, LRU links, chain link
SLOT_BYTES: Final = 64
_SLOT: Final = struct.Struct("=16sqqqiii4x")
_VALUES: Final = struct.Struct("=qqq")
_LINKS: Final = struct.Struct("=ii")
_INT: Final = struct.Struct("=i")
_KEY: Final = struct.Struct("=16s")
# header: LRU head, LRU tail, first free slot, entries in use (-1: none)
_HEADER: Final = struct.Struct("=iiii")
_HEADER_BYTES: Final = 16
_NONE: Final = -1


def digest(key: bytes) -> bytes:
    """The 16 bytes a key is stored as (keys of any length take one slot)."""
    return hashlib.blake2b(key, digest_size=16).digest()


class SharedTable:
    """``slots`` entries in a shared anonymous map; hold ``lock()``/``unlock()`` around
    every read or write (one process at a time, across all workers)."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        # buckets: as many as slots (short chains); each the first slot of its chain
        self.buckets = self.slots
        self._slot_base = _HEADER_BYTES + 4 * self.buckets
        size = self._slot_base + SLOT_BYTES * self.slots
        self.map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: kept across fork
        # the lock's file: unlinked at once, known by its descriptor (inherited)
        fd, path = tempfile.mkstemp(prefix="gantry-zone-")
        os.unlink(path)
        self.lock_fd = fd
        self._init()

    @classmethod
    def for_size(cls, size: int) -> SharedTable:
        """A table using about ``size`` bytes (a zone's ``size``)."""
        return cls(max(1, size // (SLOT_BYTES + 4)))

    def _init(self) -> None:
        m = self.map
        for bucket in range(self.buckets):
            _INT.pack_into(m, _HEADER_BYTES + 4 * bucket, _NONE)
        # every slot on the free list (chained through its chain link)
        for slot in range(self.slots):
            nxt = slot + 1 if slot + 1 < self.slots else _NONE
            _SLOT.pack_into(m, self._slot_base + slot * SLOT_BYTES, b"", 0, 0, 0, _NONE, _NONE, nxt)
        _HEADER.pack_into(m, 0, _NONE, _NONE, 0, 0)

    def close(self) -> None:
        """Unmap the table and close the lock's file."""
        self.map.close()
        os.close(self.lock_fd)

    # the lock ---------------------------------------------------------------

    def lock(self) -> None:
        """Take the zone's lock (waits for another worker holding it)."""
        fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        """Release the zone's lock."""
        fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)

    # entries (the lock held) -----------------------------------------------

    def find(self, key: bytes) -> int:
        """The slot of ``key`` (a digest), or -1; a found entry becomes the most recent."""
        m = self.map
        base = self._slot_base
        slot: int = _INT.unpack_from(m, _HEADER_BYTES + 4 * (hash_of(key) % self.buckets))[0]
        while slot != _NONE:
            at = base + slot * SLOT_BYTES
            if m[at : at + 16] == key:
                self._touch(slot)
                return slot
            slot = _INT.unpack_from(m, at + 48)[0]
        return _NONE

    def insert(self, key: bytes, a: int = 0, b: int = 0, c: int = 0) -> int:
        """A new entry for ``key`` (not in the table) with these values, evicting the least
        recently used entry when the table is full; its slot."""
        m = self.map
        head, tail, free, used = _HEADER.unpack_from(m, 0)
        if free == _NONE:
            self.remove(tail)
            head, tail, free, used = _HEADER.unpack_from(m, 0)
        slot: int = free
        at = self._slot_base + slot * SLOT_BYTES
        free = _INT.unpack_from(m, at + 48)[0]
        bucket_at = _HEADER_BYTES + 4 * (hash_of(key) % self.buckets)
        first = _INT.unpack_from(m, bucket_at)[0]
        # at the front of its chain and of the LRU list
        _SLOT.pack_into(m, at, key, a, b, c, _NONE, head, first)
        _INT.pack_into(m, bucket_at, slot)
        if head != _NONE:
            _INT.pack_into(m, self._slot_base + head * SLOT_BYTES + 40, slot)
        else:
            tail = slot
        _HEADER.pack_into(m, 0, slot, tail, free, used + 1)
        return slot

    def remove(self, slot: int) -> None:
        """Drop the entry in ``slot``."""
        m = self.map
        base = self._slot_base
        at = base + slot * SLOT_BYTES
        key = m[at : at + 16]
        # out of its chain
        bucket_at = _HEADER_BYTES + 4 * (hash_of(key) % self.buckets)
        nxt = _INT.unpack_from(m, at + 48)[0]
        cur = _INT.unpack_from(m, bucket_at)[0]
        if cur == slot:
            _INT.pack_into(m, bucket_at, nxt)
        else:
            while cur != _NONE:
                cur_at = base + cur * SLOT_BYTES
                after = _INT.unpack_from(m, cur_at + 48)[0]
                if after == slot:
                    _INT.pack_into(m, cur_at + 48, nxt)
                    break
                cur = after
        self._unlink(slot)
        head, tail, free, used = _HEADER.unpack_from(m, 0)
        _SLOT.pack_into(m, at, b"", 0, 0, 0, _NONE, _NONE, free)
        _HEADER.pack_into(m, 0, head, tail, slot, used - 1)

    def values(self, slot: int) -> tuple[int, int, int]:
        """The three values of the entry in ``slot``."""
        result: tuple[int, int, int] = _VALUES.unpack_from(
            self.map, self._slot_base + slot * SLOT_BYTES + 16
        )
        return result

    def store(self, slot: int, a: int, b: int, c: int) -> None:
        """Set the three values of the entry in ``slot``."""
        _VALUES.pack_into(self.map, self._slot_base + slot * SLOT_BYTES + 16, a, b, c)

    def used(self) -> int:
        """Entries in the table."""
        count: int = _HEADER.unpack_from(self.map, 0)[3]
        return count

    def keys(self) -> list[bytes]:
        """The digests in the table, most recently used first."""
        m = self.map
        out = []
        slot = _HEADER.unpack_from(m, 0)[0]
        while slot != _NONE:
            at = self._slot_base + slot * SLOT_BYTES
            out.append(bytes(m[at : at + 16]))
            slot = _LINKS.unpack_from(m, at + 40)[1]
        return out

    # the LRU list ----------------------------------------------------------

    def _touch(self, slot: int) -> None:
        m = self.map
        head = _HEADER.unpack_from(m, 0)[0]
        if head == slot:
            return  # already the most recent: the common case of a busy key
        self._unlink(slot)
        head, tail, free, used = _HEADER.unpack_from(m, 0)
        at = self._slot_base + slot * SLOT_BYTES
        _LINKS.pack_into(m, at + 40, _NONE, head)
        if head != _NONE:
            _INT.pack_into(m, self._slot_base + head * SLOT_BYTES + 40, slot)
        else:
            tail = slot
        _HEADER.pack_into(m, 0, slot, tail, free, used)

    def _unlink(self, slot: int) -> None:
        m = self.map
        base = self._slot_base
        prev, nxt = _LINKS.unpack_from(m, base + slot * SLOT_BYTES + 40)
        head, tail, free, used = _HEADER.unpack_from(m, 0)
        if prev != _NONE:
            _INT.pack_into(m, base + prev * SLOT_BYTES + 44, nxt)
        else:
            head = nxt
        if nxt != _NONE:
            _INT.pack_into(m, base + nxt * SLOT_BYTES + 40, prev)
        else:
            tail = prev
        _HEADER.pack_into(m, 0, head, tail, free, used)


def hash_of(key: bytes) -> int:
    """The bucket hash of a digest: its first 8 bytes (already uniformly spread)."""
    return int.from_bytes(key[:8], "little")
