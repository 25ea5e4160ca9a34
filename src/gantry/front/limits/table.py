"""A fixed-size hash table in shared memory, one per limit zone, that every worker of a
front reads and writes: nginx's shared zone with its LRU.

The front's master makes it before forking (an anonymous shared map, so the workers and
the workers of a reload all see the same one). Each entry holds a 16-byte digest of its
key and three integers whose meaning is the zone's (a leaky bucket's excess and last
time; a count of requests in progress; an event count and window). When every slot is
taken, the least recently used entry makes room.

Updates are made under the zone's lock: a process-shared semaphore (no system call
when nobody else holds it: 0.13 us for a lock and unlock here, against 2.8 us for
``fcntl.lockf`` on a file, which cost a limited location a fifth of its throughput).
A semaphore is not released when its holder dies, so the holder's PID is kept in the
map: a worker that waits half a second for the lock checks it, and takes the lock
over from a holder that is gone (the critical sections last microseconds).

A passing limit_req's check of a key whose entry it knows (``bucket_check``) is one
call into a C helper built with the compiled modules (_bucket.c): the same semaphore
taken without waiting, the holder's PID, the entry's generation, LRU place and leaky
bucket, read and written in the map without a Python object (a third of the
instructions of a request through a limited location were these reads and writes
through int views). Anything else, and everything without the build, is Python.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import mmap
import multiprocessing
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from gantry.process.runtime import process_alive

__all__ = [
    "BUCKET_BUSY",
    "BUCKET_MOVED",
    "ENTRY",
    "GENERATION_INT",
    "NEWER_INT",
    "NO_SLOT",
    "SLOT_BYTES",
    "SLOT_INTS",
    "SLOT_QS",
    "VALUES",
    "SharedTable",
    "digest",
]

#: bytes of one entry: key digest, three values, LRU links, chain link
SLOT_BYTES: Final = 64
_SLOT: Final = struct.Struct("=16sqqqiii4x")
_VALUES: Final = struct.Struct("=qqq")
#: the three values of an entry, at ``SharedTable.offset(slot)``
VALUES: Final = _VALUES
#: an entry's key, its three values and its LRU link to the more recent entry (NO_SLOT:
#: it is the most recent), at ``slot_base + slot * SLOT_BYTES``: all a check of a known slot reads
ENTRY: Final = struct.Struct("=16sqqqi")
_LINKS: Final = struct.Struct("=ii")
_INT: Final = struct.Struct("=i")
#: int64s and int32s an entry spans in ``slot_qs`` and ``slot_ints``, and where its link to
#: the more recent entry is in the latter (NO_SLOT: it is the most recent)
SLOT_QS: Final = SLOT_BYTES // 8
SLOT_INTS: Final = SLOT_BYTES // 4
NEWER_INT: Final = 10
#: where in ``slot_ints`` an entry's generation is: a number the slot takes anew each
#: time an entry goes into it or out of it (past the bytes _SLOT writes, which never
#: clear it), so that a slot remembered with its generation still holds the very entry
#: it held when the generation is unchanged: one small integer read, no digest compared
GENERATION_INT: Final = 14
#: generations wrap below this (a small integer, as compiled code keeps it unboxed)
_GENERATIONS: Final = 1 << 30
#: the lock holder's PID in ``header_ints``
_HOLDER_INT: Final = 4
# an entry's key and its chain link, read together (one call per entry of a chain)
_KEY_CHAIN: Final = struct.Struct("=16s32xi")
_KEY: Final = struct.Struct("=16s")
# header: LRU head, LRU tail, first free slot, entries in use (-1: none); then the PID
# of the lock's holder; then the zone's counters (stats: refusals, delays, bans...)
_HEADER: Final = struct.Struct("=iiii")
_HOLDER_AT: Final = 4 * _HOLDER_INT
_COUNTERS_AT: Final = 24
COUNTERS: Final = 4
_COUNTER: Final = struct.Struct("=q")
_HEADER_BYTES: Final = _COUNTERS_AT + 8 * COUNTERS
_NONE: Final = -1
#: no slot (an empty chain or link; a key not found)
NO_SLOT: Final = _NONE
#: seconds a worker waits for the lock before it checks that the holder is alive
LOCK_PATIENCE: Final = 0.5
#: seconds after which the lock is taken over from a holder still alive
LOCK_GIVE_UP: Final = 2.0

log: Final = logging.getLogger("gantry.front")


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
        #: where slot 0 is in ``map`` (slot n: ``slot_base + n * SLOT_BYTES``)
        self.slot_base = _HEADER_BYTES + 4 * self.buckets
        size = self.slot_base + SLOT_BYTES * self.slots
        self.map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: kept across fork
        # The map as integers: reading or writing one item costs a third of a struct call
        # (the lock's PID, a passing limit's read and write of its entry are that).
        view = memoryview(self.map)
        #: the header as int32: LRU head, tail, first free slot, entries used, lock holder
        self.header_ints = view[:_COUNTERS_AT].cast("i")
        #: the entries as int64 (SLOT_QS an entry: the digest's two halves, the values
        #: a, b and c at 2, 3 and 4, then the links) and as int32 (SLOT_INTS an entry:
        #: the link to the more recent entry at NEWER_INT)
        self.slot_qs = view[self.slot_base :].cast("q")
        self.slot_ints = view[self.slot_base :].cast("i")
        self._sem = multiprocessing.get_context("fork").Lock()
        self._acquire = self._sem.acquire
        self._release = self._sem.release
        #: the C checks made on this map (closed before it: each holds it)
        self._bucket_checks: list[Any] = []
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
            _SLOT.pack_into(m, self.slot_base + slot * SLOT_BYTES, b"", 0, 0, 0, _NONE, _NONE, nxt)
        _HEADER.pack_into(m, 0, _NONE, _NONE, 0, 0)

    def bucket_check(self, rate: int) -> Callable[[int, int, int, int], int] | None:
        """The C helper's check of a remembered entry of a limit_req zone at ``rate``
        (thousandths of a request a second) in this table: ``check(slot, generation, now,
        burst)`` gives what LimitReqState.check gives, or BUCKET_BUSY (the lock is taken)
        or BUCKET_MOVED (not in that slot now), when its Python path is to do the work.
        None without the helper (pure Python, or not built)."""
        if _BUCKET_CHECK is None:
            return None
        # the lock's handle: the semaphore (sem_t *) both paths take
        handle = self._sem._semlock.handle  # type: ignore[attr-defined]
        checker = _BUCKET_CHECK(self.map, handle, self.slot_base, self.slots, rate)
        self._bucket_checks.append(checker)
        check: Callable[[int, int, int, int], int] = checker.check
        return check

    def close(self) -> None:
        """Unmap the table."""
        for checker in self._bucket_checks:
            checker.close()
        self._bucket_checks.clear()
        # the views first: a map with views on it cannot close
        self.header_ints.release()
        self.slot_qs.release()
        self.slot_ints.release()
        self.map.close()

    # the lock ---------------------------------------------------------------

    def lock(self) -> None:
        """Take the zone's lock (waits for another worker holding it)."""
        # without a timeout first: a free lock is then taken without computing a deadline
        # (a third of the cost of a lock and unlock)
        if not self._acquire(False):
            self.wait_for_lock()
            return
        self.header_ints[_HOLDER_INT] = _pid[0]

    def try_lock(self) -> bool:
        """Take the zone's lock if it is free, at once (False: call ``wait_for_lock``)."""
        if self._acquire(False):
            self.header_ints[_HOLDER_INT] = _pid[0]
            return True
        return False

    def wait_for_lock(self) -> None:
        """Take the zone's lock, which another worker holds: wait, or take it over from
        a holder that died or stopped."""
        if not self._acquire(True, LOCK_PATIENCE):
            self._wait_for_lock()
        self.header_ints[_HOLDER_INT] = _pid[0]

    def _wait_for_lock(self) -> None:
        waited = LOCK_PATIENCE
        while True:
            holder = _INT.unpack_from(self.map, _HOLDER_AT)[0]
            if holder and not process_alive(holder):
                # it died in a critical section: the lock (still taken) is ours now
                log.error("limit zone: worker %d died holding the lock; taken over", holder)
                return
            if waited >= LOCK_GIVE_UP:
                # a critical section lasts microseconds: a holder this slow is stopped
                # (SIGSTOP, a debugger); serving on beats a worker blocked for good
                log.error("limit zone: process %d held the lock %gs; taken over", holder, waited)
                return
            if self._acquire(True, LOCK_PATIENCE):
                return
            waited += LOCK_PATIENCE

    def unlock(self) -> None:
        """Release the zone's lock."""
        self._release()

    # entries (the lock held) -----------------------------------------------

    def find(self, key: bytes) -> int:
        """The slot of ``key`` (a digest), or -1; a found entry becomes the most recent."""
        m = self.map
        base = self.slot_base
        bucket = int.from_bytes(key[:8], "little") % self.buckets  # hash_of, inline
        slot: int = _INT.unpack_from(m, _HEADER_BYTES + 4 * bucket)[0]
        steps = self.slots  # a chain is never longer (bounds a walk of a damaged one)
        while slot != _NONE and steps:
            found, chain = _KEY_CHAIN.unpack_from(m, base + slot * SLOT_BYTES)
            if found == key:
                self._touch(slot)
                return slot
            slot = chain
            steps -= 1
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
        at = self.slot_base + slot * SLOT_BYTES
        free = _INT.unpack_from(m, at + 48)[0]
        bucket_at = _HEADER_BYTES + 4 * (hash_of(key) % self.buckets)
        first = _INT.unpack_from(m, bucket_at)[0]
        # at the front of its chain and of the LRU list
        _SLOT.pack_into(m, at, key, a, b, c, _NONE, head, first)
        self._next_generation(slot)
        _INT.pack_into(m, bucket_at, slot)
        if head != _NONE:
            _INT.pack_into(m, self.slot_base + head * SLOT_BYTES + 40, slot)
        else:
            tail = slot
        _HEADER.pack_into(m, 0, slot, tail, free, used + 1)
        return slot

    def remove(self, slot: int) -> None:
        """Drop the entry in ``slot``."""
        m = self.map
        base = self.slot_base
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
        self._next_generation(slot)
        _HEADER.pack_into(m, 0, head, tail, slot, used - 1)

    def _next_generation(self, slot: int) -> None:
        at = slot * SLOT_INTS + GENERATION_INT
        ints = self.slot_ints
        generation: int = ints[at]
        ints[at] = generation % (_GENERATIONS - 1) + 1  # never 0: 0 is no entry known

    def generation(self, slot: int) -> int:
        """The generation of ``slot`` (see GENERATION_INT)."""
        generation: int = self.slot_ints[slot * SLOT_INTS + GENERATION_INT]
        return generation

    def touch(self, slot: int) -> None:
        """Make the entry in ``slot`` the most recent (as ``find`` does)."""
        self._touch(slot)

    def offset(self, slot: int) -> int:
        """Where the values of the entry in ``slot`` are in ``map`` (three int64)."""
        return self.slot_base + slot * SLOT_BYTES + 16

    def values(self, slot: int) -> tuple[int, int, int]:
        """The three values of the entry in ``slot``."""
        result: tuple[int, int, int] = _VALUES.unpack_from(
            self.map, self.slot_base + slot * SLOT_BYTES + 16
        )
        return result

    def store(self, slot: int, a: int, b: int, c: int) -> None:
        """Set the three values of the entry in ``slot``."""
        _VALUES.pack_into(self.map, self.slot_base + slot * SLOT_BYTES + 16, a, b, c)

    def bump(self, counter: int, amount: int = 1) -> None:
        """Add ``amount`` to the zone's counter number ``counter`` (the lock held)."""
        at = _COUNTERS_AT + 8 * counter
        _COUNTER.pack_into(self.map, at, _COUNTER.unpack_from(self.map, at)[0] + amount)

    def counter(self, counter: int) -> int:
        """The zone's counter number ``counter`` (read without the lock: a stats value)."""
        value: int = _COUNTER.unpack_from(self.map, _COUNTERS_AT + 8 * counter)[0]
        return value

    def used(self) -> int:
        """Entries in the table."""
        count: int = self.header_ints[3]
        return count

    def keys(self) -> list[bytes]:
        """The digests in the table, most recently used first."""
        m = self.map
        out = []
        slot = _HEADER.unpack_from(m, 0)[0]
        while slot != _NONE:
            at = self.slot_base + slot * SLOT_BYTES
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
        at = self.slot_base + slot * SLOT_BYTES
        _LINKS.pack_into(m, at + 40, _NONE, head)
        if head != _NONE:
            _INT.pack_into(m, self.slot_base + head * SLOT_BYTES + 40, slot)
        else:
            tail = slot
        _HEADER.pack_into(m, 0, slot, tail, free, used)

    def _unlink(self, slot: int) -> None:
        m = self.map
        base = self.slot_base
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


def _bucket_type() -> Any:
    """The C helper's BucketCheck (src/gantry/front/limits/_bucket.c), or None: not built,
    or kept out with the compiled modules (GANTRY_PURE=1, a stale build)."""
    try:
        return importlib.import_module("gantry.front.limits._bucket").BucketCheck
    except ImportError:
        return None


_BUCKET_CHECK: Final[Any] = _bucket_type()
#: the helper's answers besides an excess: the lock is taken; the entry left its slot
BUCKET_BUSY: Final = -1
BUCKET_MOVED: Final = -2

#: this process's PID, kept current across fork (read at every lock; a list, as a
#: module-level value compiled code reads and the fork hook replaces; Final, the list
#: itself never is: compiled code reads it without a lookup in the module's dict)
_pid: Final[list[int]] = [os.getpid()]


def _forked() -> None:
    _pid[0] = os.getpid()


os.register_at_fork(after_in_child=_forked)
