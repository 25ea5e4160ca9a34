"""The limit zones of a front: nginx's limit_req (a leaky bucket per key) and limit_conn
(requests in progress per key), each over a :class:`SharedTable` every worker shares.

The arithmetic is nginx's (ngx_http_limit_req_module.c): the rate and the excess are in
thousandths of a request, time in milliseconds, so the counts come out as nginx's do.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Mapping
from typing import Final

from gantry.config.front_model import LimitConnZone, LimitReqZone
from gantry.front.balancing import hash_key
from gantry.front.limits.table import SharedTable, digest
from gantry.protocol.http1 import RequestHead

__all__ = ["LimitConnState", "LimitReqState", "LimitZones", "limit_key", "now_ms"]

_VARIABLE: Final = re.compile(r"\$(\{[a-z0-9_]+\}|[a-z0-9_]+)")
# lookup outcomes, as nginx's
OK: Final = 0  # within the limit, counted
AGAIN: Final = 1  # within the limit, to be counted once every limit passed
BUSY: Final = 2  # over the limit


def now_ms() -> int:
    """The monotonic clock in milliseconds (the same in every process of the host)."""
    return time.monotonic_ns() // 1_000_000


def binary_address(remote_addr: str) -> str:
    """nginx's $binary_remote_addr (4 or 16 bytes, as latin-1 text); empty for a client
    without an IP address (a unix socket), whose requests are then not limited."""
    try:
        packed = ipaddress.ip_address(remote_addr).packed
    except ValueError:
        return ""
    return packed.decode("latin-1")


def limit_key(template: str, head: RequestHead, remote_addr: str, server_name: str) -> bytes:
    """The key of a request in a zone: ``template``'s nginx variables replaced."""
    if template == "$binary_remote_addr":  # the usual key: no substitution
        return binary_address(remote_addr).encode("latin-1")
    if template == "$remote_addr":
        return remote_addr.encode("latin-1")

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        if name == "binary_remote_addr":
            return binary_address(remote_addr)
        if name == "server_name":
            return server_name
        return hash_key("$" + name, head, remote_addr)

    return _VARIABLE.sub(value, template).encode("latin-1", "replace")


class LimitReqState:
    """One limit_req zone: a leaky bucket per key (entry values: excess in thousandths
    of a request, the last time it was counted in ms)."""

    def __init__(self, zone: LimitReqZone, table: SharedTable) -> None:
        self.name = zone.name
        self.key = zone.key
        #: thousandths of a request per second, as nginx keeps it
        self.rate = max(1, int(zone.rate * 1000))
        self.table = table
        #: refusals counted by this worker (stats)
        self.rejected = 0
        self.delayed = 0
        self.passed = 0

    def lookup(self, key: bytes, burst: int, now: int, account: bool) -> tuple[int, int]:
        """nginx's ngx_http_limit_req_lookup: (OK, AGAIN or BUSY, the excess). ``burst``
        in thousandths; ``account``: store the new excess now (the last limit)."""
        table = self.table
        hashed = digest(key)
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                table.insert(hashed, 0, now, 0)
                return (OK if account else AGAIN), 0
            excess, last, _ = table.values(slot)
            excess = _leak(excess, last, now, self.rate) + 1000
            if excess > burst:
                return BUSY, excess
            if account:
                table.store(slot, excess, now if now != last else last, 0)
                return OK, excess
            return AGAIN, excess
        finally:
            table.unlock()

    def account(self, key: bytes, now: int) -> int:
        """Count a request that every later limit let through (nginx's account step for
        the limits before the last): the stored excess after it."""
        table = self.table
        hashed = digest(key)
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                table.insert(hashed, 0, now, 0)
                return 0
            excess, last, _ = table.values(slot)
            excess = _leak(excess, last, now, self.rate) + 1000
            table.store(slot, excess, now, 0)
            return excess
        finally:
            table.unlock()


def _leak(excess: int, last: int, now: int, rate: int) -> int:
    """``excess`` after leaking at ``rate`` since ``last`` (never below zero)."""
    ms = now - last
    if ms < -60000:
        ms = 1  # the clock went back a lot: as nginx, as if 1 ms passed
    elif ms < 0:
        ms = 0
    excess -= rate * ms // 1000
    return excess if excess > 0 else 0


class LimitConnState:
    """One limit_conn zone: requests in progress per key (entry value a)."""

    def __init__(self, zone: LimitConnZone, table: SharedTable) -> None:
        self.name = zone.name
        self.key = zone.key
        self.table = table
        self.rejected = 0

    def acquire(self, key: bytes, limit: int) -> bool:
        """Count one more request for ``key`` if fewer than ``limit`` are in progress."""
        table = self.table
        hashed = digest(key)
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                table.insert(hashed, 1, 0, 0)
                return True
            count, b, c = table.values(slot)
            if count >= limit:
                return False
            table.store(slot, count + 1, b, c)
            return True
        finally:
            table.unlock()

    def release(self, key: bytes) -> None:
        """A request counted by ``acquire`` ended; a key with none left goes."""
        table = self.table
        hashed = digest(key)
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                return  # evicted meanwhile (a full zone)
            count, b, c = table.values(slot)
            if count <= 1:
                table.remove(slot)
            else:
                table.store(slot, count - 1, b, c)
        finally:
            table.unlock()


class LimitZones:
    """Every limit zone of a front's configuration, made once (by the master, before
    the workers fork) so all workers share them."""

    def __init__(
        self,
        req_zones: Mapping[str, LimitReqZone],
        conn_zones: Mapping[str, LimitConnZone],
    ) -> None:
        self.req = {
            name: LimitReqState(zone, SharedTable.for_size(zone.size))
            for name, zone in req_zones.items()
        }
        self.conn = {
            name: LimitConnState(zone, SharedTable.for_size(zone.size))
            for name, zone in conn_zones.items()
        }

    def close(self) -> None:
        """Unmap every zone."""
        for req in self.req.values():
            req.table.close()
        for conn in self.conn.values():
            conn.table.close()
