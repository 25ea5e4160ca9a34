"""The cache store's part of a miss, in one process: no wrk, no upstream, no nginx.

Each miss is what the front's store does for a plain 1 KiB answer: the lookup that finds
nothing, the entry and its head, the writer and its body, the batch of the loop's turn
and its write to the worker's pack, the index's slot. Printed: microseconds a miss (best
of the rounds), for this tree's build (compiled, unless GANTRY_PURE=1 or it is stale).
Steadier than req/s on a shared host; under `valgrind --tool=cachegrind` two counts of
misses give the instructions of one (``--misses 1000`` and ``3000``, ``--rounds 1``).

    PYTHONPATH=src python bench/cache_store.py [--misses 5000] [--rounds 7] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from gantry.config.front_model import CacheZone
from gantry.front.cache import store as store_module
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import CacheStore, Entry

BODY = bytes(range(256)) * 4  # 1 KiB
FIELDS = [
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"1024"),
    (b"Date", b"Mon, 07 Dec 2026 23:00:00 GMT"),
]


async def misses(count: int, rounds: int, folder: str) -> float:
    """The best round's seconds a miss."""
    loop = asyncio.get_running_loop()
    store = CacheStore(CacheZone(name="bench", path=tempfile.mkdtemp(dir=folder)))
    best = float("inf")
    tail = None
    try:
        for round_no in range(rounds):
            started = time.perf_counter()
            for n in range(count):
                key = f"httpbench/cached/r{round_no}-{n}"
                now = time.time()
                if store.lookup(key, [], now) is not None:
                    raise SystemExit(f"{key}: a hit, not a miss")
                entry = Entry(
                    key=key, status=200, reason=b"OK", fields=FIELDS, request_time=now,
                    response_time=now, initial_age=0.0, freshness=Freshness(600.0),
                )  # fmt: skip
                if tail is None:
                    tail = entry.head_tail()  # as the handler does, once per answer shape
                writer = store.writer(entry, entry.head_bytes(tail))
                writer.write(BODY)
                if writer.commit_batched(None, loop):
                    store.flush_batch()  # the end of the loop's turn
                elif writer.commit_packed() is None:
                    raise SystemExit(f"{key}: not stored")
            best = min(best, (time.perf_counter() - started) / count)
    finally:
        store.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default="/dev/shm", help="where the zone's folder is made")
    args = parser.parse_args()
    try:
        import uvloop  # the front's loop: its call_soon is C, as in a worker

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    build = "compiled" if not store_module.__file__.endswith(".py") else "pure Python"
    seconds = runner(misses(args.misses, args.rounds, args.dir))
    print(f"the store's part of a miss ({build}): {seconds * 1e6:.2f} us")


if __name__ == "__main__":
    main()
