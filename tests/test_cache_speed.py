"""The cache's fast paths (issue 15's bench goals): hits from the memory tier without a
system call, told of other workers' changes through the zone's generation."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.balancing import hash_key
from gantry.front.cache.policy import DEFAULT_KEY, Freshness, cache_key, cache_status
from gantry.front.cache.store import (
    PENDING_ENTRIES,
    RECHECK_EVERY,
    SMALL_BODY,
    TEMP_PREFIX,
    CacheStore,
    Entry,
)
from gantry.protocol.http1 import RequestHead
from tests.process import Launcher
from tests.support_cache import Origin, cache_config

NOW = 1000.0


def zone(path: Path, **changes: object) -> CacheZone:
    return CacheZone(name="z", path=str(path), **changes)  # type: ignore[arg-type]


def entry(key: str = "k") -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=1.0, response_time=2.0, initial_age=0.0, freshness=Freshness(60.0),
        tags=(f"t-{key}",),
    )  # fmt: skip


def put(store: CacheStore, stored: Entry, body: bytes) -> Entry:
    writer = store.writer(stored)
    assert writer.write(body)
    done = writer.commit()
    assert done is not None
    return done


def test_a_memory_hit_does_not_look_at_the_file_but_rechecks_it_each_second(
    tmp_path: Path,
) -> None:
    store = CacheStore(zone(tmp_path))
    stored = put(store, entry(), b"v1")
    assert store.lookup("k", [], NOW) is not None  # checked against its file once
    # Gone behind the zone's back (no worker said so): a hit from memory still, for at
    # most RECHECK_EVERY; then the file is looked at, and it is a miss.
    os.unlink(stored.path)
    found = store.lookup("k", [], NOW + RECHECK_EVERY / 2)
    assert found is not None and found.body == b"v1"
    assert store.lookup("k", [], NOW + RECHECK_EVERY + 0.1) is None


def test_a_removal_or_replacement_by_another_worker_is_seen_at_once(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
    put(one, entry(), b"v1")
    assert one.lookup("k", [], NOW) is not None
    assert one.lookup("k", [], NOW) is not None  # from memory now
    put(two, entry(), b"v2")  # a newer version renamed over it
    found = one.lookup("k", [], NOW)
    assert found is not None and found.body == b"v2"
    assert two.mark_stale("k") == 1  # soft purge: the head rewritten
    found = one.lookup("k", [], NOW)
    assert found is not None and found.purged
    assert two.remove("k") == 1
    assert one.lookup("k", [], NOW) is None


def test_a_sweep_by_another_worker_is_seen_at_once(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path, max_size=1)), CacheStore(zone(tmp_path, max_size=1))
    put(one, entry(), b"v1")
    assert one.lookup("k", [], NOW) is not None
    two.sweep()  # past max_size: removed
    assert one.lookup("k", [], NOW) is None


def test_a_new_entry_leaves_the_generation_alone(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    put(store, entry("a"), b"a")
    before = store.generation.value()
    put(store, entry("b"), b"b")  # replaces nothing: no worker needs to look again
    assert store.generation.value() == before
    put(store, entry("b"), b"b2")
    assert store.generation.value() != before


def test_the_default_key_is_the_templates_value() -> None:
    for target, host in [
        (b"/a?b=c", b"Example.COM:8080"),
        (b"/", b"h"),
        (b"/x%20y", None),
        (b"/caf\xc3\xa9", b"[::1]:80"),
    ]:
        head = RequestHead()
        head.method, head.target = "GET", target
        head.path, _, head.query = target.partition(b"?")
        head.headers = [(b"Accept", b"*/*")]
        if host is not None:
            head.headers.append((b"HOST", host))
        head.headers.append((b"Host", b"second"))
        assert cache_key(DEFAULT_KEY, head, "1.2.3.4") == hash_key(DEFAULT_KEY, head, "1.2.3.4")


def test_a_hit_status_is_as_before() -> None:
    assert cache_status(True, 59.7) == b"gantry; hit; ttl=59"
    assert cache_status(True, -3.2) == b"gantry; hit; ttl=-3"


def _raw_get(
    port: int, path: str, extra: bytes = b""
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """Status line, fields in order and body of one GET (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra
                     + b"Connection: close\r\n\r\n")  # fmt: skip
        data = b""
        while piece := sock.recv(65536):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = [
        (n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)
    ]
    return status, fields, body


def test_a_hit_answers_the_stored_response_with_its_own_fields(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        origin.answers["/page"] = (
            200,
            [("Cache-Control", "max-age=600"), ("X-Kept", "1"), ("ETag", '"e1"')],
            b"a page",
        )
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        status, fields, body = _raw_get(front.port, "/page")
        assert (status, body) == (b"HTTP/1.1 200 OK", b"a page")
        for _ in range(2):  # the second from the prepared head already made
            status, fields, body = _raw_get(front.port, "/page")
            assert (status, body) == (b"HTTP/1.1 200 OK", b"a page")
            names = [name for name, _ in fields]
            for name in (b"date", b"content-length", b"age", b"cache-status", b"server"):
                assert names.count(name) == 1, (name, fields)
            values = dict(fields)
            assert values[b"x-kept"] == b"1" and values[b"etag"] == b'"e1"'
            assert values[b"content-length"] == b"6"
            assert values[b"cache-status"].startswith(b"gantry; hit; ttl=")
            assert values[b"connection"] == b"close"
        # what the prepared head does not answer goes the general way
        status, fields, body = _raw_get(front.port, "/page", b'If-None-Match: "e1"\r\n')
        assert (status, body) == (b"HTTP/1.1 304 Not Modified", b"")
        status, fields, body = _raw_get(front.port, "/page", b"Range: bytes=2-3\r\n")
        assert (status, body) == (b"HTTP/1.1 206 Partial Content", b"pa")
        assert origin.count("/page") == 1
        # what asks something of the cache is not answered from memory at once
        _raw_get(front.port, "/page", b"Cache-Control: no-cache\r\n")
        assert origin.count("/page") == 2
        _raw_get(front.port, "/page", b"Authorization: Basic eDp5\r\n")
        assert origin.count("/page") == 3


def test_a_full_queue_commits_at_once(tmp_path: Path) -> None:
    """Past ``PENDING_ENTRIES`` waiting for their batch's write, the caller commits the
    next entry itself: a disk slower than the misses cannot fill the worker's memory."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = CacheStore(zone(tmp_path))
        for n in range(PENDING_ENTRIES):
            writer = store.writer(entry(f"q{n}"))
            assert writer.write(b"v")
            assert writer.commit_batched(None, loop)
        writer = store.writer(entry("over"))
        assert writer.write(b"v")
        assert not writer.commit_batched(None, loop)  # the caller commits it now
        assert writer.commit_packed() is not None
        await asyncio.sleep(0)  # the batch's turn ends: written
        assert not store.pending and not store.batch
        found = CacheStore(zone(tmp_path)).lookup(f"q{PENDING_ENTRIES - 1}", [], NOW)
        assert found is not None and found.body == b"v"
        store.close()

    asyncio.run(scenario())


def test_a_large_entry_is_written_next_to_its_place_and_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    store = CacheStore(zone(tmp_path))
    big = b"z" * (SMALL_BODY + 1)
    writer = store.writer(entry("big"))
    assert writer.write(big)  # past SMALL_BODY: to its temporary file already
    temporaries = list(tmp_path.rglob(TEMP_PREFIX + "*"))
    assert [t.parent for t in temporaries] == [Path(writer.final).parent]
    writer.abort()
    assert not list(tmp_path.rglob(TEMP_PREFIX + "*"))
    stored = put(store, entry("big"), big)
    assert not list(tmp_path.rglob(TEMP_PREFIX + "*"))
    found = CacheStore(zone(tmp_path)).lookup("big", [], NOW)
    assert found is not None and found.body_length == len(big) and stored.path == found.path
    # a temporary left by a writer that died goes with the sweep, after an hour
    dead = Path(writer.final).parent / (TEMP_PREFIX + "1.1")
    dead.write_bytes(b"half")
    store.sweep()
    assert dead.exists()
    os.utime(dead, (time.time() - 4000, time.time() - 4000))
    store.sweep()
    assert not dead.exists()
