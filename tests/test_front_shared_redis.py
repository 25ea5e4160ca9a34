"""``[front.shared] redis`` (issue 16): two real `gantry front` processes sharing a real
redis-server (started by the test on a unix socket, stopped by PID) hold one limit_req
rate between them, share bans, and keep serving when Redis goes away."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Front, Launcher, require_program, short_tempdir, try_get, wait_for
from tests.support_front import autoban_rule, limit_req_zone, limited_site, shared_redis
from tests.support_limits import burst


def _config(sock: Path, root: Path, fail: str = "") -> str:
    """Two workers sharing the Redis at ``sock``: ``root`` at / limited to 1 request and
    a burst of 5 (at 10r/s) a client and round, /free/ not limited, three 404s a ban;
    ``fail``: the [front.shared] table's fail key."""
    return limited_site(
        root,
        '{ zone = "perip", burst = 5, nodelay = true }',
        zones=limit_req_zone("$binary_remote_addr$http_x_round"),
        unlimited="/free/",
        workers=2,
        tables=shared_redis(sock) + (f'fail = "{fail}"\n' if fail else "") + autoban_rule("404", 3),
    )


class Redis:
    """A redis-server on a unix socket, restartable on the same socket."""

    def __init__(self, launch: Launcher, folder: Path) -> None:
        self.launch = launch
        self.binary = require_program("redis-server", "redis-server")
        self.sock = folder / "redis.sock"
        self.starts = 0
        self.process = self.start()

    def start(self) -> object:
        self.starts += 1
        argv = [self.binary, "--port", "0", "--unixsocket", str(self.sock), "--save", "",
                "--appendonly", "no", "--dir", str(self.sock.parent)]  # fmt: skip
        self.process = self.launch.program(argv, self.sock, f"redis-{self.starts}")
        return self.process

    def stop(self) -> None:
        process = self.process
        process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        process.wait(10)  # type: ignore[attr-defined]
        self.sock.unlink(missing_ok=True)


@pytest.fixture
def redis(launch: Launcher) -> Iterator[Redis]:
    with short_tempdir() as folder:
        yield Redis(launch, folder)


def _fronts(launch: Launcher, redis: Redis) -> tuple[Front, Front]:
    root = launch.workdir / "root"
    (root / "free").mkdir(parents=True)
    (root / "a").write_text("a")
    (root / "free" / "w").write_text("warm")
    config = _config(redis.sock, root)
    return launch.front(config, name="one"), launch.front(config, name="two")


def test_two_fronts_hold_one_rate(launch: Launcher, redis: Redis) -> None:
    one, two = _fronts(launch, redis)
    for attempt in range(3):
        # 10 requests to each front at once: 6 pass between them (1 + a burst of 5)
        header = f"X-Round: {attempt}\r\n"
        import socket

        conns = [
            socket.create_connection(("127.0.0.1", front.port), timeout=10)
            for _ in range(10)
            for front in (one, two)
        ]
        statuses = burst(0, 20, "/a", header, conns=conns).statuses
        if statuses.count(200) == 6:
            break
    assert sorted(statuses) == [200] * 6 + [503] * 14, statuses


def test_a_ban_on_one_front_refuses_on_the_other(launch: Launcher, redis: Redis) -> None:
    one, two = _fronts(launch, redis)
    assert try_get(two.port, "/free/w")[0] == 200
    for _ in range(3):
        assert try_get(one.port, "/free/missing")[0] == 404
    assert wait_for(lambda: try_get(one.port, "/free/w")[0] == 403, 2)
    assert wait_for(lambda: try_get(two.port, "/free/w")[0] == 403, 2), two.log_text()


def test_redis_stopped_both_fronts_keep_serving(launch: Launcher, redis: Redis) -> None:
    one, two = _fronts(launch, redis)
    assert try_get(one.port, "/a", headers={"X-Round": "before"})[0] == 200
    redis.stop()
    for n in range(5):
        for front in (one, two):
            assert try_get(front.port, "/a", headers={"X-Round": f"down{n}"})[0] == 200
    assert wait_for(lambda: "unreachable" in one.log_text() and "unreachable" in two.log_text())
    # local limits meanwhile: a burst of 5 past one request, per front
    statuses = burst(one.port, 10, "/a", "X-Round: local\r\n").statuses
    assert sorted(statuses) == [200] * 6 + [503] * 4, statuses
    redis.start()
    assert wait_for(lambda: "is back" in one.log_text(), 20), one.log_text()
    assert try_get(one.port, "/a", headers={"X-Round": "after"})[0] == 200


def test_fail_closed_refuses_limited_requests_while_redis_is_down(
    launch: Launcher, redis: Redis
) -> None:
    root = launch.workdir / "root"
    (root / "free").mkdir(parents=True)
    (root / "a").write_text("a")
    (root / "free" / "w").write_text("warm")
    config = _config(redis.sock, root, fail="closed")
    front = launch.front(config)
    assert try_get(front.port, "/a")[0] == 200
    redis.stop()
    assert wait_for(lambda: try_get(front.port, "/a")[0] == 503, 5)
    assert try_get(front.port, "/free/w")[0] == 200  # no limit there: served
    assert "refusing limited requests" in front.log_text()
    redis.start()
    assert wait_for(lambda: try_get(front.port, "/a", headers={"X-Round": "1"})[0] == 200, 20)
