"""Upstream pools: each balancing method's distribution and the passive health checks."""

from __future__ import annotations

from collections import Counter

from gantry.config.front_model import Upstream, UpstreamServer
from gantry.front.balancing import HealthCheck, HealthTracker, UpstreamPool


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(
    *servers: UpstreamServer, balance: str = "round_robin", clock: Clock | None = None
) -> UpstreamPool:
    upstream = Upstream("u", servers=servers, balance=balance)
    return UpstreamPool(upstream, clock or Clock())


def _names(pool: UpstreamPool, picks: int, **kw: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        peer = pool.pick(**kw)
        assert peer is not None
        counts[peer.server.address] += 1
    return counts


def test_smooth_weighted_round_robin_sequence() -> None:
    pool = _pool(UpstreamServer("a", weight=5), UpstreamServer("b"), UpstreamServer("c"))
    sequence = "".join(pool.pick().server.address for _ in range(7))  # type: ignore[union-attr]
    assert sequence == "aabacaa"


def test_weights_share_within_tolerance() -> None:
    pool = _pool(UpstreamServer("a", weight=3), UpstreamServer("b", weight=1))
    counts = _names(pool, 10_000)
    assert abs(counts["a"] / 10_000 - 0.75) <= 0.02


def test_least_conn_prefers_the_idle_server() -> None:
    pool = _pool(UpstreamServer("a"), UpstreamServer("b"), balance="least_conn")
    busy = pool.pick()
    assert busy is not None
    pool.started(busy)
    for _ in range(5):
        other = pool.pick()
        assert other is not None and other is not busy


def test_ip_hash_is_sticky_per_slash24() -> None:
    servers = [UpstreamServer(f"s{i}") for i in range(4)]
    pool = _pool(*servers, balance="ip_hash")
    first = pool.pick(client_ip="198.51.100.7")
    assert all(pool.pick(client_ip="198.51.100.7") is first for _ in range(20))
    assert pool.pick(client_ip="198.51.100.200") is first  # same /24
    spread = {pool.pick(client_ip=f"10.{i}.{i}.1") for i in range(60)}
    assert len(spread) >= 3


def test_consistent_hash_moves_few_keys() -> None:
    servers = [UpstreamServer(f"s{i}") for i in range(4)]
    before = _pool(*servers, balance="hash")
    after = _pool(*servers[:3], balance="hash")
    keys = [f"/item/{i}" for i in range(10_000)]
    moved = sum(
        before.pick(key=k).server.address != after.pick(key=k).server.address  # type: ignore[union-attr]
        for k in keys
    )
    # only the keys of the removed server move: about a quarter
    assert moved <= 3500, moved
    assert all(before.pick(key="/same") is before.pick(key="/same") for _ in range(10))


def test_backup_only_when_primaries_are_out() -> None:
    clock = Clock()
    pool = _pool(UpstreamServer("a"), UpstreamServer("spare", backup=True), clock=clock)
    assert {p.server.address for p in (pool.pick() for _ in range(10)) if p} == {"a"}
    primary = pool.pick()
    assert primary is not None
    pool.started(primary)
    pool.finished(primary, ok=False)  # max_fails=1: out for fail_timeout
    assert pool.pick().server.address == "spare"  # type: ignore[union-attr]
    clock.now += 11  # fail_timeout (10 s) over: tried again
    assert pool.pick().server.address == "a"  # type: ignore[union-attr]


def test_down_servers_never_picked_and_none_when_nothing_usable() -> None:
    pool = _pool(UpstreamServer("a", down=True), UpstreamServer("b"))
    assert set(_names(pool, 50)) == {"b"}
    only = pool.pick()
    assert pool.pick(exclude=[only]) is None  # type: ignore[list-item]


def test_exclude_sends_a_retry_elsewhere() -> None:
    pool = _pool(UpstreamServer("a"), UpstreamServer("b"))
    first = pool.pick()
    second = pool.pick(exclude=[first])  # type: ignore[list-item]
    assert second is not None and second is not first


def test_health_tracker_rise_and_fall() -> None:
    pool = _pool(UpstreamServer("a"), UpstreamServer("b"))
    tracker = HealthTracker(pool, HealthCheck(rise=2, fall=3))
    peer = pool.peers()[0]
    assert not tracker.record(peer, False) and not tracker.record(peer, False)
    assert tracker.record(peer, False) and not peer.healthy
    assert set(_names(pool, 20)) == {"b"}
    assert not tracker.record(peer, True)
    assert tracker.record(peer, True) and peer.healthy


def test_hash_key_expands_nginx_variables() -> None:
    from gantry.front.balancing import hash_key
    from gantry.protocol.http1 import RequestHead

    head = RequestHead()
    head.method = "GET"
    head.target = b"/a/b?x=1"
    head.path = b"/a/b"
    head.query = b"x=1"
    head.headers = [(b"Host", b"Example.test:8080"), (b"Cookie", b"a=1; sid=abc"),
                    (b"X-Tenant", b"t7")]  # fmt: skip
    assert hash_key("$request_uri", head, "10.0.0.1") == "/a/b?x=1"
    assert hash_key("$uri|$args", head, "10.0.0.1") == "/a/b|x=1"
    assert hash_key("$remote_addr$host", head, "10.0.0.1") == "10.0.0.1example.test"
    assert hash_key("${http_x_tenant}-$cookie_sid", head, "") == "t7-abc"
    assert hash_key("$nope$request_method", head, "") == "GET"


def test_hash_balance_uses_the_configured_key() -> None:
    upstream = Upstream(
        name="u", balance="hash", hash_key="$http_x_tenant",
        servers=tuple(UpstreamServer(address=f"127.0.0.1:{9000 + i}") for i in range(4)),
    )  # fmt: skip
    pool = UpstreamPool(upstream)
    from gantry.front.balancing import hash_key
    from gantry.protocol.http1 import RequestHead

    picked = set()
    for uri in range(50):
        head = RequestHead()
        head.target = head.path = f"/{uri}".encode()
        head.headers = [(b"X-Tenant", b"same")]
        peer = pool.pick("127.0.0.1", hash_key(upstream.hash_key, head, "127.0.0.1"))
        assert peer is not None
        picked.add(peer.server.address)
    assert len(picked) == 1  # one tenant, one server, whatever the URI
