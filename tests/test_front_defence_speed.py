"""The defences' per-request cost (issue 16's bench goals: a passing limit_req at most 5%
of a request, refusals at least as cheap as nginx's deny), and what it must not change.

- A passing limit_req reads and writes its zone's entry an integer at a time (no struct
  call, no tuple or bytes made), and the zone's lock records its holder the same way;
  only a key kept across requests (the address alone) has its slot hint and digest
  halves, a key made per request costs what it did.
- The ban step runs only where a ban can exist (autoban, a bans file, Redis): a front
  with a blocklist alone has nothing to ask on each request.
- The request counters are a compiled class: each request's update is a native write
  (the plain dataclass cost a refused request generic attribute lookups); the stats see
  the same counts.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from gantry.front import worker as worker_module
from gantry.front.connection import FrontConnection
from gantry.front.limits.handler import BanHandler
from tests.process import Launcher, read_until_closed, wait_for
from tests.support_limits import InProcessFront, limited_config, limited_front, route_limits


@pytest.fixture
def site(short_tmp: Path) -> Path:
    root = short_tmp / "site"
    for name in ("limited", "static"):
        (root / name).mkdir(parents=True)
        (root / name / "one.txt").write_text("one\n")
    return root


@pytest.fixture
def limited(site: Path) -> Iterator[tuple[InProcessFront, FrontConnection]]:
    with limited_front(site) as pair:
        yield pair


def test_a_passing_limit_makes_no_struct_call(
    limited: tuple[InProcessFront, FrontConnection],
) -> None:
    front, conn = limited
    limits = route_limits(front)
    c_calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            c_calls.append(getattr(arg, "__name__", repr(arg)))

    sys.setprofile(profile)
    try:
        for _ in range(5):
            assert limits.handle(conn, None) is False  # passed on to the next handler
    finally:
        sys.setprofile(None)
    assert conn.limit_status == "PASSED"
    # pure run: the calls are seen (compiled, the handler is one C function, "handle")
    assert not {"pack_into", "unpack_from"} & set(c_calls), c_calls
    # the lock's holder is written as the entry is: an integer of the map
    state = limits.one
    assert state is not None
    table = state.table
    assert table.try_lock()
    try:
        assert table.header_ints[4] == os.getpid()
    finally:
        table.unlock()
    # and the entry holds what the struct reading says: 6 requests, 1 s at 1000r/s
    # leaks 1000 a millisecond, so the excess is at most one request's
    slot = table.find(state.key.keyed(conn.head, "127.0.0.1", "").digest)
    assert slot >= 0
    excess, last, third = table.values(slot)
    assert 0 < excess <= 6000 and last > 0 and third == 0


def _chain_of(text: str) -> tuple[Any, ...]:
    front = InProcessFront(text)
    try:
        route = front.worker.route("t", b"/static/one.txt")
        assert route is not None
        return route[3]
    finally:
        front.close()


BLOCKLIST_ONLY = """
[front]
listen = ["127.0.0.1:1"]
workers = 1
{extra}

[front.blocklist]
files = ["{listed}"]

[[front.server]]
[[front.server.location]]
path = "/static/"
root = "{root}"
"""


def test_the_ban_step_runs_only_where_a_ban_can_exist(site: Path, short_tmp: Path) -> None:
    listed = short_tmp / "listed.txt"
    listed.write_text("192.0.2.1\n")
    alone = BLOCKLIST_ONLY.format(extra="", listed=listed, root=site)
    assert not [h for h in _chain_of(alone) if isinstance(h, BanHandler)]
    with_file = BLOCKLIST_ONLY.format(
        extra=f'ban_file = "{short_tmp / "bans"}"', listed=listed, root=site
    )
    assert [h for h in _chain_of(with_file) if isinstance(h, BanHandler)]
    with_rule = alone.replace(
        "\n[front.blocklist]",
        '\n[[front.autoban]]\nwhen = "404"\ncount = 2\nwithin = "1m"\nban_for = "1h"\n'
        "\n[front.blocklist]",
    )
    assert [h for h in _chain_of(with_rule) if isinstance(h, BanHandler)]


def test_an_autoban_still_refuses_on_the_next_request(site: Path, short_tmp: Path) -> None:
    """With a rule, the ban step is there and acts: two 404s, then a 403 for that client."""
    listed = short_tmp / "listed.txt"
    listed.write_text("192.0.2.1\n")
    text = BLOCKLIST_ONLY.format(extra="", listed=listed, root=site).replace(
        "\n[front.blocklist]",
        '\n[[front.autoban]]\nwhen = "404"\ncount = 2\nwithin = "1m"\nban_for = "1h"\n'
        "\n[front.blocklist]",
    )
    front = InProcessFront(text)
    client = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    client.setblocking(False)
    try:
        for _ in range(2):
            assert front.ask(b"GET /static/none HTTP/1.1\r\nHost: t\r\n\r\n", client).startswith(
                b"HTTP/1.1 404"
            )
        answer = front.ask(b"GET /static/one.txt HTTP/1.1\r\nHost: t\r\n\r\n", client)
        assert answer.startswith(b"HTTP/1.1 403"), answer
    finally:
        client.close()
        front.close()


STATS = """
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1
stats = "{stats}"

[front.real_ip]
from = ["127.0.0.1"]

[front.blocklist]
files = ["{listed}"]

[[front.server]]
[[front.server.location]]
path = "/static/"
root = "{root}"
"""


def _stats(path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        doc: dict[str, Any] = json.loads(read_until_closed(sock, 5).data)
    return doc


def test_the_stats_count_refused_and_served_requests_as_before(
    launch: Launcher, site: Path, short_tmp: Path
) -> None:
    listed = short_tmp / "listed.txt"
    listed.write_text("192.0.2.1\n")
    stats = short_tmp / "stats.sock"
    front = launch.front(STATS.format(stats=stats, listed=listed, root=site))
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        for client in ("192.0.2.1", "198.51.100.1", "192.0.2.1"):
            sock.sendall(
                f"GET /static/one.txt HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n"
                "\r\n".encode()
            )
        sock.sendall(b"GET /static/one.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock, 10).data
    assert data.count(b"HTTP/1.1 403") == 2 and data.count(b"HTTP/1.1 200") == 2

    def counted() -> bool:
        workers = _stats(stats)["workers"]
        return sum(w["requests"] for w in workers) == 4

    assert wait_for(counted, 5)  # copied into the slot once a second
    (worker,) = _stats(stats)["workers"]
    assert (worker["status_2xx"], worker["status_4xx"]) == (2, 2)
    assert worker["tx"] > 0


@pytest.mark.skipif(
    not worker_module.__file__ or worker_module.__file__.endswith(".py"),
    reason="compiled build only: a pure run's classes are all plain Python ones",
)
def test_the_counters_are_a_compiled_class(site: Path) -> None:
    front = InProcessFront(limited_config(site))
    try:
        # a native class's instance has no __dict__: its attributes are C fields
        assert not hasattr(front.worker.counters, "__dict__")
    finally:
        front.close()


def test_a_key_made_per_request_takes_no_slot_hint_and_no_extra_work() -> None:
    """A key template other than the address alone is evaluated for each request: it
    keeps no slot hint (nor its generation), so a key never reused costs what it did,
    and its slot is never read on trust."""
    from gantry.config.front_model import LimitReqZone
    from gantry.front.limits.table import NO_SLOT, SharedTable
    from gantry.front.limits.zones import LimitReqState, ZoneKey
    from gantry.protocol.http1 import RequestHead

    zone = LimitReqZone(name="z", key="$binary_remote_addr$http_x_id", rate=1.0, size=1 << 20)
    state = LimitReqState(zone, SharedTable(64))
    head = RequestHead()
    head.headers = [(b"X-Id", b"7")]
    assert isinstance(state.key, ZoneKey) and not state.key.by_address
    c_calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        # what a key's making calls (pure run: compiled, it is not seen)
        code = frame.f_code
        if event == "c_call" and code.co_filename.endswith("zones.py"):
            c_calls.append(f"{code.co_name}:{getattr(arg, '__name__', '')}")

    excesses = []
    sys.setprofile(profile)
    try:
        for _ in range(3):
            keyed = state.key.keyed(head, "192.0.2.1", "")
            excesses.append(state.check(keyed, 10_000, 1000))
    finally:
        sys.setprofile(None)
    assert excesses == [0, 1000, 2000]  # counted as ever, in one entry
    assert keyed.slot == NO_SLOT and keyed.generation == 0 and not keyed.remembered
    assert "__init__:from_bytes" not in c_calls, c_calls
    # the address's own key is remembered: its slot hinted, with the slot's generation
    by_address = LimitReqState(
        LimitReqZone(name="a", key="$binary_remote_addr", rate=1.0, size=1 << 20),
        SharedTable(64),
    )
    remembered = by_address.key.keyed(head, "192.0.2.1", "")
    assert by_address.check(remembered, 10_000, 1000) == 0
    assert remembered.slot != NO_SLOT and remembered.generation != 0
