"""The front's cache with real processes: a `gantry front` with a cache zone in front of
a real origin server (tests/support_cache.py)."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from pathlib import Path

from tests.process import Launcher, free_port, servers_have_read, wait_for
from tests.support_cache import Origin, cache_config


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[
    int, dict[str, str], bytes
]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def test_miss_then_hit_with_age_and_cache_status(launch: Launcher, short_tmp: Path) -> None:
    with Origin() as origin:
        origin.answers["/a"] = (200, [("Cache-Control", "max-age=60")], b"hello")
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        status, fields, body = get(front.port, "/a")
        assert (status, body) == (200, b"hello")
        assert fields["cache-status"].startswith("gantry; fwd=uri-miss; stored")
        status, fields, body = get(front.port, "/a")
        assert (status, body) == (200, b"hello")
        assert fields["cache-status"].startswith("gantry; hit; ttl=")
        assert int(fields["age"]) >= 0 and fields["content-length"] == "5"
        assert origin.count("/a") == 1


def test_private_and_set_cookie_never_reach_a_second_client(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        origin.answers["/private"] = (200, [("Cache-Control", "private, max-age=60")], b"mine")
        origin.answers["/cookie"] = (
            200,
            [("Cache-Control", "max-age=60"), ("Set-Cookie", "session=alice")],
            b"alice's",
        )
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        for path in ("/private", "/cookie"):
            get(front.port, path)
            status, fields, _ = get(front.port, path)
            assert status == 200 and "hit" not in fields["cache-status"]
            assert origin.count(path) == 2


def test_concurrent_misses_over_two_workers_reach_the_upstream_once(
    launch: Launcher, short_tmp: Path
) -> None:
    zone = 'lock = true\nlock_timeout = "120s"\n'
    with Origin() as origin:
        origin.answers["/herd"] = (200, [("Cache-Control", "max-age=60")], b"x" * 1024)
        origin.gate = threading.Event()
        front = launch.front(cache_config(origin.port, str(short_tmp / "c"), zone, workers=2))
        sockets = []
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", front.port), timeout=30)
            sock.sendall(b"GET /herd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            sockets.append(sock)
        try:
            # generous limits: the machine may be busy with other work (the lock outlasts
            # the wait for every socket, or waiters would give up and go to the origin)
            assert wait_for(lambda: origin.count("/herd") >= 1, limit=60)
            assert wait_for(lambda: servers_have_read(sockets), limit=60)
            origin.gate.set()
            bodies = []
            for sock in sockets:
                data = b""
                while True:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    data += piece
                bodies.append(data)
        finally:
            for sock in sockets:
                sock.close()
        assert all(b.startswith(b"HTTP/1.1 200") and b.endswith(b"x" * 1024) for b in bodies)
        assert origin.count("/herd") == 1


def test_stale_is_served_while_the_upstream_is_down_then_refreshed(
    launch: Launcher, short_tmp: Path
) -> None:
    zone = 'use_stale = ["error", "timeout", "http_502"]\n'
    origin = Origin()
    with origin:
        origin.answers["/s"] = (200, [("Cache-Control", "max-age=0")], b"old")
        config = cache_config(origin.port, str(short_tmp / "c"), zone)
        front = launch.front(config)
        assert get(front.port, "/s")[2] == b"old"
    # the origin is gone: its port refuses
    status, fields, body = get(front.port, "/s")
    assert (status, body) == (200, b"old")
    assert "hit" in fields["cache-status"] and "fwd=stale" in fields["cache-status"]
    # back on the same port, with a new answer: the entry is refreshed
    back = _origin_on(origin.port)
    with back:
        back.answers["/s"] = (200, [("Cache-Control", "max-age=60")], b"new")
        assert get(front.port, "/s")[2] == b"new"
        status, fields, body = get(front.port, "/s")
        assert body == b"new" and fields["cache-status"].startswith("gantry; hit")
        assert back.count("/s") == 1


def _origin_on(port: int) -> Origin:
    """An Origin bound to ``port`` (the one a stopped origin had)."""
    from http.server import ThreadingHTTPServer

    origin = Origin()
    handler = origin.server.RequestHandlerClass
    origin.server.server_close()
    ThreadingHTTPServer.allow_reuse_address = True
    origin.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    origin.server.daemon_threads = True
    origin.port = port
    origin.thread = threading.Thread(target=origin.server.serve_forever, daemon=True)
    return origin


def test_entries_survive_a_restart_and_a_corrupt_one_is_a_miss(
    launch: Launcher, short_tmp: Path
) -> None:
    cache = short_tmp / "c"
    with Origin() as origin:
        origin.answers["/keep"] = (200, [("Cache-Control", "max-age=600")], b"kept")
        origin.answers["/broken"] = (200, [("Cache-Control", "max-age=600")], b"good bytes")
        config = cache_config(origin.port, str(cache))
        first = launch.front(config, name="first")
        get(first.port, "/keep")
        get(first.port, "/broken")
        first.stop()
        # damage one entry's body on disk (small entries are records in packs)
        entries = [p for p in cache.glob("??/*") if p.is_file()]
        entries += list(cache.glob("packs/*.pack"))
        assert sum(p.read_bytes().count(b"GCE") for p in entries) == 2
        for path in entries:
            data = bytearray(path.read_bytes())
            if b"good bytes" in data:
                at = data.index(b"good bytes")
                data[at] = ord("G")
                path.write_bytes(bytes(data))
        second = launch.front(config, name="second")
        status, fields, body = get(second.port, "/keep")
        assert (status, body) == (200, b"kept") and "hit" in fields["cache-status"]
        status, fields, body = get(second.port, "/broken")
        assert (status, body) == (200, b"good bytes") and "miss" in fields["cache-status"]
        assert origin.count("/keep") == 1 and origin.count("/broken") == 2


def test_revalidation_conditionals_head_and_range(launch: Launcher, short_tmp: Path) -> None:
    def etagged(fields: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        if fields.get("if-none-match") == '"v1"':
            return 304, [("ETag", '"v1"'), ("Cache-Control", "max-age=60"), ("X-Fresh", "2")], b""
        return (
            200,
            [("ETag", '"v1"'), ("Cache-Control", "max-age=0"), ("X-Fresh", "1")],
            b"0123456789",
        )

    with Origin() as origin:
        origin.answers["/r"] = etagged
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        assert get(front.port, "/r")[2] == b"0123456789"
        # stale at once (max-age=0): revalidated with the stored ETag; the 304 updates it
        status, fields, body = get(front.port, "/r")
        assert (status, body, fields["x-fresh"]) == (200, b"0123456789", "2")
        assert "fwd-status=304" in fields["cache-status"]
        assert origin.requests[-1][2].get("if-none-match") == '"v1"'
        count = origin.count("/r")
        # now fresh for 60 s: the rest comes from the cache
        status, fields, _ = get(front.port, "/r", {"If-None-Match": '"v1"'})
        assert status == 304 and fields["etag"] == '"v1"'
        status, fields, body = get(front.port, "/r", method="HEAD")
        assert (status, body, fields["content-length"]) == (200, b"", "10")
        status, fields, body = get(front.port, "/r", {"Range": "bytes=2-4"})
        assert (status, body, fields["content-range"]) == (206, b"234", "bytes 2-4/10")
        assert origin.count("/r") == count


def test_unsafe_methods_invalidate_and_purge(launch: Launcher, short_tmp: Path) -> None:
    with Origin() as origin:
        origin.answers["/p"] = (200, [("Cache-Control", "max-age=600")], b"page")
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        get(front.port, "/p")
        assert "hit" in get(front.port, "/p")[1]["cache-status"]
        origin.answers["/p"] = (200, [("Cache-Control", "max-age=600")], b"page")
        get(front.port, "/p", method="POST")
        assert "miss" in get(front.port, "/p")[1]["cache-status"]  # invalidated
        assert "hit" in get(front.port, "/p")[1]["cache-status"]
        status, _, body = get(front.port, "/p", method="PURGE")
        assert (status, body) == (200, b"purged 1\n")
        assert get(front.port, "/p", method="PURGE")[0] == 404
        assert "miss" in get(front.port, "/p")[1]["cache-status"]


def test_purge_from_an_address_not_allowed_is_403(launch: Launcher, short_tmp: Path) -> None:
    with Origin() as origin:
        config = cache_config(origin.port, str(short_tmp / "c")).replace(
            'purge_allow = ["127.0.0.1/32"]', 'purge_allow = ["10.0.0.0/8"]'
        )
        front = launch.front(config)
        assert get(front.port, "/p", method="PURGE")[0] == 403
    assert os.path.isdir(short_tmp / "c")


def test_purge_by_url_prefix_and_tag_reaches_both_workers(
    launch: Launcher, short_tmp: Path
) -> None:
    paths = ("/blog/a", "/blog/b", "/shop/c", "/shop/d")

    def publish(version: str) -> None:
        for path in paths:
            tag = "shop-items" if path.startswith("/shop/") else "posts"
            origin.answers[path] = (
                200,
                [("Cache-Control", "max-age=600"), ("Surrogate-Key", f"all {tag}")],
                f"{path} {version}".encode(),
            )

    def bodies(path: str) -> set[bytes]:
        # new connections, so both workers answer some of them
        return {get(front.port, path)[2] for _ in range(12)}

    with Origin() as origin:
        publish("v1")
        front = launch.front(
            cache_config(origin.port, str(short_tmp / "c"), "lock = true\n", workers=2)
        )
        for path in paths:
            assert bodies(path) == {f"{path} v1".encode()}
        publish("v2")
        assert get(front.port, "/blog/a", method="PURGE")[2] == b"purged 1\n"
        assert bodies("/blog/a") == {b"/blog/a v2"}
        status, _, body = get(front.port, "/blog/*", method="PURGE")
        assert (status, body) == (200, b"purged 2\n")  # /blog/a (refilled) and /blog/b
        assert bodies("/blog/b") == {b"/blog/b v2"}
        status, _, body = get(front.port, "/", {"Surrogate-Key": "shop-items"}, method="PURGE")
        assert (status, body) == (200, b"purged 2\n")
        assert bodies("/shop/c") == {b"/shop/c v2"} and bodies("/shop/d") == {b"/shop/d v2"}
        assert get(front.port, "/nothing/*", method="PURGE")[0] == 404
        assert [origin.count(path) for path in paths] == [2, 2, 2, 2]


def test_soft_purge_keeps_an_entry_for_use_stale(launch: Launcher, short_tmp: Path) -> None:
    zone = 'use_stale = ["error"]\n'
    with Origin() as origin:
        origin.answers["/soft"] = (200, [("Cache-Control", "max-age=600")], b"kept")
        front = launch.front(cache_config(origin.port, str(short_tmp / "c"), zone))
        get(front.port, "/soft")
        status, _, body = get(front.port, "/soft", {"Soft-Purge": "1"}, method="PURGE")
        assert (status, body) == (200, b"purged 1\n")
    # the origin is down: the soft-purged entry is served stale
    status, fields, body = get(front.port, "/soft")
    assert (status, body) == (200, b"kept") and "fwd=stale" in fields["cache-status"]


def test_only_if_cached_for_a_missing_entry_is_a_framed_504(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
        try:
            conn.request("GET", "/none", headers={"Cache-Control": "only-if-cached"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (504, b"")
            conn.request("GET", "/none", headers={"Cache-Control": "only-if-cached"})
            assert conn.getresponse().status == 504  # the connection is still usable
        finally:
            conn.close()
        assert origin.count("/none") == 0


def test_min_uses_stores_a_response_once_asked_for_enough(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        origin.answers["/m"] = (200, [("Cache-Control", "max-age=600")], b"m")
        front = launch.front(cache_config(origin.port, str(short_tmp / "c"), "min_uses = 2\n"))
        assert "stored" not in get(front.port, "/m")[1]["cache-status"]
        assert "stored" in get(front.port, "/m")[1]["cache-status"]
        assert "hit" in get(front.port, "/m")[1]["cache-status"]
        assert origin.count("/m") == 2


def test_an_entry_whose_refresh_is_not_storable_is_dropped(
    launch: Launcher, short_tmp: Path
) -> None:
    with Origin() as origin:
        origin.answers["/turned"] = (200, [("Cache-Control", "max-age=0")], b"public once")
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        get(front.port, "/turned")
        origin.answers["/turned"] = (200, [("Cache-Control", "private")], b"alice's")
        assert get(front.port, "/turned")[2] == b"alice's"
    # the origin is down now: nothing stored may answer in its place
    assert get(front.port, "/turned", {"Cache-Control": "max-stale"})[0] == 502


def test_a_background_refresh_asks_for_its_own_path(launch: Launcher, short_tmp: Path) -> None:
    """The refresh of a stale entry outlives the request that started it: a uwsgi upstream
    must still get that request's PATH_INFO, not the one its connection went on to."""
    # over TCP: the refresh's connect then takes a turn of the loop, as it would to a
    # remote upstream (a unix connect completes at once)
    port = free_port()
    launch.serve(
        "tests.apps_cache:app", "--uwsgi-socket", f"127.0.0.1:{port}", wait_for=("127.0.0.1", port)
    )
    front = launch.front(cache_config(port, str(short_tmp / "c"), upstream='protocol = "uwsgi"'))
    assert get(front.port, "/swr")[2].startswith(b"/swr ")
    # max-stale: answered from the entry as it is, without a refresh of its own
    stored = {"Cache-Control": "max-stale=600"}
    for _ in range(5):
        before = get(front.port, "/swr", stored)[2]
        # two pipelined requests: /swr (stale, answered at once, refreshed meanwhile)
        # then /other on the same connection
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as conn:
            conn.sendall(
                b"GET /swr HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            data = b""
            while b"/other " not in data:
                piece = conn.recv(65536)
                assert piece, data
                data += piece
        assert wait_for(lambda old=before: get(front.port, "/swr", stored)[2] != old)
        assert get(front.port, "/swr", stored)[2].startswith(b"/swr ")
