"""nginx's units for sizes and times: "512k", "10m", "1g"; "500ms", "30s", "5m", "1h30m".

Every size or time key of every table takes a plain number too, meaning what the key
meant before units existed (bytes, seconds, or the unit the key names). The annotated
types here convert while validating, so the rest of Gantry sees plain numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator

__all__ = [
    "ByteRate",
    "Duration",
    "Mebibytes",
    "Size",
    "Unit",
    "WholeSeconds",
    "parse_byte_rate",
    "parse_duration",
    "parse_size",
]

SIZE_FORMS = 'bytes as an integer, or with a unit: "512k", "10m", "1g" (powers of 1024)'
TIME_FORMS = (
    'seconds as a number, or with units: "500ms", "30s", "5m", "1h", "2d", "1h30m" (also y, M, w)'
)

RATE_FORMS = 'bytes a second as an integer, or a size a second: "500b/s", "4k/s", "1m/s" (0: off)'

_SIZE = re.compile(r"^(-?\d+)([kmg]?)$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# nginx's time units (ngx_parse_time): a year of 365 days, a month of 30
_TIME_FACTOR = {
    "y": 365 * 86400.0,
    "M": 30 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_PLAIN_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_TIME_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|y|M|w|d|h|m|s)")
# nginx wants the units of a combined value from the largest down, each at most once
_TIME_ORDER = ["y", "M", "w", "d", "h", "m", "s", "ms"]


def parse_size(value: object, unit: int = 1) -> int:
    """A size in units of ``unit`` bytes: an integer as is, or "512k" / "10m" / "1g".

    Raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        raise ValueError(_size_error(value, unit))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match is not None:
            amount = int(match[1]) * _SIZE_FACTOR[match[2].lower()]
            whole, rest = divmod(amount, unit) if match[2] else (int(match[1]), 0)
            if rest:
                raise ValueError(f"expected a whole number of MiB, got {value!r}")
            return whole
    raise ValueError(_size_error(value, unit))


def parse_byte_rate(value: object) -> int:
    """Bytes a second: an integer as is, or "500b/s" / "4k/s" / "1m/s" (a size a second).

    Raises ValueError saying what is accepted."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text.endswith("/s"):
            text = text[:-2]
            text = text[:-1] if text.endswith("b") else text
            try:
                rate = parse_size(text)
            except ValueError:
                rate = -1
            if rate >= 0:
                return rate
            raise ValueError(f"expected a rate: {RATE_FORMS}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected a rate: {RATE_FORMS}, got {value!r}")


def _size_error(value: object, unit: int) -> str:
    forms = SIZE_FORMS if unit == 1 else SIZE_FORMS.replace("bytes", "MiB")
    return f"expected a size: {forms}, got {value!r}"


def parse_duration(value: object) -> float:
    """A time in seconds: a number as is, or "500ms", "30s", "5m", "1h", "2d", "1h30m".

    Raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        raise ValueError(_time_error(value))
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _PLAIN_NUMBER.match(text):
            return float(text)
        try:
            # nginx allows whitespace between the parts: "1h 30m"
            return _units(re.sub(r"\s+", "", text))
        except ValueError:
            pass
    raise ValueError(_time_error(value))


def _units(text: str) -> float:
    """Seconds in "1h30m"-style text; ValueError if it is not that."""
    position, total, last = 0, 0.0, -1
    for match in _TIME_PART.finditer(text):
        order = _TIME_ORDER.index(match[2])
        if match.start() != position or order <= last:
            raise ValueError(text)
        total += float(match[1]) * _TIME_FACTOR[match[2]]
        position, last = match.end(), order
    if position != len(text) or not text:
        raise ValueError(text)
    return total


def _time_error(value: object) -> str:
    return f"expected a time: {TIME_FORMS}, got {value!r}"


def _whole_seconds(value: object) -> object:
    if value is None:
        return None
    seconds = parse_duration(value)
    if not seconds.is_integer():
        raise ValueError(f"expected a whole number of seconds, got {value!r}")
    return int(seconds)


@dataclass(frozen=True)
class Unit:
    """Marks a field as a size or a time, for error messages and the reference."""

    kind: str  # "size", "time"
    plain: str  # what a plain number means: "bytes", "seconds", "MiB"

    @property
    def forms(self) -> str:
        """The forms a value may take, in words."""
        if self.kind == "time":
            return TIME_FORMS
        if self.kind == "rate":
            return RATE_FORMS
        return SIZE_FORMS if self.plain == "bytes" else SIZE_FORMS.replace("bytes", "MiB")


def _optional(convert: object) -> BeforeValidator:
    def check(value: object) -> object:
        return None if value is None else convert(value)  # type: ignore[operator]

    return BeforeValidator(check)


#: a size in bytes: 1048576, "1024k", "1m"
Size = Annotated[int, _optional(parse_size), Unit("size", "bytes")]
#: a size in MiB: 512, "512m", "1g"
Mebibytes = Annotated[int, _optional(lambda v: parse_size(v, 1024 * 1024)), Unit("size", "MiB")]
#: a time in seconds: 30, 0.5, "500ms", "30s", "1h30m"
Duration = Annotated[float, _optional(parse_duration), Unit("time", "seconds")]
#: a time in whole seconds: 2592000, "30d"
WholeSeconds = Annotated[int, BeforeValidator(_whole_seconds), Unit("time", "seconds")]
#: bytes a second: 500, "500b/s", "4k/s"
ByteRate = Annotated[int, _optional(parse_byte_rate), Unit("rate", "bytes a second")]
