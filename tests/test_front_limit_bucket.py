"""A passing limit_req's check in C (front/limits/_bucket.c, built with the compiled
modules): the same answers, entries and LRU order as the Python path it stands in for,
the same lock (a dead holder's is taken over), the holder's PID where a waiter reads
it, in every forked worker. Without the build (GANTRY_PURE=1) both sides are Python."""

from __future__ import annotations

import os
import random
import time

from gantry.config.front_model import LimitReqZone
from gantry.front.limits.table import LOCK_PATIENCE, SharedTable
from gantry.front.limits.zones import LimitReqState
from gantry.protocol.http1 import RequestHead

HOLDER_INT = 4  # where table.py keeps the lock holder's PID in header_ints


def zone(slots: int, rate: float, python_only: bool = False) -> LimitReqState:
    state = LimitReqState(
        LimitReqZone(name="z", key="$binary_remote_addr", rate=rate, size=1 << 20),
        SharedTable(slots),
    )
    if python_only:
        state.bucket_check = None
    return state


def test_the_c_check_answers_as_the_python_path() -> None:
    helped, python = zone(8, 7.5), zone(8, 7.5, python_only=True)
    head = RequestHead()
    chooser = random.Random(16)
    now = 1_000_000_000  # (a monotonic clock in ms: never negative)
    for step in range(4000):
        address = f"192.0.2.{chooser.randrange(12)}"  # more keys than slots: evictions
        # mostly forward, within a millisecond or a few seconds; the clock back sometimes
        now += chooser.choice((0, 0, 1, 3, 40, 900, 5000, -5, -70_000))
        burst = chooser.choice((0, 2000, 5000))
        got = helped.check(helped.key.keyed(head, address, ""), burst, now)
        want = python.check(python.key.keyed(head, address, ""), burst, now)
        assert got == want, step
        assert helped.table.keys() == python.table.keys(), step
    assert helped.table.counter(0) == python.table.counter(0) > 0  # refusals counted
    for state in (helped, python):
        state.table.lock()
    try:
        for key in python.table.keys():
            slot = helped.table.find(key)
            assert helped.table.values(slot) == python.table.values(python.table.find(key))
    finally:
        for state in (helped, python):
            state.table.unlock()
    helped.table.close()  # the helper lets go of the map first
    python.table.close()


def test_a_lock_its_holder_died_with_is_taken_over() -> None:
    state = zone(16, 1.0)
    keyed = state.key.keyed(RequestHead(), "192.0.2.1", "")
    assert state.check(keyed, 10_000, 1000) == 0  # its slot remembered: the C path next
    assert state.check(keyed, 10_000, 1000) == 1000
    pid = os.fork()
    if pid == 0:
        state.table.lock()
        os._exit(0)  # dies holding it
    os.waitpid(pid, 0)
    started = time.monotonic()
    assert state.check(keyed, 10_000, 1000) == 2000  # waited for it, then counted
    assert time.monotonic() - started < LOCK_PATIENCE * 4
    assert state.check(keyed, 10_000, 1000) == 3000  # and it was released


def test_the_holder_pid_is_each_worker_s_own() -> None:
    state = zone(16, 1.0)
    keyed = state.key.keyed(RequestHead(), "192.0.2.1", "")
    state.check(keyed, 10_000, 1000)
    state.table.header_ints[HOLDER_INT] = 0
    state.check(keyed, 10_000, 1000)
    assert state.table.header_ints[HOLDER_INT] == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked after the helper was loaded
        try:
            state.check(keyed, 10_000, 1000)
            os.write(write, str(state.table.header_ints[HOLDER_INT]).encode())
        finally:
            os._exit(0)
    os.close(write)
    seen = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert int(seen) == pid
    assert state.check(keyed, 10_000, 1000) == 3000  # the child's request counted too
