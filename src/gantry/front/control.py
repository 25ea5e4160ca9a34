"""What a front's control socket answers: ``purge`` and ``status`` (``gantry ctl``).

Both walk cache zones on disk, so both run off the master's loop, in a child forked
from the master (see ``control/server.py``): what the child reads of the master
(generation, workers) is the master's state at the fork. A purge removes (or, soft,
marks stale) files of the zone's store, which every worker shares: each worker's
memory tier checks an entry's file on every use, so all of them see it at once.
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

from gantry.config.front_model import CacheZone, FrontConfig
from gantry.control.protocol import (
    Arguments,
    CommandError,
    CommandRegistry,
    flag_argument,
    text_argument,
)
from gantry.front.cache.policy import cache_key
from gantry.front.cache.store import CacheStore
from gantry.process.master import Master
from gantry.protocol.http1 import RequestHead

__all__ = ["front_commands", "key_of"]

_ABSOLUTE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def front_commands(config: FrontConfig, master: Master) -> CommandRegistry:
    """The commands of a front's control socket. A new one is a function of its arguments
    giving its answer's fields (CommandError for a clear refusal), registered here:
    ``off_loop`` when it may take long (it then runs in a child of the master)."""
    commands = CommandRegistry()
    commands.register("purge", lambda arguments: purge(config.caches, arguments), off_loop=True)
    master_pid = os.getpid()
    commands.register("status", lambda arguments: status(config, master, master_pid), off_loop=True)
    return commands


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
    """(files, bytes) of a zone's entries on disk (a Vary marker counts as one)."""
    entries = size = 0
    try:
        folders = [d for d in os.scandir(root) if len(d.name) == 2 and d.is_dir()]
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
