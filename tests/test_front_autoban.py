"""``[[front.autoban]]`` (issue 16) on real 2-worker `gantry front` processes: events
counted across workers, a ban refused with 403 in every worker, logged with its rule,
kept in the ban file across a restart, and lifted when ban_for has passed; and a
response counted at the time its caller read (the window runs on that clock)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gantry.config.front_model import AutobanRule
from gantry.front.limits.autoban import Autoban, BanTable, LocalBanner
from gantry.front.limits.zones import now_ms
from tests.process import Front, Launcher, try_get, wait_for
from tests.support_front import autoban_rule, limit_req_zone, limited_site
from tests.support_limits import burst, spread_connections


def _front(
    launch: Launcher, ban_for: str, when: str = "limit_req", count: int = 20, name: str = "front"
) -> tuple[Front, Path]:
    root = launch.workdir / "root"
    if not root.exists():
        (root / "free").mkdir(parents=True)
        (root / "a").write_text("a")
        (root / "free" / "w").write_text("warm")
    bans = launch.workdir / "bans.jsonl"
    # one request a minute at /, none limited at /free/
    config = limited_site(
        root,
        zones=limit_req_zone(rate="1r/m"),
        unlimited="/free/",
        workers=2,
        front=f'ban_file = "{bans}"',
        tables=autoban_rule(when, count, ban_for=ban_for),
    )
    return launch.front(config, name=name), bans


def _ban_by_limit_req(front: Front) -> None:
    assert try_get(front.port, "/a")[0] == 200  # the one request a minute
    conns = spread_connections(front.port, front.pid, 10, "/free/w")  # both workers count
    statuses = burst(front.port, 20, "/a", conns=conns).statuses
    assert statuses == [503] * 20, statuses


def test_twenty_refusals_ban_until_ban_for_passes(launch: Launcher) -> None:
    front, bans = _front(launch, "3s")
    assert try_get(front.port, "/free/w")[0] == 200
    # connections each worker holds from before the ban (a new connection of a banned
    # address is refused at accept once the workers read the bans file, and closed)
    conns = spread_connections(front.port, front.pid, 5, "/free/w")
    _ban_by_limit_req(front)
    banned_at = time.monotonic()
    assert wait_for(lambda: try_get(front.port, "/free/w")[0] == 403, 2)
    # refused by both workers
    assert burst(front.port, 10, "/free/w", conns=conns).statuses == [403] * 10
    assert "banned 127.0.0.1 for 3s: autoban rule 1 (when 'limit_req': 20 within 60s)" in (
        front.log_text()
    )
    entry = json.loads(bans.read_text().splitlines()[-1])
    assert entry["addr"] == "127.0.0.1" and entry["until"] > time.time()
    assert wait_for(lambda: try_get(front.port, "/free/w")[0] == 200, 10)
    assert time.monotonic() - banned_at >= 2.5


def test_a_ban_survives_a_restart(launch: Launcher) -> None:
    front, bans = _front(launch, "1h")
    _ban_by_limit_req(front)
    assert wait_for(lambda: try_get(front.port, "/free/w")[0] == 403, 2)
    front.stop()
    again, _ = _front(launch, "1h", name="again")
    assert try_get(again.port, "/free/w")[0] == 403
    assert "1 bans still running" in again.log_text()


def test_status_rule(launch: Launcher) -> None:
    front, _ = _front(launch, "1h", when="4xx", count=5)
    for _ in range(4):
        assert try_get(front.port, "/free/missing")[0] == 404
    assert try_get(front.port, "/free/w")[0] == 200
    assert try_get(front.port, "/free/missing")[0] == 404  # the fifth 4xx
    assert wait_for(lambda: try_get(front.port, "/free/w")[0] == 403, 2)
    assert "autoban rule 1 (when '4xx': 5 within 60s)" in front.log_text()


def test_a_response_is_counted_at_the_time_its_caller_read() -> None:
    # record_request passes the clock read it takes for the request's time: the rule's
    # window runs on those values, not on a read of autoban's own (with one, the three
    # calls below would fall within a second and ban at the third)
    bans = BanTable(64)
    autoban = Autoban(
        (AutobanRule(when="404", count=3, within=1.0, ban_for=60.0),), LocalBanner(bans, None)
    )
    client = "192.0.2.7"
    try:
        start = now_ms()
        autoban.response(client, 404, start)
        autoban.response(client, 404, start + 500)
        autoban.response(client, 404, start + 1600)  # past the first's second: counted anew
        assert not bans.banned(client)
        autoban.response(client, 404, start + 1700)
        autoban.response(client, 200, start + 1800)  # not a 404: not counted
        assert not bans.banned(client)
        autoban.response(client, 404, start + 2500)  # the third within 1 s of start + 1600
        assert bans.banned(client)
    finally:
        autoban.close()
        bans.close()
