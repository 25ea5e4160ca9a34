"""Small entries batched per turn of the loop (EntryWriter.commit_batched): one append to
the worker's pack for all the misses that ended in the turn. Meanwhile the worker answers
them from memory and holds their fill locks; a purge drops them; a crash loses that batch
only (the others are whole); closing the store writes it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache.packs import pack_path
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import CacheStore, Entry

NOW = 1000.0
SRC = str(Path(__file__).resolve().parents[1] / "src")


def zone(path: Path) -> CacheZone:
    return CacheZone(name="z", path=str(path))


def entry(key: str) -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=1.0, response_time=2.0, initial_age=0.0, freshness=Freshness(60.0),
        tags=(f"t-{key}",),
    )  # fmt: skip


def batch(store: CacheStore, key: str, body: bytes, loop: asyncio.AbstractEventLoop) -> None:
    writer = store.writer(entry(key))
    assert writer.write(body)
    assert writer.commit_batched(store.try_lock(key), loop)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not reached")


def test_a_turns_misses_are_one_write_answered_from_memory_until_then(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
        first = one.writer(entry("first"))
        assert first.write(b"started the pack")
        assert first.commit_packed() is not None
        appends = one.packer.writes
        for n in range(5):
            batch(one, f"k{n}", b"body %d" % n, loop)
        # not written yet: this worker answers from memory, the other sees nothing and
        # finds the fill locks held (it waits for them)
        found = one.lookup("k3", [], NOW)
        assert found is not None and found.body == b"body 3"
        assert two.lookup("k3", [], NOW) is None and two.try_lock("k3") is None
        await _until(lambda: not one.batch and not one.pending)
        assert one.packer.writes == appends + 1  # five entries, one write
        for n in range(5):
            found = two.lookup(f"k{n}", [], NOW)
            assert found is not None and found.body == b"body %d" % n
            lock = two.try_lock(f"k{n}")
            assert lock is not None  # let go once written
            lock.release()
        one.close()

    asyncio.run(scenario())


def test_a_purge_drops_a_batched_entry(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store, other = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
        cases = ("url", "prefix", "tag", "soft", "other url", "other prefix", "other tag")
        for n, purge in enumerate(cases):
            key = f"p{n}"
            batch(store, key, b"v", loop)
            if purge == "url":
                assert store.remove(key) == 1
            elif purge == "prefix":
                assert store.purge(key_prefix=key) == 1
            elif purge == "tag":
                assert store.purge(tag=f"t-{key}") == 1
            elif purge == "soft":
                assert store.mark_stale(key) == 1
            elif purge == "other url":  # another worker's purge: the purge mark moved
                other.remove(key)
            elif purge == "other prefix":
                other.purge(key_prefix=key)
            else:
                other.purge(tag=f"t-{key}")
            await _until(lambda: not store.batch and not store.pending)
            found = CacheStore(zone(tmp_path)).lookup(key, [], NOW)
            if purge == "soft":  # written at once, marked stale
                assert found is not None and found.purged
            else:
                assert found is None and store.lookup(key, [], NOW) is None, purge
        # a newer answer for a key replaces its batched one
        batch(store, "twice", b"old", loop)
        batch(store, "twice", b"new", loop)
        await _until(lambda: not store.batch and not store.pending)
        found = CacheStore(zone(tmp_path)).lookup("twice", [], NOW)
        assert found is not None and found.body == b"new"
        store.close()

    asyncio.run(scenario())


def test_closing_the_store_writes_its_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = CacheStore(zone(tmp_path))
        batch(store, "kept", b"across a restart", loop)
        store.close()  # a worker stopping: before the loop's turn is over

    asyncio.run(scenario())
    found = CacheStore(zone(tmp_path)).lookup("kept", [], NOW)
    assert found is not None and found.body == b"across a restart"


CRASHING_WORKER = """
import asyncio, os, signal, sys
from pathlib import Path
sys.path.insert(0, {src!r})
from gantry.config.front_model import CacheZone
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import CacheStore, Entry

def entry(key):
    return Entry(key=key, status=200, reason=b"OK", fields=[], request_time=1.0,
                 response_time=2.0, initial_age=0.0, freshness=Freshness(60.0))

async def main():
    loop = asyncio.get_running_loop()
    store = CacheStore(CacheZone(name="z", path={root!r}))
    for key in ("a", "b"):
        writer = store.writer(entry(key))
        writer.write(b"written " + key.encode())
        writer.commit_batched(None, loop)
    while store.batch:
        await asyncio.sleep(0.001)
    for key in ("c", "d"):
        writer = store.writer(entry(key))
        writer.write(b"queued " + key.encode())
        writer.commit_batched(None, loop)
    print(store.packer.pack, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before the turn is over: c and d not written

asyncio.run(main())
"""


def test_a_crash_loses_the_pending_batch_only(tmp_path: Path) -> None:
    script = CRASHING_WORKER.format(src=SRC, root=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GANTRY_PURE": os.environ.get("GANTRY_PURE", "")},
    )
    assert done.returncode == -9, done.stderr
    pack = int(done.stdout.split()[0])
    # a write the crash cut in the middle: the start of a record at the pack's end
    with open(pack_path(str(tmp_path), pack), "ab") as tail:
        tail.write(b"GCE\x02\x00\x00\x01\x00half a head")
    store = CacheStore(zone(tmp_path))  # the worker restarted
    for key in ("a", "b"):
        found = store.lookup(key, [], NOW)
        assert found is not None and found.body == b"written " + key.encode()
    assert store.lookup("c", [], NOW) is None and store.lookup("d", [], NOW) is None

    async def after() -> None:  # the restarted worker's batches are stored as ever
        batch(store, "c", b"fetched again", asyncio.get_running_loop())
        await _until(lambda: not store.batch)

    asyncio.run(after())
    found = CacheStore(zone(tmp_path)).lookup("c", [], NOW)
    assert found is not None and found.body == b"fetched again"
    store.close()
