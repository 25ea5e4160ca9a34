"""The cost of a limit_req that lets a request through (issue 16's bench goal: at most 5%
below the same location without it): the route's limits worked out once, the key
remembered per address with the slot of its entry, and one locked read and write of
that entry; an entry that went meanwhile (another worker's insert evicted it) is looked
up again, never read from a slot another key now holds."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from gantry.config.front_model import LimitReqZone
from gantry.front.connection import FrontConnection
from gantry.front.limits.table import SharedTable
from gantry.front.limits.zones import LimitReqState, limit_key
from gantry.protocol.http1 import RequestHead
from tests.support_limits import InProcessFront, limited_front, route_limits

#: what a passing request may call, C functions included: the zone's lock, and nothing
#: else: its entry is read and written as integers of the map, the time it is counted at
#: is the request's start (nginx's: its loop's clock, not a clock read of its own), and
#: the key of a keep-alive client's next request is the last one's
ALLOWED_C_CALLS = {"acquire", "release"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[InProcessFront, FrontConnection]]:
    """A front worker in this process behind a real listening socket, and the
    connection of a client that had one request answered through the limit."""
    root = tmp_path / "site"
    (root / "limited").mkdir(parents=True)
    (root / "limited" / "one.txt").write_text("one\n")
    with limited_front(root) as pair:
        yield pair


def test_a_passing_request_is_a_few_shared_memory_operations(
    served: tuple[InProcessFront, FrontConnection],
) -> None:
    front, conn = served
    limits = route_limits(front)
    calls: list[str] = []
    c_calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)
        elif event == "c_call":
            c_calls.append(getattr(arg, "__name__", repr(arg)))

    requests = 5
    sys.setprofile(profile)
    try:
        for _ in range(requests):
            assert limits.handle(conn, None) is False  # passed on to the next handler
    finally:
        sys.setprofile(None)
    c_calls.remove("setprofile")  # the call that ended the recording
    # compiled (mypyc), the handler is itself a C function, and what it calls of its own
    # compiled code is not seen: the calls checked are then those of the pure run
    c_calls = [name for name in c_calls if name != "handle"]
    assert conn.limit_status == "PASSED"
    # no key formatting or digest, no address parsing, no walk of the table's chains
    assert set(c_calls) <= ALLOWED_C_CALLS, c_calls
    assert len(c_calls) <= 8 * requests, c_calls
    # compiled (mypyc), the Python calls are not seen at all; else a handful a request
    assert len(calls) <= 6 * requests, calls
    assert "find" not in calls and "insert" not in calls, calls


def test_each_address_gets_its_own_key_from_the_memo() -> None:
    zone = LimitReqZone(name="z", key="$binary_remote_addr", rate=1.0, size=1 << 20)
    key = LimitReqState(zone, SharedTable(64)).key
    head = RequestHead()
    one, other = "192.0.2.1", "192.0.2.2"
    first = key.keyed(head, one, "")
    assert key.keyed(head, one, "") is first  # remembered
    second = key.keyed(head, other, "")
    assert second is not first and second.digest != first.digest
    # alternating clients (one proxy connection, several X-Forwarded-For): each its own
    for _ in range(3):
        assert key.keyed(head, one, "") is first
        assert key.keyed(head, other, "") is second
    assert first.digest == key._evaluate(head, one, "").digest
    assert second.digest == key._evaluate(head, other, "").digest
    # a unix socket's client (no address) is not limited, before or after another
    assert key.keyed(head, "", "").digest == b""
    assert key.keyed(head, one, "") is first
    assert key.keyed(head, "", "").digest == b""


def test_the_limit_still_counts_on_the_short_path(
    served: tuple[InProcessFront, FrontConnection],
) -> None:
    front, conn = served
    limits = route_limits(front)
    # 1000r/s, burst 100, nodelay: some 100 more pass at once, then one is refused
    passed = 0
    while limits.handle(conn, None) is False:
        passed += 1
        assert passed < 1000, "never refused"
    assert 90 <= passed <= 110, passed
    assert conn.limit_status == "REJECTED" and conn.status == 503


def test_an_entry_evicted_by_another_worker_is_looked_up_again() -> None:
    zone = LimitReqZone(name="z", key="$binary_remote_addr", rate=1.0, size=1 << 20)
    state = LimitReqState(zone, SharedTable(2))  # two entries: a third evicts the oldest
    head = RequestHead()
    first = state.key.keyed(head, "192.0.2.1", "")
    assert state.check(first, 10_000, 1000) == 0  # new: its slot is remembered
    assert state.check(first, 10_000, 1000) == 1000  # one request in its bucket
    old_slot = first.slot
    pid = os.fork()
    if pid == 0:  # another worker: two new addresses, the second takes first's slot
        try:
            for address in ("192.0.2.2", "192.0.2.3"):
                keyed = state.key.keyed(head, address, "")
                state.check(keyed, 10_000, 1000)
                state.check(keyed, 10_000, 1000)
                state.check(keyed, 10_000, 1000)  # 2000: two requests in its bucket
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    third = state.key.keyed(head, "192.0.2.3", "")
    table = state.table
    table.lock()
    try:
        assert table.find(first.digest) == -1
        third_slot = table.find(third.digest)
    finally:
        table.unlock()
    assert third_slot == old_slot  # the hint now points at another key's entry
    # first starts again from an empty bucket (not from the 2000 in that slot) ...
    assert state.check(first, 10_000, 1000) == 0
    assert first.slot not in (-1, old_slot)
    # ... and the other key's entry was left as it was
    table.lock()
    try:
        assert table.find(third.digest) == old_slot
        assert table.values(old_slot)[0] == 2000
    finally:
        table.unlock()


def test_key_templates_are_split_once_and_evaluated_as_nginx_does() -> None:
    head = RequestHead()
    head.headers = [(b"Host", b"example.test"), (b"X-Round", b"7")]
    assert limit_key("$binary_remote_addr", head, "192.0.2.1", "s") == bytes([192, 0, 2, 1])
    assert limit_key("$remote_addr", head, "2001:db8::1", "s") == b"2001:db8::1"
    assert limit_key("$binary_remote_addr$http_x_round", head, "192.0.2.1", "s") == (
        bytes([192, 0, 2, 1]) + b"7"
    )
    assert limit_key("${server_name}:$remote_addr:", head, "192.0.2.1", "site") == (
        b"site:192.0.2.1:"
    )
    assert limit_key("$http_x_missing", head, "192.0.2.1", "s") == b""  # not limited
    assert limit_key("$binary_remote_addr", head, "unix:", "s") == b""
