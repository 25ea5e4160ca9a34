"""The zone's fill locks (issue 15's miss bench): bytes of one lock file, not a file made
per key; exclusive between workers and between the requests of one worker, and let go
by the kernel when the worker holding one dies."""

from __future__ import annotations

import http.client
import os
import signal
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache.store import CacheStore
from tests.process import Launcher
from tests.support_cache import Origin, cache_config


def zone(path: Path) -> CacheZone:
    return CacheZone(name="z", path=str(path))


def test_a_key_is_held_once_in_a_worker_and_across_workers(tmp_path: Path) -> None:
    one, two = CacheStore(zone(tmp_path)), CacheStore(zone(tmp_path))
    lock = one.try_lock("k")
    assert lock is not None
    assert one.try_lock("k") is None  # another request of the same worker
    assert two.try_lock("k") is None  # another worker
    other = one.try_lock("other key")
    assert other is not None  # only that key
    lock.release()
    lock.release()  # twice: nothing more
    again = two.try_lock("k")
    assert again is not None
    assert one.try_lock("k") is None
    again.release()
    other.release()
    mine = one.try_lock("k")
    assert mine is not None
    mine.release()


def test_a_lock_is_let_go_when_its_worker_dies(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker: takes the lock and dies holding it
        try:
            held = CacheStore(zone(tmp_path)).try_lock("k")
            os.write(ready_write, b"1" if held is not None else b"0")
            signal.pause()
        finally:
            os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"1"
        assert store.try_lock("k") is None  # the child holds it
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready_read)
        os.close(ready_write)
    lock = store.try_lock("k")
    assert lock is not None
    lock.release()


def test_a_forked_worker_does_not_share_its_parents_locks(tmp_path: Path) -> None:
    store = CacheStore(zone(tmp_path))
    lock = store.try_lock("k")  # the parent's lock file is open now
    assert lock is not None
    result_read, result_write = os.pipe()
    child = os.fork()
    if child == 0:  # the same store object after the fork: it must not be the holder
        try:
            os.write(result_write, b"held" if store.try_lock("k") is None else b"taken")
        finally:
            os._exit(0)
    try:
        assert os.read(result_read, 5) == b"held"
    finally:
        os.waitpid(child, 0)
        os.close(result_read)
        os.close(result_write)
    lock.release()


def test_misses_with_the_lock_make_no_file_per_key(launch: Launcher, short_tmp: Path) -> None:
    cache = short_tmp / "c"
    with Origin() as origin:
        for i in range(20):
            origin.answers[f"/l{i}"] = (200, [("Cache-Control", "max-age=600")], b"l" * 500)
        front = launch.front(cache_config(origin.port, str(cache), "lock = true\n", workers=2))
        for _ in range(2):
            for i in range(20):
                conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
                try:
                    conn.request("GET", f"/l{i}")
                    response = conn.getresponse()
                    assert response.status == 200 and response.read() == b"l" * 500
                finally:
                    conn.close()
        assert all(origin.count(f"/l{i}") == 1 for i in range(20))
        assert [p.name for p in (cache / "locks").iterdir()] == ["fill"]
