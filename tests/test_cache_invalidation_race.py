"""An unsafe request's invalidation (RFC 9111 4.4) racing a fill of its target: a GET
whose upstream answered before a PUT succeeded, and whose answer reaches the front only
after the PUT's, must not be stored, on the PUT's worker or another one; nor may a
worker's batch, queued before another worker's invalidation, put it in place after."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from pathlib import Path

import pytest

from gantry.config.front_model import CacheZone
from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import CacheStore, Entry
from tests.process import Launcher
from tests.support_cache import Answer, Origin, cache_config


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """One request on a new connection (either worker may take it); the body, after
    checking the status is 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"new" if method == "PUT" else None, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (method, path, response.status, body)
        return body
    finally:
        conn.close()


#: how each kind of entry is stored: a small one in the worker's pack with its turn's
#: batch, a large one in a file of its own, a varying one as a marker and a variant
KINDS = {
    "packed": (0, []),
    "file": (300 * 1024, []),
    "vary": (0, [("Vary", "Accept")]),
}


def slow_get(port: int, path: str, got: list[bytes]) -> None:
    """The GET whose fill the PUT overtakes (on a thread): its body into ``got``."""
    got.append(request(port, "GET", path, {"X-Slow": "1"}))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("workers", [1, 2])
def test_a_fill_answered_before_a_put_is_not_stored_after_it(
    launch: Launcher, short_tmp: Path, workers: int, kind: str
) -> None:
    padding, kind_fields = KINDS[kind]
    version = [b"old"]
    asked = threading.Event()  # the GET reached the origin, its answer made
    answer_now = threading.Event()  # the origin may send that answer

    def answer(fields: dict[str, str]) -> Answer:
        if fields.get("x-put") == "1":
            version[0] = b"new"
            return 200, [], b"stored"
        body = version[0] + b"." * padding
        if fields.get("x-slow") == "1":
            asked.set()
            assert answer_now.wait(30)
        return 200, [("Cache-Control", "max-age=600"), *kind_fields], body

    with Origin() as origin:
        front = launch.front(cache_config(origin.port, str(short_tmp / "c"), workers=workers))
        for attempt in range(6 if workers > 1 else 1):
            # (with two workers, each attempt's connections land where the kernel puts
            # them: the answer must not depend on it; the batch test below puts the fill
            # and the invalidation on two workers' stores for certain)
            path = f"/r?{attempt}"
            origin.answers[path] = answer
            version[0] = b"old"
            asked.clear()
            answer_now.clear()
            got: list[bytes] = []
            fill = threading.Thread(target=slow_get, args=(front.port, path, got))
            fill.start()
            try:
                assert asked.wait(30), "the fill never reached the origin"
                assert request(front.port, "PUT", path, {"X-Put": "1"}) == b"stored"
            finally:
                answer_now.set()
                fill.join(30)
            assert [body[:3] for body in got] == [b"old"]  # the answer then, to its client
            # the next GET must not be served the answer made before the PUT
            assert request(front.port, "GET", path)[:3] == b"new", f"attempt {attempt}"


def _entry(key: str, request_time: float) -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[], request_time=request_time,
        response_time=request_time, initial_age=0.0, freshness=Freshness(600.0),
    )  # fmt: skip


def test_a_batch_queued_before_another_workers_invalidation_is_left_out(
    tmp_path: Path,
) -> None:
    # two workers' views of one zone; the batch is written by hand (the loop never runs)
    zone = CacheZone(name="z", path=str(tmp_path))
    one, two = CacheStore(zone), CacheStore(zone)
    loop = asyncio.new_event_loop()
    try:
        began = time.time()
        for key, body in (("k", b"old"), ("other", b"kept")):
            writer = one.writer(_entry(key, began))
            assert writer.write(body)
            assert writer.commit_batched(None, loop)
        two.remove("k", invalidation=True)  # the other worker's PUT of k succeeded
        assert one.lookup("k", [], time.time()) is None  # not from the queue either
        one.flush_batch()
        assert one.lookup("k", [], time.time()) is None
        assert two.lookup("k", [], time.time()) is None
        kept = two.lookup("other", [], time.time())
        assert kept is not None and kept.body == b"kept"
        # a fill begun after the invalidation is stored as ever
        writer = one.writer(_entry("k", time.time()))
        assert writer.write(b"new")
        assert writer.commit_batched(None, loop)
        one.flush_batch()
        found = two.lookup("k", [], time.time())
        assert found is not None and found.body == b"new"
    finally:
        loop.close()
        one.close()
        two.close()
