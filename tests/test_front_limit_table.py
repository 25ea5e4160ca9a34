"""The shared table behind the limit zones (front/limits/table.py), between real forked
processes: entries and their LRU as a reference model says, and a lock whose holder
died is taken over instead of blocking every worker for good."""

from __future__ import annotations

import os
import random
import time
from collections import OrderedDict

from gantry.front.limits.table import LOCK_PATIENCE, SharedTable, digest


def test_entries_and_lru_follow_a_reference_model() -> None:
    table = SharedTable(50)
    model: OrderedDict[bytes, int] = OrderedDict()  # most recent last
    chooser = random.Random(16)
    for step in range(5000):
        key = digest(str(chooser.randrange(120)).encode())
        table.lock()
        try:
            slot = table.find(key)
            assert (slot >= 0) == (key in model), step
            if slot >= 0:
                assert table.values(slot)[0] == model[key]
                model.move_to_end(key)
                if chooser.random() < 0.2:
                    table.remove(slot)
                    del model[key]
                else:
                    model[key] += 1
                    table.store(slot, model[key], 0, 0)
            else:
                if len(model) == 50:
                    model.popitem(last=False)  # the least recently used goes
                table.insert(key, 7, 0, 0)
                model[key] = 7
        finally:
            table.unlock()
        assert table.keys() == list(reversed(model))


def test_a_forked_worker_sees_the_same_table() -> None:
    table = SharedTable(16)
    pid = os.fork()
    if pid == 0:  # the child writes, as another worker would
        table.lock()
        table.insert(digest(b"child"), 42, 0, 0)
        table.unlock()
        os._exit(0)
    os.waitpid(pid, 0)
    table.lock()
    try:
        slot = table.find(digest(b"child"))
        assert slot >= 0 and table.values(slot)[0] == 42
    finally:
        table.unlock()


def test_the_lock_of_a_dead_holder_is_taken_over() -> None:
    table = SharedTable(16)
    pid = os.fork()
    if pid == 0:
        table.lock()
        os._exit(0)  # dies holding it (as a worker killed in the critical section)
    os.waitpid(pid, 0)
    started = time.monotonic()
    table.lock()  # without the take-over: blocked for good
    table.unlock()
    assert time.monotonic() - started < LOCK_PATIENCE * 4
    table.lock()  # released properly by the taker
    table.unlock()
