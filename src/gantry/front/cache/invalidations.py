"""When a zone's keys were last invalidated by an unsafe request (RFC 9111 4.4), shared by
its workers through a small mapped file (``PATH/invalidations``).

A fill that began before its key was invalidated carries an answer the origin may have
made before the unsafe request changed the resource: stored after the invalidation, it
would be served in place of the new one. So the invalidation writes its time here before
it looks for entries, and a fill's entry is put in place only if its key was not
invalidated since the fill began (``CacheStore`` looks before and after it puts one in
place, as it does for a purge). Keys share the table's slots (by their index tag): a fill
whose slot another key's invalidation moved is not stored either (a miss more), never the
reverse. The first slot holds the zone's latest invalidation: a fill begun after it
needs no look at its key's slot, which is the common case, and costs one read a batch.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Final

from gantry.front.cache.packs import words_of

__all__ = ["Invalidations"]

_WHEN: Final = struct.Struct("=d")
#: slots of the table, after the zone's latest (8 bytes each)
SLOTS: Final = 8192
#: two workers' invalidations at once may leave the zone's latest the earlier of the two:
#: a fill begun within this many seconds after it looks at its key's slot all the same
MARGIN: Final = 1.0


class Invalidations:
    """The times of a zone's invalidations, by key (sharing slots), and the latest."""

    def __init__(self, root: str) -> None:
        size = (1 + SLOTS) * _WHEN.size
        fd = os.open(
            os.path.join(root, "invalidations"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        #: the map's reader (the C helper's when built)
        self.words: Any = words_of(self.map)

    def mark(self, tag: int, now: float) -> None:
        """Say that the key of index tag ``tag`` is invalidated at ``now`` (before its
        entries are looked for: a fill that puts its entry in place after this looks)."""
        _WHEN.pack_into(self.map, _WHEN.size * (1 + tag % SLOTS), now)
        _WHEN.pack_into(self.map, 0, now)

    def horizon(self) -> float:
        """A time after which no key was invalidated: a fill begun later stores freely."""
        latest: float = self.words.f64(0)
        return latest + MARGIN

    def since(self, tag: int, start: float) -> bool:
        """Whether the key of ``tag`` (or one sharing its slot) was invalidated at or
        after ``start``."""
        when: float = self.words.f64(_WHEN.size * (1 + tag % SLOTS))
        return when >= start and when > 0.0  # 0.0: never (an entry may say it began then)
