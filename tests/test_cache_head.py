"""An entry's head as written to its file or pack (written out directly, not by
json.dumps): the same bytes json.dumps makes of its document, read back whole."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from gantry.front.cache.policy import Freshness
from gantry.front.cache.store import Entry, _entry_from_head

latin = st.binary(max_size=40)
text = st.text(max_size=40)
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
def test_the_head_is_json_dumps_of_its_document_and_reads_back(
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
    head = entry.head_json()
    assert head == json.dumps(entry.head_document(), separators=(",", ":")).encode()
    back = _entry_from_head(head)
    assert (back.key, back.status, back.reason, back.fields) == (key, status, reason, fields)
    assert (back.request_time, back.response_time, back.initial_age) == times
    assert back.freshness == entry.freshness
    assert (back.vary, back.vary_values, back.tags, back.purged) == (
        entry.vary, entry.vary_values, entry.tags, purged,
    )  # fmt: skip
