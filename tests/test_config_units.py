"""nginx's units for sizes and times, parsed alone (tests through files: test_config_policy)."""

from __future__ import annotations

import pytest

from gantry.config.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("10m", 10 * 1024**2),
        ("10M", 10 * 1024**2),
        ("1g", 1024**3),
        (" 2k ", 2048),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "1.5m", "10mb", "1t", "1 m", "ten", True, 1.5, None])
def test_bad_sizes_say_what_is_accepted(text: object) -> None:
    with pytest.raises(ValueError, match=r'expected a size: bytes as an integer, .*"10m"'):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("30", 30.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1M", 30 * 86400.0),
        ("1y", 365 * 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005),
    ],
)
def test_times(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "30m1h", "1h1h", "5 minutes", "1H", False, None])
def test_bad_times_say_what_is_accepted(text: object) -> None:
    with pytest.raises(ValueError, match=r'expected a time: seconds as a number, .*"1h30m"'):
        parse_duration(text)
