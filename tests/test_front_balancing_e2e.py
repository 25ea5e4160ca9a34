"""Each balancing method of gantry front with real backends: three `gantry serve` over HTTP,
each answering its own name (tests.apps_upstream), behind one `gantry front` worker."""

from __future__ import annotations

import http.client
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gantry.config.front_model import Upstream, UpstreamServer
from gantry.front.balancing import UpstreamPool
from tests.process import Front, GantryServer

NAMES = ("a", "b", "c")
#: seconds /slow takes on backend c (a and b answer it at once)
SLOW = 0.3


@pytest.fixture(scope="module")
def backends(module_short_tmp: Path) -> Iterator[dict[str, GantryServer]]:
    """Backends a, b and c; only c is slow on /slow."""
    workdir = module_short_tmp
    servers: dict[str, GantryServer] = {}
    try:
        for name in NAMES:
            env = {"GANTRY_BACKEND_NAME": name}
            if name == "c":
                env["GANTRY_BACKEND_SLOW"] = str(SLOW)
            servers[name] = GantryServer(
                "tests.apps_upstream:app", log_path=workdir / f"{name}.log", env=env
            )
            servers[name].start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _front(
    tmp_path: Path,
    backends: dict[str, GantryServer],
    settings: str,
    weights: dict[str, int] | None = None,
    listen: str = '["127.0.0.1:FRONT_PORT"]',
) -> Front:
    weights = weights or {}
    servers = ", ".join(
        f'{{ address = "127.0.0.1:{backends[name].port}", weight = {weights.get(name, 1)} }}'
        for name in NAMES
    )
    front = Front(
        f"""
[front]
listen = {listen}
workers = 1
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "pool"
[front.upstream.pool]
servers = [{servers}]
{settings}
""",
        tmp_path,
    )
    front.start()
    return front


def _get(
    port: int, path: str, host: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> str:
    """The name of the backend that answered ``path``."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return body.decode()
    finally:
        conn.close()


def test_round_robin_weights_3_2_1_exact(tmp_path: Path, backends: dict[str, GantryServer]) -> None:
    """Smooth weighted round robin, as nginx: weights 3:2:1 give a b a c b a, so 60
    sequential requests split exactly 30:20:10 (tolerance: none)."""
    front = _front(tmp_path, backends, 'balance = "round_robin"', {"a": 3, "b": 2, "c": 1})
    try:
        answers = [_get(front.port, "/who") for _ in range(60)]
        assert answers[:6] == ["a", "b", "a", "c", "b", "a"], answers[:6]
        assert Counter(answers) == {"a": 30, "b": 20, "c": 10}, Counter(answers)
    finally:
        front.stop()


def test_least_conn_sends_fewer_concurrent_requests_to_the_slow_backend(
    tmp_path: Path, backends: dict[str, GantryServer]
) -> None:
    """12 clients, 5 requests each, to /slow: c holds each request SLOW s, a and b answer at
    once. Round robin would give c exactly 20 of 60; least_conn must give it at most 10
    (half its equal share) and give each fast backend more than c."""
    front = _front(tmp_path, backends, 'balance = "least_conn"')
    try:
        _get(front.port, "/who")  # warm up: every path through the worker once

        def client(_: int) -> list[str]:
            return [_get(front.port, "/slow") for _ in range(5)]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(client, n) for n in range(12)]
            answers = [name for future in futures for name in future.result(timeout=20)]
        counts = Counter(answers)
        assert sum(counts.values()) == 60
        assert counts["c"] <= 10, counts
        assert counts["a"] > counts["c"] and counts["b"] > counts["c"], counts
        assert time.monotonic() - started < 20
    finally:
        front.stop()


def test_ip_hash_keeps_each_client_address_on_one_backend(
    tmp_path: Path, backends: dict[str, GantryServer]
) -> None:
    """ip_hash: 20 requests with different URIs from 127.0.0.1 all reach one backend
    (tolerance: none); the same for ::1 when the host has IPv6 loopback."""
    hosts = ["127.0.0.1"]
    listen = '["127.0.0.1:FRONT_PORT"]'
    if _ipv6_loopback():
        hosts.append("::1")
        listen = '["127.0.0.1:FRONT_PORT", "[::1]:FRONT_PORT"]'
    front = _front(tmp_path, backends, 'balance = "ip_hash"', listen=listen)
    try:
        for host in hosts:
            seen = {_get(front.port, f"/item/{n}", host) for n in range(20)}
            assert len(seen) == 1, (host, seen)
    finally:
        front.stop()


def test_hash_of_request_uri_is_sticky_and_spread(
    tmp_path: Path, backends: dict[str, GantryServer]
) -> None:
    """hash with key "$request_uri": 30 URIs asked three times each (interleaved) always
    reach the same backend (tolerance: none), together at least two backends, and the one
    the front's own consistent-hash ring names for that URI."""
    front = _front(tmp_path, backends, 'balance = "hash"\nkey = "$request_uri"')
    try:
        uris = [f"/item/{n}?v={n * 7}" for n in range(30)]
        rounds = [{uri: _get(front.port, uri) for uri in uris} for _ in range(3)]
        assert rounds[0] == rounds[1] == rounds[2]
        assert len(set(rounds[0].values())) >= 2, rounds[0]
        by_address = {f"127.0.0.1:{backends[name].port}": name for name in NAMES}
        ring = UpstreamPool(
            Upstream("pool", servers=tuple(UpstreamServer(a) for a in by_address), balance="hash")
        )
        for uri, name in rounds[0].items():
            peer = ring.pick("", uri)
            assert peer is not None and by_address[peer.server.address] == name, uri
    finally:
        front.stop()


def test_hash_of_remote_addr_keeps_one_client_on_one_backend(
    tmp_path: Path, backends: dict[str, GantryServer]
) -> None:
    """hash with key "$remote_addr": 30 different URIs from 127.0.0.1 reach one backend
    (tolerance: none); the key is the client address, not the URI."""
    front = _front(tmp_path, backends, 'balance = "hash"\nkey = "$remote_addr"')
    try:
        seen = {_get(front.port, f"/item/{n}") for n in range(30)}
        assert len(seen) == 1, seen
    finally:
        front.stop()


def test_hash_of_a_cookie_is_sticky_per_cookie_across_uris(
    tmp_path: Path, backends: dict[str, GantryServer]
) -> None:
    """hash with key "$cookie_sid": 30 sessions, each asking three different URIs, stay
    on one backend each (tolerance: none) and together use at least two backends."""
    front = _front(tmp_path, backends, 'balance = "hash"\nkey = "$cookie_sid"')
    try:
        placed: dict[str, set[str]] = {}
        for n in range(30):
            cookie = {"Cookie": f"theme=dark; sid=s{n}"}
            placed[f"s{n}"] = {
                _get(front.port, f"/page/{page}", headers=cookie) for page in range(3)
            }
        assert all(len(names) == 1 for names in placed.values()), placed
        assert len(set.union(*placed.values())) >= 2, placed
    finally:
        front.stop()
