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

from mypy_extensions import i64

from gantry.config.front_model import LimitConnZone, LimitReqZone
from gantry.front.balancing import hash_key
from gantry.front.limits.table import (
    GENERATION_INT,
    NEWER_INT,
    NO_SLOT,
    SLOT_INTS,
    SLOT_QS,
    VALUES,
    SharedTable,
    digest,
)
from gantry.protocol.http1 import RequestHead

__all__ = [
    "NOW",
    "Keyed",
    "LimitConnState",
    "LimitReqState",
    "LimitZones",
    "ZoneKey",
    "limit_key",
    "now_ms",
]

_VARIABLE: Final = re.compile(r"\$(\{[a-z0-9_]+\}|[a-z0-9_]+)")
# lookup outcomes, as nginx's
# the counters of a zone's table (stats)
REJECTED: Final = 0
DELAYED: Final = 1
#: a check's time that is the clock's when it counts (see LimitReqState.check)
NOW: Final = -1
OK: Final = 0  # within the limit, counted
AGAIN: Final = 1  # within the limit, to be counted once every limit passed
BUSY: Final = 2  # over the limit


# Bound once: compiled, a call through a Final name is a direct call, where
# ``time.monotonic_ns()`` looks its function up by name on each call.
_monotonic_ns: Final = time.monotonic_ns


def now_ms() -> int:
    """The monotonic clock in milliseconds (the same in every process of the host)."""
    return _monotonic_ns() // 1_000_000


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
    return _evaluate(_recipe(template), head, remote_addr, server_name)


#: a key template split once: each part literal text (False, text) or a variable
#: (True, its name without "$")
_Recipe = tuple[tuple[bool, str], ...]


def _recipe(template: str) -> _Recipe:
    """``template`` as its literal parts and its variables, in order."""
    parts: list[tuple[bool, str]] = []
    at = 0
    for match in _VARIABLE.finditer(template):
        if match.start() > at:
            parts.append((False, template[at : match.start()]))
        parts.append((True, match.group(1).strip("{}")))
        at = match.end()
    if at < len(template):
        parts.append((False, template[at:]))
    return tuple(parts)


def _evaluate(recipe: _Recipe, head: RequestHead, remote_addr: str, server_name: str) -> bytes:
    """A request's key by ``recipe`` (see _recipe)."""
    out: list[str] = []
    for variable, text in recipe:
        if not variable:
            out.append(text)
        elif text == "binary_remote_addr":
            out.append(binary_address(remote_addr))
        elif text == "remote_addr":
            out.append(remote_addr)
        elif text == "server_name":
            out.append(server_name)
        else:
            out.append(hash_key("$" + text, head, remote_addr))
    return "".join(out).encode("latin-1", "replace")


#: addresses whose key digest a zone remembers (cleared when full)
ADDRESS_CACHE: Final = 4096
#: the head an address's key is made with (never read: the address is the whole key)
_NO_HEAD: Final = RequestHead()


class Keyed:
    """A request's key in a zone: its digest (b"": an empty key, not limited), and for a
    key kept across requests the slot its entry was in last time with that slot's
    generation then (a hint, used only while the generation is unchanged: the entry
    may have gone since, and another taken the slot)."""

    __slots__ = ("digest", "remembered", "slot", "generation")

    def __init__(self, digest: bytes) -> None:
        self.digest = digest
        #: kept across requests: the slot hint is worth keeping (``remember``)
        self.remembered = False
        self.slot: i64 = NO_SLOT
        #: the slot's generation when the entry was found in it (0: none)
        self.generation: i64 = 0

    def remember(self) -> None:
        """Ready the key for the slot hint (a key kept across requests)."""
        self.remembered = True


class ZoneKey:
    """A zone's key template, split once into its parts and evaluated per request; a key
    that is the client's address alone is evaluated and digested once per address (a
    per-worker memo, which also keeps the slot hint of the address's entry)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.recipe = _recipe(template)
        self.by_address = template in ("$binary_remote_addr", "$remote_addr")
        self._memo: dict[str, Keyed] = {}
        # the last address asked for and its key: a keep-alive client's next request
        # (the usual case) is one string comparison, not a dict lookup
        self._last_address = ""
        self._last_keyed = Keyed(b"")

    def keyed(self, head: RequestHead, remote_addr: str, server_name: str) -> Keyed:
        """A request's key (its digest empty for an empty key)."""
        if self.by_address:
            return self.of_address(remote_addr)
        return self._evaluate(head, remote_addr, server_name)

    def of_address(self, remote_addr: str) -> Keyed:
        """The key of a request from ``remote_addr`` where the key is the address alone
        (``by_address``): the request itself is not read."""
        if remote_addr == self._last_address:
            return self._last_keyed
        memo = self._memo
        keyed = memo.get(remote_addr)
        if keyed is None:
            keyed = self._evaluate(_NO_HEAD, remote_addr, "")
            keyed.remember()
            if len(memo) >= ADDRESS_CACHE:
                memo.clear()
            memo[remote_addr] = keyed
        self._last_address = remote_addr
        self._last_keyed = keyed
        return keyed

    def _evaluate(self, head: RequestHead, remote_addr: str, server_name: str) -> Keyed:
        key = _evaluate(self.recipe, head, remote_addr, server_name)
        return Keyed(digest(key) if key else b"")

    def digest_of(self, head: RequestHead, remote_addr: str, server_name: str) -> bytes:
        """The digest of a request's key; b"" for an empty key (not limited)."""
        return self.keyed(head, remote_addr, server_name).digest


class LimitReqState:
    """One limit_req zone: a leaky bucket per key (entry values: excess in thousandths
    of a request, the last time it was counted in ms)."""

    def __init__(self, zone: LimitReqZone, table: SharedTable) -> None:
        self.name = zone.name
        self.key = ZoneKey(zone.key)
        #: thousandths of a request per second, as nginx keeps it
        self.rate: i64 = max(1, int(zone.rate * 1000))
        self.table = table
        #: the C helper's check of a remembered entry (None: without it, Python's below)
        self.bucket_check = table.bucket_check(self.rate)

    def check(self, keyed: Keyed, burst: int, now: int) -> int:
        """A request's only limit_req (nginx's lookup and account at once): the excess
        with it counted at ``now`` (ms; NOW: the clock's), or, over ``burst``
        (thousandths), the excess it would have made, refused and not counted. This is
        every limited request's path: the entry is read in one call from the slot it
        was in last time when it is still there."""
        slot: i64 = keyed.slot
        if slot != NO_SLOT:
            bucket_check = self.bucket_check
            if bucket_check is not None:
                # all of it in one C call (clock, lock, generation, LRU, bucket); a busy
                # lock or an entry gone from its slot: the same work below, in Python
                excess: i64 = bucket_check(slot, keyed.generation, now, burst)
                if excess >= 0:
                    return excess
        if now == NOW:
            now = now_ms()
        table = self.table
        if not table.try_lock():
            table.wait_for_lock()
        try:
            if slot != NO_SLOT:
                # the entry read an integer at a time: no tuple, no bytes made
                ints = table.slot_ints
                at: i64 = slot * SLOT_INTS
                if ints[at + GENERATION_INT] != keyed.generation:
                    slot = NO_SLOT  # the entry went (a full zone): look it up
                elif ints[at + NEWER_INT] != NO_SLOT:
                    table.touch(slot)  # not the most recent yet
            if slot == NO_SLOT:
                slot = table.find(keyed.digest)
                if slot == NO_SLOT:
                    slot = table.insert(keyed.digest, 0, now, 0)
                    if keyed.remembered:
                        keyed.slot = slot
                        keyed.generation = table.generation(slot)
                    return 0
                if keyed.remembered:  # a key made per request is never seen again
                    keyed.slot = slot
                    keyed.generation = table.generation(slot)
            # native integers (i64): no int object made for the arithmetic
            qs = table.slot_qs
            at = slot * SLOT_QS
            excess = qs[at + 2]
            last: i64 = qs[at + 3]
            ms: i64 = now - last
            if ms < 0:
                ms = 1 if ms < -60000 else 0  # the clock went back (a lot: as 1 ms)
            # nginx adds this request before clamping: a key idle for 1/rate is at zero
            if ms:  # (a busy key's requests mostly come within its last millisecond)
                excess -= self.rate * ms // 1000
            excess += 1000
            if excess < 0:
                excess = 0
            if excess > burst:
                table.bump(REJECTED)
                return excess
            # (the third value stays 0: a limit_req entry never sets it)
            qs[at + 2] = excess
            if ms:
                qs[at + 3] = now
            return excess
        finally:
            table.unlock()

    def lookup(self, hashed: bytes, burst: int, now: int, account: bool) -> tuple[int, int]:
        """nginx's ngx_http_limit_req_lookup for the key digest ``hashed``: (OK, AGAIN or
        BUSY, the excess). ``burst`` in thousandths; ``account``: store the new excess now
        (the last limit)."""
        table = self.table
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                table.insert(hashed, 0, now, 0)
                return (OK if account else AGAIN), 0
            at = table.offset(slot)
            excess, last, _ = VALUES.unpack_from(table.map, at)
            # _leak, inline (this is every limited request's path)
            ms = now - last
            if ms < 0:
                ms = 1 if ms < -60000 else 0  # the clock went back (a lot: as 1 ms)
            # nginx adds this request before clamping: a key idle for 1/rate is at zero
            excess = excess - self.rate * ms // 1000 + 1000
            if excess < 0:
                excess = 0
            if excess > burst:
                table.bump(REJECTED)
                return BUSY, excess
            if account:
                VALUES.pack_into(table.map, at, excess, now if ms else last, 0)
                return OK, excess
            return AGAIN, excess
        finally:
            table.unlock()

    def delayed(self) -> None:
        """Count a delayed request (stats)."""
        self.count(DELAYED)

    def count(self, counter: int) -> None:
        """Add one to the zone's counter ``counter`` (REJECTED, DELAYED)."""
        self.table.lock()
        try:
            self.table.bump(counter)
        finally:
            self.table.unlock()

    def account(self, hashed: bytes, now: int) -> int:
        """Count a request that every later limit let through (nginx's account step for
        the limits before the last): the stored excess after it."""
        table = self.table
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                table.insert(hashed, 0, now, 0)
                return 0
            excess, last, _ = table.values(slot)
            excess = _leak(excess, last, now, self.rate)
            table.store(slot, excess, now, 0)
            return excess
        finally:
            table.unlock()


def _leak(excess: int, last: int, now: int, rate: int) -> int:
    """``excess`` after leaking at ``rate`` since ``last``, plus this request (as nginx:
    the request is added before the result is clamped at zero)."""
    ms = now - last
    if ms < -60000:
        ms = 1  # the clock went back a lot: as nginx, as if 1 ms passed
    elif ms < 0:
        ms = 0
    excess = excess - rate * ms // 1000 + 1000
    return excess if excess > 0 else 0


class LimitConnState:
    """One limit_conn zone: requests in progress per key (entry value a)."""

    def __init__(self, zone: LimitConnZone, table: SharedTable) -> None:
        self.name = zone.name
        self.key = ZoneKey(zone.key)
        self.table = table

    def acquire(self, hashed: bytes, limit: int) -> bool:
        """Count one more request for the key digest ``hashed`` if fewer than ``limit``
        are in progress."""
        table = self.table
        table.lock()
        try:
            slot = table.find(hashed)
            if slot < 0:
                table.insert(hashed, 1, 0, 0)
                return True
            count, b, c = table.values(slot)
            if count >= limit:
                table.bump(REJECTED)
                return False
            table.store(slot, count + 1, b, c)
            return True
        finally:
            table.unlock()

    def release(self, hashed: bytes) -> None:
        """A request counted by ``acquire`` ended; a key with none left goes."""
        table = self.table
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
