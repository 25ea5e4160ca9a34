"""Each cache zone's figures, shared by every front worker of a master: how its requests
were answered (nginx's ``$upstream_cache_status``), and its entries and bytes on disk.

An anonymous shared mapping made by the master before it forks (one made by a lone
worker for itself), read by the master for the stats document and the metrics
without asking any worker. Each worker slot holds, per zone, its request counts and
the entries and bytes its own writes and removals added; a worker writes only its
slot, so no lock is needed. The zone's own fields are set by the sweep (one worker at
a time walks a zone): what it counted on disk, and the additions summed over every
slot when it began, so that entries = counted + (additions now - additions then).
A write or removal during a walk may be counted twice until the next walk.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Sequence
from typing import Any, Final

from gantry.config.front_model import CacheZone

__all__ = [
    "ADDED_BYTES",
    "ADDED_ENTRIES",
    "BYPASS",
    "EXPIRED",
    "HIT",
    "MISS",
    "REVALIDATED",
    "STALE",
    "STATUSES",
    "UPDATING",
    "CacheCounters",
]

#: how a request of a cached location was answered, as nginx's $upstream_cache_status
STATUSES: Final = ("HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "BYPASS")
HIT: Final = 0
MISS: Final = 1
EXPIRED: Final = 2
STALE: Final = 3
UPDATING: Final = 4
REVALIDATED: Final = 5
BYPASS: Final = 6
#: net entries and bytes a worker's writes and removals added (after the statuses)
ADDED_ENTRIES: Final = 7
ADDED_BYTES: Final = 8
_WORKER_FIELDS: Final = 9
#: a zone's own fields: counted by the last sweep, the additions summed when it began,
#: and when it ended (0: never)
_ENTRIES, _BYTES, _BASE_ENTRIES, _BASE_BYTES, _SWEPT = range(5)
_ZONE_FIELDS: Final = 5


class CacheCounters:
    """The figures of ``zones`` for ``slots`` workers (slot i is worker slot i of the
    master's WorkerTable), in one shared mapping."""

    def __init__(self, zones: Sequence[CacheZone], slots: int) -> None:
        self.zones = {zone.name: zone for zone in zones}
        self.index = {zone.name: i for i, zone in enumerate(zones)}
        self.slots = max(1, slots)
        count = max(1, len(zones))
        self._zone_bytes = count * _ZONE_FIELDS * 8
        size = self._zone_bytes + self.slots * count * _WORKER_FIELDS * 8
        self._map = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: inherited by fork
        self._ints = memoryview(self._map).cast("q")

    def worker(self, slot: int, zone: str) -> memoryview:
        """The fields of ``zone`` in worker ``slot`` (indexed by HIT ... ADDED_BYTES)."""
        if not 0 <= slot < self.slots:
            raise IndexError(slot)
        base = len(self.zones) * _ZONE_FIELDS
        start = base + (slot * len(self.zones) + self.index[zone]) * _WORKER_FIELDS
        return self._ints[start : start + _WORKER_FIELDS]

    def _zone(self, zone: str) -> memoryview:
        start = self.index[zone] * _ZONE_FIELDS
        return self._ints[start : start + _ZONE_FIELDS]

    def _summed(self, zone: str) -> list[int]:
        totals = [0] * _WORKER_FIELDS
        for slot in range(self.slots):
            fields = self.worker(slot, zone)
            for i in range(_WORKER_FIELDS):
                totals[i] += fields[i]
        return totals

    def sweep_begins(self, zone: str) -> tuple[int, int]:
        """The additions summed over every worker, before a sweep walks ``zone``."""
        totals = self._summed(zone)
        return totals[ADDED_ENTRIES], totals[ADDED_BYTES]

    def swept(self, zone: str, entries: int, size: int, base: tuple[int, int]) -> None:
        """A sweep that began at ``base`` (see sweep_begins) counted ``entries`` and
        ``size`` bytes in ``zone``."""
        fields = self._zone(zone)
        fields[_ENTRIES] = entries
        fields[_BYTES] = size
        fields[_BASE_ENTRIES], fields[_BASE_BYTES] = base
        fields[_SWEPT] = int(time.time())

    def report(self) -> list[dict[str, Any]]:
        """Each zone's figures, summed over the workers, as the stats document has them."""
        zones: list[dict[str, Any]] = []
        for name, zone in self.zones.items():
            totals = self._summed(name)
            own = self._zone(name)
            entries = own[_ENTRIES] + totals[ADDED_ENTRIES] - own[_BASE_ENTRIES]
            size = own[_BYTES] + totals[ADDED_BYTES] - own[_BASE_BYTES]
            zones.append(
                {
                    "name": name,
                    "requests": {status.lower(): totals[i] for i, status in enumerate(STATUSES)},
                    "entries": max(0, entries),
                    "bytes": max(0, size),
                    "max_size": zone.max_size,
                    "swept": own[_SWEPT],
                }
            )
        return zones
