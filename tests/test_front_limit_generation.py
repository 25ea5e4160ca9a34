"""A passing limit_req's check of its remembered slot (issue 16's bench goal: a limit
that lets a request through costs at most 5% of it): the slot is trusted while its
generation, a small integer each slot takes anew whenever an entry goes into it or out
of it, is the one the key saw there; no 16-byte digest is read back and compared (two
64-bit integers, boxed on each read). The hint stays a hint: an entry that went, or a
slot another key took meanwhile, even in another worker, sends the key to its lookup."""

from __future__ import annotations

import os

from gantry.config.front_model import LimitReqZone
from gantry.front.limits.table import GENERATION_INT, NO_SLOT, SLOT_INTS, SharedTable, digest
from gantry.front.limits.zones import LimitReqState, ZoneKey
from gantry.protocol.http1 import RequestHead


def test_a_slot_takes_a_new_generation_with_each_entry_in_or_out() -> None:
    table = SharedTable(4)
    table.lock()
    try:
        slot = table.insert(digest(b"a"), 1, 2, 3)
        first = table.generation(slot)
        assert first != 0
        table.remove(slot)
        emptied = table.generation(slot)
        again = table.insert(digest(b"b"))
        assert again == slot  # the freed slot is taken again
        assert len({first, emptied, table.generation(slot)}) == 3
        # it wraps to 1, never to 0 (a key that knows no slot has generation 0)
        table.slot_ints[slot * SLOT_INTS + GENERATION_INT] = (1 << 30) - 1
        table.remove(slot)
        assert table.generation(slot) == 1
        # the values and links of an entry never touch it
        third = table.insert(digest(b"c"), 7, 8, 9)
        generation = table.generation(third)
        table.store(third, 10, 11, 12)
        table.touch(third)
        assert table.generation(third) == generation
    finally:
        table.unlock()


def test_a_remembered_key_trusts_its_slot_while_the_generation_holds() -> None:
    zone = LimitReqZone(name="z", key="$binary_remote_addr", rate=1.0, size=1 << 20)
    state = LimitReqState(zone, SharedTable(2))  # two entries: a third evicts the oldest
    keyed = state.key.of_address("192.0.2.1")
    assert keyed is state.key.keyed(RequestHead(), "192.0.2.1", "ignored")
    assert state.check(keyed, 10_000, 1000) == 0
    slot, generation = keyed.slot, keyed.generation
    assert slot != NO_SLOT and generation == state.table.generation(slot)
    # the digest in the slot is not what the check reads: a passing request with the
    # generation unchanged goes by the slot alone
    assert state.check(keyed, 10_000, 1000) == 1000
    pid = os.fork()
    if pid == 0:  # another worker: two new addresses, the second takes keyed's slot
        try:
            for address in ("192.0.2.2", "192.0.2.3"):
                other = state.key.of_address(address)
                for _ in range(3):
                    state.check(other, 10_000, 1000)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    taken = state.key.of_address("192.0.2.3")
    table = state.table
    table.lock()
    try:
        assert table.find(taken.digest) == slot  # the hint now points at another's entry
        assert table.generation(slot) != generation
    finally:
        table.unlock()
    # keyed starts again from an empty bucket (not from the other key's 2000) ...
    assert state.check(keyed, 10_000, 1000) == 0
    assert keyed.slot not in (NO_SLOT, slot)
    assert keyed.generation == table.generation(keyed.slot)
    # ... and the other key's entry was left as it was
    table.lock()
    try:
        assert table.values(slot)[0] == 2000
    finally:
        table.unlock()


def test_a_key_made_per_request_keeps_no_hint() -> None:
    key = ZoneKey("$binary_remote_addr$http_x_id")
    head = RequestHead()
    head.headers = [(b"X-Id", b"7")]
    state = LimitReqState(
        LimitReqZone(name="t", key=key.template, rate=1.0, size=1 << 20), SharedTable(8)
    )
    keyed = state.key.keyed(head, "192.0.2.1", "")
    assert state.check(keyed, 10_000, 1000) == 0
    assert state.check(keyed, 10_000, 1000) == 1000
    assert (keyed.slot, keyed.generation, keyed.remembered) == (NO_SLOT, 0, False)
