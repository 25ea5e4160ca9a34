"""What a front's control socket answers: ``purge``, ``status``, ``block``, ``unblock``
and ``blocked`` (``gantry ctl``).

Both walk cache zones on disk, so both run off the master's loop, in a child forked
from the master (see ``control/server.py``): what the child reads of the master
(generation, workers) is the master's state at the fork. A purge removes (or, soft,
marks stale) files of the zone's store, which every worker shares: each worker's
memory tier checks an entry's file on every use, so all of them see it at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from gantry.config.front_model import CacheZone, FrontConfig, SharedStore
from gantry.control.protocol import (
    Arguments,
    CommandError,
    CommandRegistry,
    flag_argument,
    text_argument,
)
from gantry.front.blocklist import BanStore, normalise_target
from gantry.front.cache.packs import packed_usage
from gantry.front.cache.policy import cache_key
from gantry.front.cache.store import CacheStore
from gantry.process.master import Master
from gantry.protocol.http1 import RequestHead

if TYPE_CHECKING:
    from gantry.front.limits.autoban import BanTable

#: a ban without an end, as Redis keeps it (its keys need an expiry): ten years
NO_END: Final = 10 * 365 * 86400.0

__all__ = ["block", "blocked", "front_commands", "key_of", "unblock"]

_ABSOLUTE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def front_commands(
    config: FrontConfig, master: Master, bans: BanTable | None = None
) -> CommandRegistry:
    """The commands of a front's control socket. A new one is a function of its arguments
    giving its answer's fields (CommandError for a clear refusal), registered here:
    ``off_loop`` when it may take long (it then runs in a child of the master). ``bans``:
    the workers' shared ban table, when there is one (a child of the master shares it)."""
    commands = CommandRegistry()
    commands.register("purge", lambda arguments: purge(config.caches, arguments), off_loop=True)
    master_pid = os.getpid()
    commands.register("status", lambda arguments: status(config, master, master_pid), off_loop=True)
    path, shared = config.ban_file, config.shared
    commands.register(
        "block", lambda arguments: block(path, bans, arguments, shared), off_loop=True
    )
    commands.register(
        "unblock", lambda arguments: unblock(path, bans, arguments, shared), off_loop=True
    )
    commands.register("blocked", lambda arguments: blocked(path, arguments, shared), off_loop=True)
    return commands


@contextlib.contextmanager
def _bans_file(path: str) -> Iterator[None]:
    """An OSError on the bans file as a clear refusal (the command runs as the workers'
    user, who must be able to write the file's folder)."""
    try:
        yield
    except OSError as exc:
        raise CommandError(
            f"the bans file {path}: {exc.strerror or exc} (the front's workers' user must be "
            "able to write its folder; [front] ban_file chooses another)"
        ) from None


def _store(path: str | None) -> BanStore:
    if not path:
        raise CommandError(
            "this front keeps no bans: set [front] control (the bans file is then beside "
            "it), or [front] ban_file, and restart it"
        )
    return BanStore(path)


def _target(arguments: Arguments) -> str:
    text = text_argument(arguments, "addr", required=True)
    assert text is not None
    try:
        return normalise_target(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _share(shared: SharedStore | None, addr: str, until: float | None, reason: str) -> str:
    """Tell the other fronts through Redis: "yes", "no" (none configured, or a network:
    Redis bans are single addresses) or why it failed (the local ban stands)."""
    if shared is None or "/" in addr:
        return "no"
    from gantry.front.limits.shared_redis import share_ban

    try:
        share_ban(shared, addr, until, reason)
    except Exception as exc:  # Redis down: the ban holds here; said in the answer
        return f"failed: {exc.__class__.__name__}: {exc}"
    return "yes"


def block(
    path: str | None,
    bans: BanTable | None,
    arguments: Arguments,
    shared: SharedStore | None = None,
) -> dict[str, Any]:
    """Ban ``addr`` (address or CIDR) for ``seconds`` (absent: no end), with ``reason``.
    Every worker reads the bans file within a second; a lone address goes into the shared
    table too, which every worker checks on each request, and to Redis when shared."""
    store = _store(path)
    target = _target(arguments)
    seconds = arguments.get("seconds")
    if seconds is not None and (
        not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0
    ):
        raise CommandError(f"seconds: expected a positive number, got {seconds!r}")
    reason = text_argument(arguments, "reason") or ""
    with _bans_file(store.path):
        ban = store.add(target, None if seconds is None else float(seconds), reason, "ctl")
    if bans is not None and "/" not in ban.target:
        bans.add(ban.target, 2**62 if math.isinf(ban.until) else int(ban.until * 1000))
    until = time.time() + NO_END if math.isinf(ban.until) else ban.until
    return {
        "target": ban.target,
        "until": None if math.isinf(ban.until) else ban.until,
        "shared": _share(shared, ban.target, until, reason),
    }


def unblock(
    path: str | None,
    bans: BanTable | None,
    arguments: Arguments,
    shared: SharedStore | None = None,
) -> dict[str, Any]:
    """Lift the ban of ``addr``, in the file, in the shared table and in Redis."""
    store = _store(path)
    target = _target(arguments)
    with _bans_file(store.path):
        found = store.remove(target)
    if bans is not None and "/" not in target:
        bans.remove(target)
    return {"target": target, "removed": found, "shared": _share(shared, target, None, "")}


def blocked(
    path: str | None, arguments: Arguments, shared: SharedStore | None = None
) -> dict[str, Any]:
    """The bans running now (expired ones are left out), each with its expiry, reason,
    source and refused requests, then those only Redis holds (made by other fronts:
    source "redis"), and the refused requests by blocklist-file entry."""
    store = _store(path)
    now = time.time()
    with _bans_file(store.path):
        hits = store.hits()
        active = store.active(now)
    entries = []
    for ban in sorted(active, key=lambda b: b.target):
        entries.append(
            {
                "target": ban.target,
                "until": None if math.isinf(ban.until) else ban.until,
                "reason": ban.reason,
                "source": ban.source or "file",
                "hits": hits.get(ban.target, 0),
            }
        )
    banned = {ban.target for ban in active}
    answer: dict[str, Any] = {"bans": entries, "path": path}
    if shared is not None:
        from gantry.front.limits.shared_redis import shared_bans

        try:
            remote = shared_bans(shared)
        except Exception as exc:  # Redis down: the local list stands, and says so
            answer["redis"] = f"failed: {exc.__class__.__name__}: {exc}"
        else:
            answer["redis"] = "yes"
            for addr, until, reason in sorted(remote):
                if addr not in banned and until > now:
                    entries.append(
                        {"target": addr, "until": until, "reason": reason, "source": "redis",
                         "hits": None}
                    )  # fmt: skip
    answer["file_hits"] = {entry: n for entry, n in hits.items() if entry not in banned}
    return answer


def key_of(zone: CacheZone, text: str) -> str:
    """The primary key ``text`` names in ``zone``: an absolute URL (``http://host/path``)
    is mapped through the zone's key as a GET of it would be; anything else is taken as
    a key already built."""
    if not _ABSOLUTE.match(text):
        return text
    rest = text.partition("://")[2].partition("#")[0]
    authority, slash, target = rest.partition("/")
    authority = authority.rpartition("@")[2]  # user information is never in a Host field
    head = RequestHead()
    head.method = "GET"
    head.target = ("/" + target).encode("utf-8", "surrogateescape")
    head.path, _, head.query = head.target.partition(b"?")
    head.headers = [(b"host", authority.encode("utf-8", "surrogateescape"))]
    return cache_key(zone.key, head, "", text[:6].lower() == "https:")


def purge(zones: dict[str, CacheZone], arguments: Arguments) -> dict[str, Any]:
    """Purge by ``url`` (one ending in '*' is a prefix, as the PURGE method reads it), by
    ``prefix`` or by ``tag``, in every zone or in ``zone``; ``soft`` marks the entries
    stale instead of removing them. The count, in all and by zone."""
    url = text_argument(arguments, "url")
    prefix = text_argument(arguments, "prefix")
    tag = text_argument(arguments, "tag")
    soft = flag_argument(arguments, "soft")
    if sum(value is not None for value in (url, prefix, tag)) != 1:
        raise CommandError("expected one of 'url', 'prefix' or 'tag'")
    if url is not None and url.endswith("*"):
        url, prefix = None, url
    if prefix is not None:
        prefix = prefix.removesuffix("*")
    counts: dict[str, int] = {}
    for zone in _chosen(zones, text_argument(arguments, "zone")):
        store = CacheStore(zone)
        if tag is not None:
            counts[zone.name] = store.purge(tag=tag, soft=soft)
        elif prefix is not None:
            counts[zone.name] = store.purge(key_of(zone, prefix), soft=soft)
        else:
            assert url is not None
            key = key_of(zone, url)
            counts[zone.name] = store.mark_stale(key) if soft else store.remove(key)
    return {"purged": sum(counts.values()), "soft": soft, "zones": counts}


def _chosen(zones: dict[str, CacheZone], name: str | None) -> list[CacheZone]:
    if not zones:
        raise CommandError("this front has no cache zone ([front.cache.NAME])")
    if name is None:
        return list(zones.values())
    if name not in zones:
        raise CommandError(f"no cache zone named {name!r} (known: {', '.join(zones)})")
    return [zones[name]]


def status(config: FrontConfig, master: Master, master_pid: int) -> dict[str, Any]:
    """The master, its generation and workers, and each cache zone's entries and bytes."""
    zones = {}
    for name, zone in config.caches.items():
        entries, size = zone_usage(zone.path)
        zones[name] = {"path": zone.path, "entries": entries, "bytes": size}
    return {
        "pid": master_pid,
        "generation": master.generation,
        "target_workers": master.target,
        "workers": master.describe_workers(),
        "reload_error": master.reload_error,
        "zones": zones,
    }


def zone_usage(root: str) -> tuple[int, int]:
    """(entries, bytes) of a zone's entries on disk: files (a Vary marker counts as one)
    and the records its index names in packs."""
    try:
        folders = [d for d in os.scandir(root) if len(d.name) == 2 and d.is_dir()]
        entries, size = packed_usage(root)
    except OSError:
        return 0, 0
    for folder in folders:
        try:
            items = list(os.scandir(folder.path))
        except OSError:
            continue
        for item in items:
            try:
                size += item.stat().st_size
            except OSError:
                continue  # removed meanwhile
            entries += 1
    return entries, size
