"""Misses whose upstream answers whole (the proxy's short path): what their head says is
worked out once per head and zone (CacheFill's _Shape), and the answer goes to the
client whole. A real uwsgi app server answers every path with one head per query string,
so each test's misses share a head; what one request may not store, or one zone may
not, must not follow from another's."""

from __future__ import annotations

import http.client
from pathlib import Path

from tests.process import Front, Launcher, free_port


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[
    int, dict[str, str], bytes
]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def _front(launch: Launcher, cache: Path, name: str = "front") -> Front:
    """A front with two zones over one uwsgi app: /a/ in "plain", /b/ in "valid" (which
    stores 302s for a minute)."""
    port = free_port()
    launch.serve(
        "tests.apps_cache:shaped", "--uwsgi-socket", f"127.0.0.1:{port}",
        wait_for=("127.0.0.1", port), name=f"app-{name}",
    )  # fmt: skip
    config = f"""[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "127.0.0.1:{port}" }}]

[front.cache.plain]
path = "{cache / "plain"}"

[front.cache.valid]
path = "{cache / "valid"}"
valid = {{ "302" = "1m" }}

[[front.server]]
[[front.server.location]]
path = "/a/"
proxy = "app"
cache = "plain"
[[front.server.location]]
path = "/b/"
proxy = "app"
cache = "valid"
"""
    return launch.front(config, name)


def test_misses_of_one_head_are_stored_and_answered_whole(
    launch: Launcher, short_tmp: Path
) -> None:
    front = _front(launch, short_tmp / "c")
    bodies = {}
    for n in range(5):
        status, fields, body = get(front.port, f"/a/{n}?max-age=60")
        assert status == 200 and body.startswith(b"/a/%d " % n)
        assert fields["cache-status"] == "gantry; fwd=uri-miss; stored"
        assert fields["content-length"] == str(len(body)) and "date" in fields
        bodies[n] = body
    for n in range(5):
        status, fields, body = get(front.port, f"/a/{n}?max-age=60")
        assert (status, body) == (200, bodies[n])
        assert fields["cache-status"].startswith("gantry; hit; ttl=")
        assert fields["cache-control"] == "max-age=60" and "date" in fields


def test_a_request_that_forbids_storing_is_not_stored_though_its_head_was(
    launch: Launcher, short_tmp: Path
) -> None:
    front = _front(launch, short_tmp / "c")
    # the head is known from a stored miss first; then requests that may not store it
    assert get(front.port, "/a/first?max-age=60")[1]["cache-status"].endswith("stored")
    for path, asking in (
        ("/a/nostore?max-age=60", {"Cache-Control": "no-store"}),
        ("/a/auth?max-age=60", {"Authorization": "Basic YTpi"}),
    ):
        _, fields, first = get(front.port, path, asking)
        assert not fields["cache-status"].endswith("stored")
        _, fields, again = get(front.port, path)
        assert again != first and not fields["cache-status"].startswith("gantry; hit")


def test_one_head_is_stored_by_the_zone_whose_valid_says_so_only(
    launch: Launcher, short_tmp: Path
) -> None:
    front = _front(launch, short_tmp / "c")
    # a 302 with no freshness of its own: "valid" stores it for a minute, "plain" may not
    # store it at all (the same head bytes in both zones)
    for n, zone in enumerate(("b", "a", "b", "a")):
        status, fields, body = get(front.port, f"/{zone}/{n}/found")
        _, again_fields, again = get(front.port, f"/{zone}/{n}/found")
        assert status == 302
        if zone == "b":
            assert again == body and again_fields["cache-status"].startswith("gantry; hit")
        else:
            assert again != body
            assert not fields["cache-status"].endswith("stored")


def test_entries_of_whole_misses_survive_a_restart(launch: Launcher, short_tmp: Path) -> None:
    front = _front(launch, short_tmp / "c", "before")
    stored = {n: get(front.port, f"/a/kept{n}?max-age=600")[2] for n in range(3)}
    front.stop()
    again = _front(launch, short_tmp / "c", "after")
    for n, body in stored.items():
        status, fields, found = get(again.port, f"/a/kept{n}?max-age=600")
        assert (status, found) == (200, body)
        assert fields["cache-status"].startswith("gantry; hit")
