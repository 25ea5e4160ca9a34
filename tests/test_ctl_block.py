"""`gantry ctl block | unblock | blocked` (issue 16) on a real 2-worker `gantry front`
before a real `gantry serve` app: one bans file (beside the control socket when only
``control`` is set) that ctl and autoban both write, applied in every worker within a
second, kept across a restart. Clients are told apart by X-Forwarded-For from a trusted
127.0.0.1."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from gantry.front.blocklist import Ban, BanStore, normalise_target
from gantry.front.limits.autoban import BanTable, LocalBanner
from tests.process import (
    REPO,
    Front,
    Launcher,
    accepts,
    free_port,
    gantry_env,
    read_until_closed,
    ready_workers,
    require_program,
    try_get,
    wait_for,
)
from tests.support_control import connection_to_each, ctl

CONFIG = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2
control = "{control}"
{extra}
[front.real_ip]
from = ["127.0.0.1"]

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
{access}
[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{app}" }}]
"""

AUTOBAN = """
[[front.autoban]]
when = "404"
count = 3
within = "1m"
ban_for = "1h"
"""


def _app(launch: Launcher, tmp: Path) -> Path:
    app = tmp / "app.sock"
    if not app.exists():
        launch.serve("tests.apps_contract:app", "--uwsgi-socket", str(app), wait_for=str(app))
    return app


def _front(
    launch: Launcher,
    tmp: Path,
    name: str = "front",
    extra: str = "",
    control: str = "front.ctl",
    access: str = "",
) -> Front:
    config = CONFIG.format(control=tmp / control, app=_app(launch, tmp), extra=extra, access=access)
    front = launch.front(config, name=name)
    assert wait_for(lambda: accepts(tmp / control)), "no control socket"
    return front


def _get(conn: http.client.HTTPConnection, client: str, path: str = "/hello") -> int:
    conn.request("GET", path, headers={"X-Forwarded-For": client})
    response = conn.getresponse()
    response.read()
    return response.status


def _each_worker(front: Front) -> list[http.client.HTTPConnection]:
    pids = ready_workers(front.pid, 2)
    return list(connection_to_each(front.port, pids).values())


def _all(conns: list[http.client.HTTPConnection], client: str, status: int) -> bool:
    return all(_get(conn, client) == status for conn in conns)


def _blocked(sock: str) -> dict[str, dict[str, object]]:
    done = ctl("-s", sock, "blocked", "--json")
    assert done.returncode == 0, done.stderr
    return {ban["target"]: ban for ban in json.loads(done.stdout)["bans"]}


def test_block_refuses_in_both_workers_within_a_second_and_unblock_lets_in(
    launch: Launcher, short_tmp: Path
) -> None:
    """Only ``control`` is set: the bans file is beside it."""
    front = _front(launch, short_tmp)
    sock = str(short_tmp / "front.ctl")
    conns = _each_worker(front)
    assert _all(conns, "203.0.113.7", 200)
    done = ctl("-s", sock, "block", "203.0.113.7", "--reason", "scraping")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("blocked 203.0.113.7 (until no end)")
    blocked_at = time.monotonic()
    assert wait_for(lambda: _all(conns, "203.0.113.7", 403), 1.0, 0.02)
    assert time.monotonic() - blocked_at < 1.0
    assert _all(conns, "203.0.113.8", 200)  # others pass
    # a network, IPv6, and a v4-mapped address kept as the IPv4 one it is
    assert ctl("-s", sock, "block", "2001:db8::/64").returncode == 0
    assert ctl("-s", sock, "block", "::ffff:198.51.100.9", "--for", "1h").returncode == 0
    assert wait_for(lambda: _all(conns, "2001:db8::5", 403), 1.0, 0.02)
    assert wait_for(lambda: _all(conns, "198.51.100.9", 403), 1.0, 0.02)
    bans = _blocked(sock)
    assert set(bans) == {"203.0.113.7", "2001:db8::/64", "198.51.100.9"}
    assert bans["203.0.113.7"]["source"] == "ctl" and bans["203.0.113.7"]["until"] is None
    assert bans["203.0.113.7"]["reason"] == "scraping"
    assert wait_for(lambda: int(_blocked(sock)["2001:db8::/64"]["hits"]) >= 2, 5)  # type: ignore[call-overload]
    assert (short_tmp / "front.ctl.bans").exists()
    done = ctl("-s", sock, "unblock", "::ffff:203.0.113.7")
    assert done.returncode == 0 and done.stdout == "unblocked 203.0.113.7\n", done
    assert wait_for(lambda: _all(conns, "203.0.113.7", 200), 1.0, 0.02)
    assert ctl("-s", sock, "unblock", "203.0.113.7").returncode == 1  # none any more
    text = ctl("-s", sock, "blocked").stdout
    assert text.startswith("2 bans") and "2001:db8::/64: no end, ctl" in text
    # a bad address is refused by ctl itself, before the front
    bad = ctl("-s", sock, "block", "203.0.113.300")
    assert bad.returncode == 2 and "expected an IP address or CIDR (IPv4 or IPv6)" in bad.stderr
    assert ctl("-s", sock, "block", "203.0.113.9", "--for", "soon").returncode == 2


def test_a_timed_ban_expires_and_a_restart_keeps_an_hour_ban(
    launch: Launcher, short_tmp: Path
) -> None:
    front = _front(launch, short_tmp)
    sock = str(short_tmp / "front.ctl")
    conns = _each_worker(front)
    # the hour's ban first: a second `gantry ctl` start on a busy machine took most of a
    # short ban's life before its 403 was looked for
    assert ctl("-s", sock, "block", "203.0.113.21", "--for", "1h", "--reason", "r").returncode == 0
    assert ctl("-s", sock, "block", "203.0.113.20", "--for", "3s").returncode == 0
    assert wait_for(lambda: _all(conns, "203.0.113.20", 403), 1.5, 0.02)
    assert wait_for(lambda: _all(conns, "203.0.113.20", 200), 10.0, 0.05)
    assert set(_blocked(sock)) == {"203.0.113.21"}  # the expired one is gone from the list
    for conn in conns:
        conn.close()
    front.stop()
    again = _front(launch, short_tmp, name="again")
    conns = _each_worker(again)
    assert _all(conns, "203.0.113.21", 403)
    assert _all(conns, "203.0.113.20", 200)
    ban = _blocked(sock)["203.0.113.21"]
    assert ban["reason"] == "r" and float(ban["until"]) > time.time() + 3500  # type: ignore[arg-type]


def test_an_autoban_ban_is_listed_with_its_rule(launch: Launcher, short_tmp: Path) -> None:
    front = _front(launch, short_tmp, extra=AUTOBAN)
    sock = str(short_tmp / "front.ctl")
    conns = _each_worker(front)
    statuses = [_get(conns[n % 2], "203.0.113.30", "/missing") for n in range(3)]
    assert statuses == [404, 404, 404]
    assert wait_for(lambda: _all(conns, "203.0.113.30", 403), 1.0, 0.02)
    ban = _blocked(sock)["203.0.113.30"]
    assert ban["source"] == "autoban rule 1"
    assert "autoban rule 1 (when '404'" in str(ban["reason"])
    assert ctl("-s", sock, "unblock", "203.0.113.30").returncode == 0
    assert wait_for(lambda: _all(conns, "203.0.113.30", 200), 1.0, 0.02)


def _ban_many(path: str, first: int, count: int) -> None:
    banner = LocalBanner(BanTable(16), path)
    for n in range(first, first + count):
        banner.ban(f"10.0.{n // 250}.{n % 250 + 1}", 3600, "test", "autoban rule 1")


def test_autoban_writes_and_ctl_removals_share_one_lock(tmp_path: Path) -> None:
    """Two processes banning while a third lifts other bans: no ban is lost (the removal
    rewrites the file; an unlocked append made meanwhile would vanish)."""
    path = str(tmp_path / "bans")
    store = BanStore(path)
    for n in range(200):
        store.add(f"192.0.2.{n + 1}", 3600, "", "ctl")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_ban_many, args=(path, k * 150, 150)) for k in range(2)]
    for writer in writers:
        writer.start()
    for n in range(200):
        store.remove(f"192.0.2.{n + 1}")
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    kept = {ban.target for ban in store.active()}
    assert len(kept) == 300, len(kept)
    assert all(ban.source == "autoban rule 1" for ban in store.active())


def test_ban_file_and_blocklist_state_are_one_file(tmp_path: Path) -> None:
    base: dict[str, object] = {"listen": ["127.0.0.1:8080"]}
    one = front_config_from_dict({**base, "ban_file": "/tmp/b"})
    assert one.ban_file == "/tmp/b" and one.blocklist.state == "/tmp/b"
    two = front_config_from_dict({**base, "blocklist": {"state": "/tmp/b"}})
    assert two.ban_file == "/tmp/b"
    ctl_only = front_config_from_dict({**base, "control": "/run/g/front.ctl"})
    assert ctl_only.ban_file == "/run/g/front.ctl.bans"
    assert front_config_from_dict(base).ban_file is None
    with pytest.raises(ConfigError, match=r"front.blocklist.state: .* name two files"):
        front_config_from_dict(
            {**base, "ban_file": "/tmp/a", "blocklist": {"state": "/tmp/b"}},
            "gantry.toml",
        )


def test_targets_are_normalised() -> None:
    assert normalise_target("::ffff:203.0.113.5") == "203.0.113.5"
    assert normalise_target("::ffff:203.0.113.0/120") == "203.0.113.0/24"
    assert normalise_target("2001:DB8::1/128") == "2001:db8::1"
    assert normalise_target("10.1.2.3/8") == "10.0.0.0/8"
    with pytest.raises(ValueError):
        normalise_target("example.com")


def _stats_limits(stats_sock: Path) -> dict[str, Any]:
    """The "limits" part of a front's stats document."""
    assert wait_for(lambda: accepts(stats_sock), 10)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(stats_sock))
        return json.loads(read_until_closed(client, 5).data)["limits"]  # type: ignore[no-any-return]


def test_a_ctl_block_is_shared_through_redis(launch: Launcher, short_tmp: Path) -> None:
    """Two fronts naming one real redis-server: a block on one refuses on the other in
    both its workers within a second, and an unblock lets the client in there again."""
    binary = require_program("redis-server", "redis-server")
    redis_sock = short_tmp / "redis.sock"
    launch.program(
        [binary, "--port", "0", "--unixsocket", str(redis_sock), "--save", "",
         "--appendonly", "no", "--dir", str(short_tmp)],
        redis_sock, "redis",
    )  # fmt: skip
    shared = f'[front.shared]\nredis = "unix://{redis_sock}?db=0"\n'
    one = _front(launch, short_tmp, "one", shared, "one.ctl")
    # the other front denies .42 by access too: the ban is checked first (as the blocklist)
    stats_sock = short_tmp / "other-stats.sock"
    other = _front(
        launch, short_tmp, "other", f'stats = "{stats_sock}"\n' + shared, "other.ctl",
        'access = ["deny 203.0.113.42", "allow all"]',
    )  # fmt: skip
    conns = _each_worker(other)
    assert _all(conns, "203.0.113.40", 200)
    done = ctl("-s", str(short_tmp / "one.ctl"), "block", "203.0.113.40", "--for", "1h")
    assert done.returncode == 0 and not done.stderr, done
    assert wait_for(lambda: _all(conns, "203.0.113.40", 403), 1.0, 0.02)
    assert _all(conns, "203.0.113.41", 200)
    # the other front lists it as Redis's (its own file does not hold it)
    listed = _blocked(str(short_tmp / "other.ctl"))["203.0.113.40"]
    assert listed["source"] == "redis" and float(listed["until"]) > time.time() + 3500  # type: ignore[arg-type]
    assert _blocked(str(short_tmp / "one.ctl"))["203.0.113.40"]["source"] == "ctl"
    assert ctl("-s", str(short_tmp / "one.ctl"), "unblock", "203.0.113.40").returncode == 0
    assert wait_for(lambda: _all(conns, "203.0.113.40", 200), 1.0, 0.02)
    before = _stats_limits(stats_sock)["blocked"]["ban"]
    assert _all(conns, "203.0.113.42", 403)  # by access: not a ban's refusal
    assert _stats_limits(stats_sock)["blocked"]["ban"] == before
    assert ctl("-s", str(short_tmp / "one.ctl"), "block", "203.0.113.42").returncode == 0

    def refused_by_the_ban() -> bool:
        assert _all(conns, "203.0.113.42", 403)
        return int(_stats_limits(stats_sock)["blocked"]["ban"]) >= int(before) + 2

    assert wait_for(refused_by_the_ban, 1.0, 0.02)
    assert one.pid


def test_blocked_hits_and_bans_in_stats_metrics_and_top(launch: Launcher, short_tmp: Path) -> None:
    """Refusals by source (a ban, a blocklist file's line), bans running (an expired one
    left out) and bans per autoban rule: in the stats JSON, the metrics and gantry top."""
    stats_sock = short_tmp / "stats.sock"
    metrics_port = free_port()
    blocked_file = short_tmp / "blocked.txt"
    blocked_file.write_text("198.51.100.0/24\n")
    extra = (
        f'stats = "{stats_sock}"\nmetrics = "127.0.0.1:{metrics_port}"\n'
        f'[front.blocklist]\nfiles = ["{blocked_file}"]\n{AUTOBAN}'
    )
    front = _front(launch, short_tmp, extra=extra)
    sock = str(short_tmp / "front.ctl")
    conns = _each_worker(front)
    assert ctl("-s", sock, "block", "203.0.113.50").returncode == 0
    assert ctl("-s", sock, "block", "203.0.113.51", "--for", "1s").returncode == 0
    assert wait_for(lambda: _all(conns, "203.0.113.50", 403), 1.0, 0.02)
    assert _all(conns, "198.51.100.4", 403)  # 2 by the file
    assert [_get(conns[n % 2], "203.0.113.52", "/missing") for n in range(3)] == [404] * 3
    assert wait_for(lambda: _all(conns, "203.0.113.52", 403), 1.0, 0.02)

    def limits() -> dict[str, Any]:
        return _stats_limits(stats_sock)

    assert wait_for(lambda: accepts(stats_sock), 10)
    # active: .50 and the autoban's .52; the 1 s ban of .51 has expired
    assert wait_for(lambda: limits()["bans"]["active"] == 2, 5), limits()
    doc = limits()
    assert doc["blocked"]["file"] == 2
    assert doc["blocked"]["ban"] >= 4  # .50 and .52 in both workers
    assert doc["autoban"] == [{"rule": 1, "when": "404", "bans": 1}]
    status, body = try_get(metrics_port, "/metrics")
    assert status == 200
    text = body.decode()
    assert 'gantry_blocked_total{source="file"} 2' in text
    assert f'gantry_blocked_total{{source="ban"}} {doc["blocked"]["ban"]}' in text
    assert 'gantry_autoban_bans_total{rule="1",when="404"} 1' in text
    assert "gantry_bans_active 2" in text
    top = subprocess.run(
        [sys.executable, "-m", "gantry", "top", str(stats_sock), "--once"],
        cwd=REPO, env=gantry_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert top.returncode == 0, top.stderr
    assert "DEFENCES" in top.stdout
    assert "by blocklist files; 2 bans running" in top.stdout
    assert "autoban rule 1 (404): 1 bans" in top.stdout


def test_gantry_up_blocks_through_the_stack_control_socket(
    launch: Launcher, short_tmp: Path
) -> None:
    sock = short_tmp / "stack.ctl"
    config = f"""[stack]
control = "{sock}"

[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2

[front.real_ip]
from = ["127.0.0.1"]

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "web"

[[app]]
name = "web"
module = "tests.apps_contract:app"
"""
    up = launch.up(config)
    assert wait_for(sock.exists)
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=30)
    assert wait_for(lambda: _get(conn, "203.0.113.60") == 200)
    done = ctl("-c", str(up.config_path), "block", "203.0.113.60", "--for", "1h")
    assert done.returncode == 0, done.stderr
    # a new connection each time: whichever worker takes it refuses

    def fresh() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", up.port, timeout=30)

    assert wait_for(lambda: all(_get(fresh(), "203.0.113.60") == 403 for _ in range(6)), 1.0)
    assert _get(fresh(), "203.0.113.61") == 200
    assert set(_blocked(str(sock))) == {"203.0.113.60"}
    assert (short_tmp / "stack.ctl.bans").exists()
    conn.close()


def test_appended_bans_are_compacted_past_a_size(tmp_path: Path) -> None:
    """Autoban appends; past COMPACT_AT bytes the file is rewritten with the running
    bans only (the last line of each), so a long attack does not grow it for good."""
    from gantry.front import blocklist

    store = BanStore(str(tmp_path / "bans"))
    line = len(Ban("10.0.0.1", 1e10, "x" * 100, "autoban rule 1").line())
    renewals = blocklist.COMPACT_AT // line + 50
    for n in range(renewals):
        store.append(f"10.0.0.{n % 10 + 1}", 3600, "x" * 100, "autoban rule 1")
    assert os.path.getsize(store.path) < blocklist.COMPACT_AT
    assert len(store.active()) == 10


def test_a_bans_file_that_cannot_be_written_is_a_clear_refusal(tmp_path: Path) -> None:
    from gantry.control.protocol import CommandError
    from gantry.front.control import block

    (tmp_path / "file").write_text("")
    with pytest.raises(CommandError, match=r"the bans file .*/file/bans: .*workers' user"):
        block(str(tmp_path / "file" / "bans"), None, {"addr": "192.0.2.1"})
