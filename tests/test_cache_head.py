"""An entry's head as written to its file or pack (numbers in one struct, then the
lengths of its strings, then the strings): read back whole, and any cut of it is
refused, never read as another entry."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import Entry, _Broken, _entry_from_head

latin = st.binary(max_size=40)
text = st.text(st.characters(blacklist_categories=()), max_size=40)  # lone surrogates too
number = st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf, 0.0, -0.0, 1e300])


@given(
    key=text,
    status=st.integers(0, 999),
    reason=latin,
    fields=st.lists(st.tuples(latin, latin), max_size=8),
    times=st.tuples(number, number, number),
    fresh=st.tuples(number, number, number, st.booleans(), st.booleans()),
    vary=st.lists(st.tuples(latin, st.none() | latin), max_size=3),
    tags=st.lists(text, max_size=3),
    purged=st.booleans(),
)
def test_the_head_reads_back_whole_and_a_cut_of_it_is_refused(
    key: str,
    status: int,
    reason: bytes,
    fields: list[tuple[bytes, bytes]],
    times: tuple[float, float, float],
    fresh: tuple[float, float, float, bool, bool],
    vary: list[tuple[bytes, bytes | None]],
    tags: list[str],
    purged: bool,
) -> None:
    entry = Entry(
        key=key, status=status, reason=reason, fields=fields, request_time=times[0],
        response_time=times[1], initial_age=times[2], freshness=Freshness(*fresh),
        vary=tuple(n for n, _ in vary), vary_values=tuple(v for _, v in vary),
        tags=tuple(tags), purged=purged,
    )  # fmt: skip
    head = entry.head_bytes()
    back = _entry_from_head(head)
    assert (back.key, back.status, back.reason, back.fields) == (key, status, reason, fields)
    assert (back.request_time, back.response_time, back.initial_age) == times
    assert back.freshness == entry.freshness
    assert (back.vary, back.vary_values, back.tags, back.purged) == (
        entry.vary, entry.vary_values, entry.tags, purged,
    )  # fmt: skip
    for cut in {0, 1, len(head) // 2, len(head) - 1}:
        if cut < len(head):
            with pytest.raises(_Broken):
                _entry_from_head(head[:cut])
    with pytest.raises(_Broken):
        _entry_from_head(head + b"x")


@given(
    keys=st.tuples(text, text),
    reason=latin,
    fields=st.lists(st.tuples(latin, latin), max_size=8),
    tags=st.lists(text, max_size=3),
)
def test_a_head_made_with_another_entrys_tail_is_its_own(
    keys: tuple[str, str], reason: bytes, fields: list[tuple[bytes, bytes]], tags: list[str]
) -> None:
    """A miss's head reuses the part after the key made for another entry of the same
    fields (see _Shape in the cache handler): the bytes are those made from scratch."""
    first, second = (
        Entry(
            key=key,
            status=200,
            reason=reason,
            fields=fields,
            request_time=n,
            response_time=n + 0.5,
            initial_age=0.0,
            freshness=Freshness(60.0),
            tags=tuple(tags),
        )
        for n, key in enumerate(keys)
    )
    head = second.head_bytes(first.head_tail())
    assert head == second.head_bytes()
    assert _entry_from_head(head).key == keys[1]
