"""A PURGE by prefix or tag walks the whole zone on a thread: the worker goes on
answering other requests meanwhile (issue 15: a purge of a big zone stalls nothing)."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache.policy import DEFAULT_KEY, Freshness, cache_key
from gantry.front.cache.store import CacheStore, Entry
from gantry.protocol.http1 import RequestHead
from tests.process import Launcher
from tests.support_cache import Origin, cache_config

#: entries under the purged prefix: enough that walking them takes the worker a while
ENTRIES = 40_000
HOST = "purge.test"


def key_of(target: str) -> str:
    head = RequestHead()
    head.method, head.target = "GET", target.encode()
    head.path, _, head.query = head.target.partition(b"?")
    head.headers = [(b"Host", HOST.encode())]
    return cache_key(DEFAULT_KEY, head, "127.0.0.1")


def fill(path: Path) -> None:
    """ENTRIES entries under /blog/, as a front's misses store them (in packs)."""
    store = CacheStore(CacheZone(name="pages", path=str(path), max_size=4 << 30))
    fields = [(b"Cache-Control", b"max-age=600"), (b"Content-Length", b"100")]
    now = time.time()
    for n in range(ENTRIES):
        entry = Entry(
            key=key_of(f"/blog/{n}"), status=200, reason=b"OK", fields=list(fields),
            request_time=now, response_time=now, initial_age=0.0,
            freshness=Freshness(600.0), tags=("posts",),
        )  # fmt: skip
        writer = store.writer(entry)
        assert writer.write(b"b" * 100)
        assert writer.commit_packed() is not None
    store.close()


def request(conn: http.client.HTTPConnection, method: str, target: str) -> tuple[int, bytes]:
    conn.request(method, target, headers={"Host": HOST})
    response = conn.getresponse()
    return response.status, response.read()


def test_a_prefix_purge_of_a_big_zone_does_not_stall_other_requests(
    launch: Launcher, short_tmp: Path
) -> None:
    cache = short_tmp / "c"
    with Origin() as origin:
        origin.answers["/other"] = (200, [("Cache-Control", "max-age=600")], b"other")
        front = launch.front(cache_config(origin.port, str(cache)))
        client = http.client.HTTPConnection("127.0.0.1", front.port, timeout=60)
        assert request(client, "GET", "/other") == (200, b"other")
        fill(cache)

        answer: list[tuple[int, bytes]] = []
        took: list[float] = []

        def purge() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=120)
            began = time.monotonic()
            answer.append(request(conn, "PURGE", "/blog/*"))
            took.append(time.monotonic() - began)
            conn.close()

        purger = threading.Thread(target=purge)
        purger.start()
        worst, answered = 0.0, 0
        deadline = time.monotonic() + 120
        while purger.is_alive() and time.monotonic() < deadline:
            began = time.monotonic()
            assert request(client, "GET", "/other") == (200, b"other")
            worst = max(worst, time.monotonic() - began)
            answered += 1
        purger.join(5)
        client.close()
        assert answer and answer[0][0] == 200, answer
        purged = int(answer[0][1].split()[1])
        assert purged > ENTRIES * 0.9  # a few may have shared a full bucket of the index
        # the walk took a while; the other client's requests were answered all along
        assert took[0] > 0.5, took
        assert answered >= 10 and worst < min(0.25, took[0] / 3), (worst, took, answered)
        assert origin.count("/other") == 1
