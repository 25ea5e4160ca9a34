"""The blocklist: client addresses refused before anything else runs.

Two sources, merged into one :class:`~gantry.front.addresses.AddressSet` per worker:

- the files of ``[front.blocklist] files`` (one address or CIDR a line, ``#`` comments),
  which people and tools edit while the front runs;
- the runtime bans file (``state``): bans with an expiry and a reason, made by a command
  (``gantry ctl block``) or a rule (autoban) through :class:`BanStore`, and kept across
  restarts. One JSON object a line, ``{"addr", "until", "reason"}``, as the autoban's
  ``ban_file``: the last line of an address wins, so an append-only writer works too.

Every worker polls the files' identity (inode, mtime, size) four times a second and
reloads the one that changed, so a change applies in every worker within a second with
no signal, no reload and nothing shared but the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from gantry.config.front_model import Blocklist, Location, VirtualServer
from gantry.front.addresses import AddressSet, network_key
from gantry.front.exchange import BodyStream, Exchange, Handler
from gantry.front.responses import status_line
from gantry.http.body import BodyBuffer
from gantry.process.runtime import process_alive

__all__ = [
    "Ban",
    "BanStore",
    "BlocklistHandler",
    "WatchedBlocklist",
    "normalise_target",
    "read_list",
]

log: Final = logging.getLogger("gantry.front")

#: seconds between two looks at the files (a change applies within a second)
POLL_EVERY: Final = 0.25

#: bytes of the bans file past which an append rewrites it with the running bans only
COMPACT_AT: Final = 1 << 20

#: addresses remembered with their verdict, per worker (cleared when full or rebuilt)
VERDICT_CACHE: Final = 65536
#: a verdict not yet looked up
_UNKNOWN: Final = "\0"

_Key = tuple[int, int, int]

#: the counters of the front's ban table (front/limits/autoban.py) a refusal bumps
FILE_HIT: Final = 1
BAN_HIT: Final = 2


class BlockCounters(Protocol):
    """Counters every worker shares (the ban table's): refused requests by source."""

    def count(self, counter: int, amount: int = 1) -> None:
        """Add ``amount`` to ``counter`` (FILE_HIT or BAN_HIT)."""


def read_list(text: str, where: str) -> list[tuple[_Key, str]]:
    """The entries of a blocklist file: (network key, the entry as written). A line that is
    not an address or CIDR is skipped, and said once per load."""
    entries: list[tuple[_Key, str]] = []
    bad = 0
    first_bad = ""
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        key = network_key(entry)
        if key is None:
            bad += 1
            if not first_bad:
                first_bad = f"line {number}: {entry[:60]!r}"
            continue
        entries.append((key, entry))
    if bad:
        log.warning(
            "blocklist %s: %d line(s) skipped, not an address or CIDR (first: %s)",
            where, bad, first_bad,
        )  # fmt: skip
    return entries


def normalise_target(text: str) -> str:
    """An address or CIDR as the bans file keeps it: a network in its shortest form, a
    lone address without its prefix length, a v4-mapped IPv6 one (``::ffff:1.2.3.4``)
    as the IPv4 address it is. ValueError when it is neither."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or CIDR (IPv4 or IPv6), got {text!r}") from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96), strict=False)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _read_counts(path: str) -> dict[str, int]:
    """A hit report: {entry: count}; empty if it is missing or not one."""
    try:
        with open(path, encoding="utf-8") as file:
            counts = json.load(file)
    except (OSError, ValueError):
        return {}
    if not isinstance(counts, dict):
        return {}
    return {str(k): v for k, v in counts.items() if isinstance(v, int)}


@dataclass(frozen=True)
class Ban:
    """A runtime ban: an address or CIDR, until when (unix time; inf: no end), and why."""

    target: str
    until: float
    reason: str = ""
    #: who made it: "ctl", "autoban rule N", "redis" ("" in files of older versions)
    source: str = ""

    def line(self) -> str:
        """The ban as a line of the bans file: one JSON object ({"addr", "until",
        "reason", "source"}; until null: no end)."""
        until = None if math.isinf(self.until) else round(self.until, 3)
        entry = {"addr": self.target, "until": until, "reason": self.reason}
        if self.source:
            entry["source"] = self.source
        return json.dumps(entry) + "\n"


class BanStore:
    """The runtime bans file: the API a control command or an autoban rule calls (from
    any process of the host; writers take a lock, readers see whole files only)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.hits_dir = path + ".hits"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> list[Ban]:
        """Every ban in the file, expired or not."""
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            return []
        # later lines replace earlier ones of the same target: an append-only writer
        # (the autoban's ban_file) renews a ban by writing it again
        bans: dict[str, Ban] = {}
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            target, until, reason = entry.get("addr"), entry.get("until"), entry.get("reason")
            if not isinstance(target, str) or network_key(target) is None:
                continue
            if until is None:
                until = math.inf
            if not isinstance(until, int | float) or isinstance(until, bool):
                continue
            source = entry.get("source")
            bans[target] = Ban(
                target,
                float(until),
                reason if isinstance(reason, str) else "",
                source if isinstance(source, str) else "",
            )
        return list(bans.values())

    def active(self, now: float | None = None) -> list[Ban]:
        """The bans not yet expired."""
        now = time.time() if now is None else now
        return [ban for ban in self.load() if ban.until > now]

    def _write(self, bans: list[Ban]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".bans-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write("".join(ban.line() for ban in bans))
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o644)  # workers that dropped privileges read it
            os.replace(temporary, self.path)  # readers see the old file or the new one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def add(
        self, target: str, duration: float | None = None, reason: str = "", source: str = ""
    ) -> Ban:
        """Ban ``target`` (an address or CIDR, normalised) for ``duration`` seconds (None:
        no end); a ban of the same target is replaced. Expired bans are dropped on the
        way. Every writer (ctl, autoban) takes the one lock, so none loses another's."""
        now = time.time()
        ban = Ban(
            normalise_target(target),
            math.inf if duration is None else now + duration,
            reason,
            source,
        )
        with self._locked():
            bans = [b for b in self.load() if b.until > now and b.target != ban.target]
            bans.append(ban)
            self._write(bans)
        return ban

    def append(self, target: str, duration: float, reason: str = "", source: str = "") -> Ban:
        """Ban ``target`` for ``duration`` seconds by appending one line (the last line of
        a target wins): what a worker calls on its loop (autoban), cheap whatever the
        file's size, without fsync; under the lock ``remove`` takes, so a rewrite never
        drops it."""
        now = time.time()
        ban = Ban(normalise_target(target), now + duration, reason, source)
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, ban.line().encode())
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > COMPACT_AT:  # renewed and expired lines dropped: the file stays small
                self._write([b for b in self.load() if b.until > now])
        return ban

    def ban(self, addr: str, seconds: float, reason: str) -> None:
        """The autoban's Banner protocol: ban ``addr`` for ``seconds``."""
        self.add(addr, seconds, reason)

    def remove(self, target: str) -> bool:
        """Lift the ban of ``target`` (normalised); False if there was none running."""
        target = normalise_target(target)
        now = time.time()
        with self._locked():
            bans = self.load()
            kept = [b for b in bans if b.until > now and b.target != target]
            found = any(b.target == target and b.until > now for b in bans)
            if found or len(kept) != len(bans):
                self._write(kept)
        return found

    def hits(self) -> dict[str, int]:
        """Refused requests by entry (as written), summed over every worker's report."""
        total: dict[str, int] = {}
        try:
            names = os.listdir(self.hits_dir)
        except FileNotFoundError:
            return total
        for name in names:
            if name.startswith("."):
                continue
            for entry, count in _read_counts(os.path.join(self.hits_dir, name)).items():
                total[entry] = total.get(entry, 0) + count
        return total

    def compact_hits(self) -> None:
        """Fold the reports of workers that are gone into one ("total"), so the folder
        holds one file per live worker and the sums stay whole."""
        try:
            names = [n for n in os.listdir(self.hits_dir) if n.isdigit()]
        except FileNotFoundError:
            return
        gone = [name for name in names if not process_alive(int(name))]
        if not gone:
            return
        with self._locked():
            total: dict[str, int] = {}
            for name in ["total", *gone]:
                counts = _read_counts(os.path.join(self.hits_dir, name))
                for entry, count in counts.items():
                    total[entry] = total.get(entry, 0) + count
            self.report_hits("total", total)
            for name in gone:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.hits_dir, name))

    def report_hits(self, worker: str, counts: dict[str, int]) -> None:
        """A worker's hit counts so far (its file replaced whole)."""
        os.makedirs(self.hits_dir, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.hits_dir, prefix=".hits-")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(counts, file)
        os.replace(temporary, os.path.join(self.hits_dir, worker))


class WatchedBlocklist:
    """One worker's view of the blocklist: its files and bans as one AddressSet, reloaded
    when a file changes or a ban expires."""

    def __init__(self, config: Blocklist, counters: BlockCounters | None = None) -> None:
        self.config = config
        #: the front's shared counters of refused requests, by source (stats)
        self.counters = counters
        #: the entries that are bans (the others are lines of the files)
        self._ban_entries: set[str] = set()
        self.status = config.status
        self.store = BanStore(config.state) if config.state else None
        self.set = AddressSet()
        #: address -> the entry holding it (None: none), for the current set (bounded)
        self.verdicts: dict[str, str | None] = {}
        #: refused requests by entry (as written), in this worker
        self.hits: dict[str, int] = {}
        self._hits_reported = 0
        self._hits_writable = True
        self._hits_total = 0
        #: refusals by a file's line and by a ban not yet added to ``counters``
        self._unshared_file_hits = 0
        self._unshared_ban_hits = 0
        self._seen: dict[str, tuple[int, int, int, int] | None] = {}
        self._entries: dict[str, list[tuple[_Key, str]]] = {}
        self._bans: list[Ban] = []
        self._next_expiry = math.inf
        self.poll(force=True)
        if self.store is not None:
            try:
                self.store.compact_hits()  # the reports of workers before this one
            except OSError as exc:
                log.warning("blocklist hits: cannot compact them: %s", exc)

    def poll(self, force: bool = False) -> bool:
        """Look at the files; rebuild the set if one changed or a ban expired."""
        changed = force
        for path in self.config.files:
            identity = _identity(path)
            if force or identity != self._seen.get(path, ()):
                self._seen[path] = identity
                self._entries[path] = self._read(path) if identity is not None else []
                changed = True
        now = time.time()
        if self.store is not None:
            identity = _identity(self.store.path)
            if force or identity != self._seen.get(self.store.path, ()):
                self._seen[self.store.path] = identity
                self._bans = self.store.load()
                changed = True
            if now >= self._next_expiry:
                changed = True
        if changed:
            self._rebuild(now)
        return changed

    def _read(self, path: str) -> list[tuple[_Key, str]]:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                return read_list(file.read(), path)
        except OSError as exc:
            log.warning("blocklist %s: cannot read it: %s", path, exc)
            return []

    def _rebuild(self, now: float) -> None:
        entries = [entry for path in self.config.files for entry in self._entries[path]]
        active = [ban for ban in self._bans if ban.until > now]
        for ban in active:
            key = network_key(ban.target)
            if key is not None:
                entries.append((key, ban.target))
        self._ban_entries = {ban.target for ban in active}
        self._next_expiry = min((ban.until for ban in active), default=math.inf)
        self.set = AddressSet(entries)
        self.verdicts = {}

    def refused(self, address: str) -> bool:
        """Whether ``address`` is blocked (and if so, the hit is counted)."""
        verdicts = self.verdicts
        entry = verdicts.get(address, _UNKNOWN)
        if entry is _UNKNOWN:
            entry = self.set.find(address)
            if len(verdicts) >= VERDICT_CACHE:
                verdicts.clear()
            verdicts[address] = entry
        if entry is None:
            return False
        self.hits[entry] = self.hits.get(entry, 0) + 1
        self._hits_total += 1
        # counted here, shared by share_counts: a refusal takes no lock of the shared
        # counters (a flood of refused requests is the case to be cheap in)
        if entry in self._ban_entries:
            self._unshared_ban_hits += 1
        else:
            self._unshared_file_hits += 1
        return True

    def share_counts(self) -> None:
        """Add the refusals counted since the last call to the front's shared counters
        (the worker calls it as it polls the files, and at its end)."""
        counters = self.counters
        if counters is None:
            return
        if self._unshared_file_hits:
            counters.count(FILE_HIT, self._unshared_file_hits)
            self._unshared_file_hits = 0
        if self._unshared_ban_hits:
            counters.count(BAN_HIT, self._unshared_ban_hits)
            self._unshared_ban_hits = 0

    def report(self, worker: str) -> None:
        """Write this worker's hit counts for BanStore.hits, when they changed."""
        if self.store is None or not self._hits_writable or self._hits_total == self._hits_reported:
            return
        self._hits_reported = self._hits_total
        try:
            self.store.report_hits(worker, self.hits)
        except OSError as exc:
            # said once: a worker that dropped privileges may not write there at all
            log.warning("blocklist hits: cannot write them (counted in memory only): %s", exc)
            self._hits_writable = False


class BlocklistHandler(Handler):
    """First after the real address: a blocked client gets 403, or no answer (444)."""

    def __init__(self, blocklist: WatchedBlocklist, page: tuple[bytes, bytes]) -> None:
        self.blocklist = blocklist
        # the refusal's status line and fields, made once: a flood of refused requests
        # is the case to be cheap in
        content_type, body = page
        self.head = (
            status_line(403)
            + b"Content-Type: " + content_type + b"\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        )  # fmt: skip
        self.body = body

    def applies(self, server: VirtualServer, location: Location | None) -> bool:
        return True

    def handle(self, exchange: Exchange, body: BodyBuffer | BodyStream | None) -> bool:
        blocklist = self.blocklist
        if not blocklist.set or not blocklist.refused(exchange.remote_addr):
            return False
        if blocklist.status == 444:
            exchange.drop()
        else:
            page = b"" if exchange.head.method == "HEAD" else self.body
            exchange.respond_refused(self.head, page)
        return True
