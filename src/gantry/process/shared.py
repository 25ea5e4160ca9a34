"""Per-worker counters in shared memory: workers write their own slot, the master reads all.

The memory is an anonymous shared mapping made by the master before it forks,
so every worker inherits it; nothing is asked of a worker to read its figures.
A slot is a fixed array of 64-bit fields (see ``FIELDS``) followed by the
current request line.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import overload

__all__ = [
    "FIELDS",
    "STATUS_NAMES",
    "SlotView",
    "WorkerStats",
    "WorkerTable",
    "slot_line",
    "store_memory",
]

#: the 64-bit integer fields of a slot, in order (times in microseconds)
FIELDS = (
    "pid",
    "status",  # 0 free slot, 1 starting, 2 idle, 3 busy, 4 stopping
    "generation",  # bumped by each reload: old and new workers tell apart
    "requests",
    "exceptions",
    "tx",  # bytes of responses sent (heads and bodies)
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "rt_total_us",  # sum of response times, for the average
    "request_start_us",  # wall clock (µs) the current request began; 0 when idle
    "last_spawn",  # wall clock seconds of the last spawn
    "respawn_count",
    "rss",  # bytes, refreshed by the worker once a second
    "vsz",
    "ready",  # 1 once the worker listens with the app loaded
    "websockets",  # WebSocket tunnels open now (the front)
    "http2_connections",  # HTTP/2 connections open now (the front)
    "http2_streams",  # HTTP/2 streams answered (the front)
)
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_STATUS, _REQUESTS, _EXCEPTIONS, _TX = (
    _INDEX[n] for n in ("status", "requests", "exceptions", "tx")
)
_STATUS_2XX, _STATUS_3XX, _STATUS_4XX, _STATUS_5XX = (_INDEX[f"status_{n}xx"] for n in range(2, 6))
_RT_TOTAL, _REQUEST_START = _INDEX["rt_total_us"], _INDEX["request_start_us"]
_WEBSOCKETS = _INDEX["websockets"]
_HTTP2_CONNECTIONS, _HTTP2_STREAMS = _INDEX["http2_connections"], _INDEX["http2_streams"]
LINE_BYTES = 256
SLOT_BYTES = len(FIELDS) * 8 + LINE_BYTES
STATUS_NAMES = {0: "free", 1: "starting", 2: "idle", 3: "busy", 4: "stopping"}
STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}


class _Field:
    """One 64-bit field of a slot, read and written in shared memory (a data descriptor,
    so ``slot.requests`` is typed and costs no ``__getattr__`` fallback)."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = -1

    def __set_name__(self, owner: type, name: str) -> None:
        self.index = _INDEX[name]

    @overload
    def __get__(self, slot: None, owner: type) -> _Field: ...
    @overload
    def __get__(self, slot: SlotView, owner: type) -> int: ...
    def __get__(self, slot: SlotView | None, owner: type) -> _Field | int:
        if slot is None:
            return self
        return int(slot._ints[self.index])

    def __set__(self, slot: SlotView, value: int) -> None:
        slot._ints[self.index] = value


class SlotView:
    """One worker's slot; attribute access reads and writes shared memory directly."""

    __slots__ = ("_ints", "_line", "index")

    pid = _Field()
    status = _Field()
    generation = _Field()
    requests = _Field()
    exceptions = _Field()
    tx = _Field()
    status_2xx = _Field()
    status_3xx = _Field()
    status_4xx = _Field()
    status_5xx = _Field()
    rt_total_us = _Field()
    request_start_us = _Field()
    last_spawn = _Field()
    respawn_count = _Field()
    rss = _Field()
    vsz = _Field()
    ready = _Field()
    websockets = _Field()
    http2_connections = _Field()
    http2_streams = _Field()

    def __init__(self, ints: memoryview, line: memoryview, index: int) -> None:
        self._ints = ints
        self._line = line
        self.index = index

    def add(self, name: str, amount: int) -> None:
        """Add to a counter (only the owning worker writes, so no lock is needed)."""
        self._ints[_INDEX[name]] += amount

    @property
    def request_line(self) -> str:
        """The current request line (method and target), or '' when idle."""
        raw = bytes(self._line)
        return raw.split(b"\0", 1)[0].decode("latin-1")

    def set_request_line(self, line: str) -> None:
        """Record the request now running (cut to the slot's size)."""
        data = slot_line(line)
        self._line[: len(data)] = data

    def begin_request(self, line: bytes, start_us: int, status: int) -> None:
        """A request starts: ``line`` is its line encoded, NUL-terminated and at most
        LINE_BYTES long (see :func:`slot_line`). One call on the request path."""
        self._line[: len(line)] = line
        ints = self._ints
        ints[_REQUEST_START] = start_us
        ints[_STATUS] = status

    def store_counters(
        self,
        requests: int,
        exceptions: int,
        tx: int,
        counts: list[int],
        rt_total: float,
        websockets: int = 0,
        http2_connections: int = 0,
        http2_streams: int = 0,
    ) -> None:
        """Copy a worker's running totals in (``counts`` by status class, index 2 to 5;
        ``websockets``: the tunnels open now; ``http2_connections`` open now and
        ``http2_streams`` answered)."""
        ints = self._ints
        ints[_WEBSOCKETS] = websockets
        ints[_HTTP2_CONNECTIONS] = http2_connections
        ints[_HTTP2_STREAMS] = http2_streams
        ints[_REQUESTS] = requests
        ints[_EXCEPTIONS] = exceptions
        ints[_TX] = tx
        ints[_STATUS_2XX] = counts[2]
        ints[_STATUS_3XX] = counts[3]
        ints[_STATUS_4XX] = counts[4]
        ints[_STATUS_5XX] = counts[5]
        ints[_RT_TOTAL] = int(rt_total * 1e6)

    def reset(self) -> None:
        """Zero every field (a new worker takes the slot)."""
        for i in range(len(FIELDS)):
            self._ints[i] = 0
        self._line[:1] = b"\0"

    def snapshot(self) -> WorkerStats:
        """A consistent-enough copy of the slot for reporting."""
        values = {name: int(self._ints[i]) for i, name in enumerate(FIELDS)}
        return WorkerStats(id=self.index + 1, request_line=self.request_line, **values)


@dataclass(frozen=True)
class WorkerStats:
    """A copy of one slot, as the stats server and ``gantry top`` report it."""

    id: int
    pid: int
    status: int
    generation: int
    requests: int
    exceptions: int
    tx: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    rt_total_us: int
    request_start_us: int
    last_spawn: int
    respawn_count: int
    rss: int
    vsz: int
    ready: int
    websockets: int
    request_line: str
    #: the front's HTTP/2 connections open now, and streams answered
    http2_connections: int = 0
    http2_streams: int = 0

    @property
    def status_name(self) -> str:
        """'idle', 'busy', ... as uWSGI's stats name them."""
        return STATUS_NAMES.get(self.status, "unknown")

    @property
    def avg_rt_us(self) -> int:
        """Average response time in microseconds."""
        return self.rt_total_us // self.requests if self.requests else 0

    def running_for(self, now: float | None = None) -> float:
        """Seconds the current request has been running (0 when idle)."""
        if not self.request_start_us:
            return 0.0
        return max(0.0, (now or time.time()) - self.request_start_us / 1e6)


class WorkerTable:
    """The shared mapping holding ``size`` slots; made before fork, inherited by workers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, max(1, size) * SLOT_BYTES)  # MAP_SHARED | MAP_ANONYMOUS
        self._view = memoryview(self._map)

    def slot(self, index: int) -> SlotView:
        """The slot of worker ``index`` (0-based)."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        base = index * SLOT_BYTES
        ints = self._view[base : base + len(FIELDS) * 8].cast("q")
        line = self._view[base + len(FIELDS) * 8 : base + SLOT_BYTES]
        return SlotView(ints, line, index)

    def snapshot(self) -> list[WorkerStats]:
        """Copies of the slots in use."""
        return [s for s in (self.slot(i).snapshot() for i in range(self.size)) if s.pid]


_PAGE = os.sysconf("SC_PAGE_SIZE")


def slot_line(line: str) -> bytes:
    """A request line as a slot holds it: latin-1, cut to fit, NUL-terminated."""
    return line.encode("latin-1", "replace")[: LINE_BYTES - 1] + b"\0"


def store_memory(slot: SlotView) -> int:
    """Read this process's RSS and VSZ into ``slot``; returns the RSS in bytes (0 if unknown)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            vsz_pages, rss_pages = handle.read().split()[:2]
    except OSError:
        return 0
    rss = int(rss_pages) * _PAGE
    slot.rss = rss
    slot.vsz = int(vsz_pages) * _PAGE
    return rss
