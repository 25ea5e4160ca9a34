"""The shortcuts of a miss (issue 15's miss bench): each gives what the long way gave."""

from __future__ import annotations

import calendar
import os
import random
from pathlib import Path

from gantry.config.front_model import CacheZone
from gantry.front.cache.policy import (
    Freshness,
    freshness,
    initial_age,
    parse_http_date,
    response_controls,
    storable,
)
from gantry.front.cache.store import CacheStore, Entry

NOW = 1000.0


def zone(path: str) -> CacheZone:
    return CacheZone(name="z", path=path)


def entry(key: str = "k") -> Entry:
    return Entry(
        key=key, status=200, reason=b"OK", fields=[(b"Content-Type", b"text/plain")],
        request_time=1.0, response_time=2.0, initial_age=0.0, freshness=Freshness(60.0),
    )  # fmt: skip


def test_http_dates_are_timegm_of_their_fields() -> None:
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    draw = random.Random(15)
    for _ in range(5000):
        year, month, day = draw.randint(1, 9999), draw.randint(1, 12), draw.randint(1, 31)
        hour, minute, second = draw.randint(0, 23), draw.randint(0, 59), draw.randint(0, 60)
        text = (
            f"{draw.choice(days)}, {day:02d} {months[month - 1]} {year:04d} "
            f"{hour:02d}:{minute:02d}:{second:02d} GMT"
        )
        expected = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        assert parse_http_date(text.encode()) == float(expected), text
    # a day past the month's end runs on, as timegm counts it; year 0 is no date
    assert parse_http_date(b"Sat, 31 Feb 2024 00:00:00 GMT") == float(
        calendar.timegm((2024, 3, 2, 0, 0, 0, 0, 0, 0))
    )
    assert parse_http_date(b"Sat, 01 Jan 0000 00:00:00 GMT") is None


def test_directives_parsed_once_decide_as_before() -> None:
    responses = [
        [(b"Cache-Control", b"max-age=60, stale-while-revalidate=5")],
        [(b"CDN-Cache-Control", b"max-age=30"), (b"Cache-Control", b"no-store")],
        [(b"Cache-Control", b"private")],
        [(b"Expires", b"Sun, 06 Nov 1994 08:49:37 GMT")],
        [(b"Last-Modified", b"Sun, 06 Nov 1994 08:49:37 GMT")],
        [(b"Cache-Control", b"s-maxage=10, must-revalidate"), (b"Age", b"3")],
    ]
    date = b"Sun, 06 Nov 1994 09:00:00 GMT"
    for fields in responses:
        fields = [*fields, (b"Date", date)]
        parsed = response_controls(fields)
        when = parse_http_date(date)
        assert storable("GET", 200, [], fields, {}, parsed) == storable("GET", 200, [], fields, {})
        assert freshness(200, fields, {}, parsed, when) == freshness(200, fields, {})
        assert initial_age(fields, 1.0, 2.0, when) == initial_age(fields, 1.0, 2.0)


def test_entry_paths_are_those_os_path_join_makes(tmp_path: Path) -> None:
    for root in (str(tmp_path / "a"), str(tmp_path / "b") + "/", str(tmp_path) + "//c"):
        store = CacheStore(zone(root))
        digest = store.digest("k")
        assert store.path_of(digest) == os.path.join(root, digest[:2], digest)


def test_a_packed_entry_replaces_a_file_this_worker_made_after_its_lookup(
    tmp_path: Path,
) -> None:
    store = CacheStore(zone(str(tmp_path)))
    assert store.lookup("k", [], NOW) is None  # a miss: no file there, remembered
    large = store.writer(entry())
    assert large.write(b"x" * (300 * 1024))  # too large for a pack: a file of its own
    assert large.commit() is not None and os.path.exists(large.final)
    small = store.writer(entry())
    assert small.write(b"small") and small.packable()
    assert small.commit_packed() is not None
    assert not os.path.exists(large.final)  # else it would come back once the pack goes
    found = CacheStore(zone(str(tmp_path))).lookup("k", [], NOW)
    assert found is not None and found.body == b"small"


def test_a_packed_entry_replaces_a_file_another_worker_made_before_its_lookup(
    tmp_path: Path,
) -> None:
    one, two = CacheStore(zone(str(tmp_path))), CacheStore(zone(str(tmp_path)))
    large = two.writer(entry())
    assert large.write(b"y" * (300 * 1024)) and large.commit() is not None
    assert one.lookup("other", [], NOW) is None
    small = one.writer(entry())
    assert small.write(b"small") and small.commit_packed() is not None
    assert not os.path.exists(large.final)
    stored: Entry | None = two.lookup("k", [], NOW + 5)
    assert stored is not None and stored.body == b"small"
