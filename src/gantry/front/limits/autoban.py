"""Automatic bans (fail2ban, built in): rules count events per address in a window, and
an address past a rule's count is banned for a while, in every worker at once.

:class:`Banner` is what the rules ban through; :class:`LocalBanner` keeps the bans in a
shared table (every worker sees a ban at once) and appends each to a file, one JSON
object a line ``{"addr", "until", "reason"}`` (``until`` in Unix time), read back at
start so bans survive a restart. A blocklist can read the same file.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final, Protocol

from gantry.config.front_model import AutobanRule
from gantry.front.blocklist import BAN_HIT, FILE_HIT, BanStore
from gantry.front.limits.table import SharedTable, digest
from gantry.front.limits.zones import now_ms

__all__ = [
    "BANNED",
    "BAN_HIT",
    "FILE_HIT",
    "Autoban",
    "BanTable",
    "Banner",
    "LocalBanner",
]

log: Final = logging.getLogger("gantry.front")

#: addresses banned at once at most (the LRU ban goes first past it)
BAN_SLOTS: Final = 65536
#: addresses counted per rule at most
COUNT_SLOTS: Final = 65536
#: the ban table's counters: requests refused by a ban in it; FILE_HIT and BAN_HIT (by a
#: blocklist file's line, by a ban of the bans file) are the blocklist handler's
BANNED: Final = 0


class Banner(Protocol):
    """What bans an address for a while (autoban; a blocklist may implement it too)."""

    def ban(self, addr: str, seconds: float, reason: str) -> None:
        """Refuse ``addr`` for ``seconds`` from now; ``reason`` is logged and kept."""


class BanTable:
    """The banned addresses, in shared memory (entry value a: banned until, Unix ms)."""

    def __init__(self, slots: int = BAN_SLOTS) -> None:
        self.table = SharedTable(slots)

    def add(self, addr: str, until_ms: int) -> None:
        """Ban ``addr`` until ``until_ms`` (a longer ban already there stays)."""
        table = self.table
        key = digest(addr.encode("latin-1", "replace"))
        table.lock()
        try:
            slot = table.find(key)
            if slot < 0:
                table.insert(key, until_ms, 0, 0)
            elif table.values(slot)[0] < until_ms:
                table.store(slot, until_ms, 0, 0)
        finally:
            table.unlock()

    def banned(self, addr: str) -> bool:
        """Whether ``addr`` is banned now (an expired ban is dropped)."""
        table = self.table
        if not table.used():  # no ban at all: no lock (a racy read of one int is harmless)
            return False
        key = digest(addr.encode("latin-1", "replace"))
        table.lock()
        try:
            slot = table.find(key)
            if slot < 0:
                return False
            if table.values(slot)[0] > time.time() * 1000:
                table.bump(BANNED)  # blocked requests (stats)
                return True
            table.remove(slot)
            return False
        finally:
            table.unlock()

    def active(self) -> int:
        """Bans not yet expired (an expired one stays in the table until looked up)."""
        table = self.table
        now = time.time() * 1000
        table.lock()
        try:
            slots = [table.find(key) for key in table.keys()]
            return sum(1 for slot in slots if slot >= 0 and table.values(slot)[0] > now)
        finally:
            table.unlock()

    def count(self, counter: int, amount: int = 1) -> None:
        """Add ``amount`` to ``counter``: BANNED (by this table), FILE_HIT or BAN_HIT (the
        blocklist refused a line of its files, or a ban of the bans file)."""
        table = self.table
        table.lock()
        try:
            table.bump(counter, amount)
        finally:
            table.unlock()

    def remove(self, addr: str) -> None:
        """Lift a ban."""
        table = self.table
        key = digest(addr.encode("latin-1", "replace"))
        table.lock()
        try:
            slot = table.find(key)
            if slot >= 0:
                table.remove(slot)
        finally:
            table.unlock()

    def close(self) -> None:
        """Unmap the table."""
        self.table.close()


class LocalBanner:
    """Bans into the shared :class:`BanTable` (every worker refuses at once) and into the
    runtime bans file through :class:`BanStore` (kept across restarts, listed by
    ``gantry ctl blocked``; its lock is the one ``gantry ctl`` takes too). ``path``
    None: not kept."""

    def __init__(self, bans: BanTable, path: str | None) -> None:
        self.bans = bans
        self.path = path
        self.store = BanStore(path) if path else None
        #: called with (addr, until in Unix seconds, reason) after each ban (Redis)
        self.on_ban: Callable[[str, float, str], None] | None = None

    def ban(self, addr: str, seconds: float, reason: str, source: str = "") -> None:
        """Refuse ``addr`` for ``seconds`` in every worker; keep the ban in the file."""
        until = time.time() + seconds
        self.bans.add(addr, int(until * 1000))
        log.warning("banned %s for %gs: %s", addr, seconds, reason)
        if self.store is not None:
            try:
                self.store.append(addr, seconds, reason, source)
            except (OSError, ValueError) as exc:
                log.error("cannot keep the ban of %s in %s: %s", addr, self.path, exc)
        if self.on_ban is not None:
            self.on_ban(addr, until, reason)

    def load(self) -> int:
        """Bans of the file still running, into the table (at start); how many. A CIDR
        ban is the blocklist's to apply (the table holds single addresses)."""
        if self.store is None:
            return 0
        try:
            current = self.store.active()
        except OSError as exc:
            log.error("cannot read the bans in %s: %s", self.path, exc)
            return 0
        for ban in current:
            if "/" not in ban.target:
                until = 2**62 if math.isinf(ban.until) else int(ban.until * 1000)
                self.bans.add(ban.target, until)
        if current:
            log.info("%d bans still running, from %s", len(current), self.path)
        return len(current)


def _matches(when: str, kind: str, status: int) -> bool:
    if kind:
        return when == kind
    if when.endswith("xx"):
        return status // 100 == int(when[0])
    return when.isdigit() and int(when) == status


class Autoban:
    """The ``[[front.autoban]]`` rules: events per address counted in a shared table per
    rule (entry values: count, window start in ms), a ban past the count."""

    def __init__(self, rules: tuple[AutobanRule, ...], banner: Banner) -> None:
        self.rules = rules
        self.banner = banner
        self.tables = [SharedTable(COUNT_SLOTS) for _ in rules]
        #: whether a response status can matter (else response() returns at once)
        self.by_status = any(r.when not in ("limit_req", "limit_conn") for r in rules)

    def event(self, remote_addr: str, kind: str) -> None:
        """``remote_addr`` was refused by a limit (``kind``: limit_req, limit_conn), now."""
        self._count(remote_addr, kind, 0, now_ms())

    def response(self, remote_addr: str, status: int, now: int) -> None:
        """A response went to ``remote_addr`` at ``now`` (the monotonic clock in ms, as
        ``now_ms``: the caller's own read, taken for the request's time anyway); rules on
        statuses count it."""
        if self.by_status:
            self._count(remote_addr, "", status, now)

    def _count(self, remote_addr: str, kind: str, status: int, now: int) -> None:
        if not remote_addr:
            return
        for index, rule in enumerate(self.rules):
            if not _matches(rule.when, kind, status):
                continue
            table = self.tables[index]
            key = digest(remote_addr.encode("latin-1", "replace"))
            window = int(rule.within * 1000)
            reached = False
            table.lock()
            try:
                slot = table.find(key)
                if slot < 0:
                    count = 1
                    slot = table.insert(key, 1, now, 0)
                else:
                    count, start, _ = table.values(slot)
                    if now - start > window:
                        count, start = 1, now
                    else:
                        count += 1
                    table.store(slot, count, start, 0)
                if count >= rule.count:
                    table.remove(slot)  # counted again from zero once the ban ends
                    table.bump(0)  # bans by this rule (stats)
                    reached = True
            finally:
                table.unlock()
            if reached:
                reason = (
                    f"autoban rule {index + 1} (when {rule.when!r}: {rule.count} within "
                    f"{rule.within:g}s)"
                )
                if isinstance(self.banner, LocalBanner):
                    self.banner.ban(remote_addr, rule.ban_for, reason, f"autoban rule {index + 1}")
                else:
                    self.banner.ban(remote_addr, rule.ban_for, reason)

    def close(self) -> None:
        """Unmap the counting tables."""
        for table in self.tables:
            table.close()
