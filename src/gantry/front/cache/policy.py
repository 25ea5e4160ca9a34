"""The cache's decisions as pure functions (RFC 9111 as a shared cache, RFC 5861,
RFC 9213, RFC 9211), in Varnish's states: which key, storable?, fresh?, stale-usable?

Nothing here touches a socket, a file or the clock: header fields come in as the
parser gives them (a list of (name, value) byte pairs) and times as plain seconds, so
every rule is a few-line unit test (tests/test_cache_policy.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from gantry.front.balancing import hash_key
from gantry.protocol.http1 import RequestHead

__all__ = [
    "Fields",
    "Freshness",
    "Usable",
    "bypassed",
    "cache_key",
    "cache_status",
    "Controls",
    "current_age",
    "directives",
    "field_value",
    "freshness",
    "initial_age",
    "invalidates",
    "merge_not_modified",
    "not_modified",
    "parse_http_date",
    "response_controls",
    "stale_on_error",
    "storable",
    "usable",
    "validators",
    "vary_names",
    "vary_values",
]

#: header fields in order, as the parser gives them
Fields = list[tuple[bytes, bytes]]

#: statuses a cache may give a heuristic lifetime (RFC 9110 15.1)
HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: methods that never invalidate (RFC 9110 9.2.1, safe)
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: a heuristic lifetime is a tenth of the time since Last-Modified, at most a day
HEURISTIC_FRACTION: Final = 0.1
HEURISTIC_MAX: Final = 86400.0
#: RFC 9111 1.2.2: a delta-seconds past 2^31 is sent as 2^31
DELTA_MAX: Final = 2**31
# Fields a 304 never replaces in the stored response (RFC 9111 3.2).
_KEPT_ON_UPDATE: Final = frozenset({b"content-length", b"content-encoding", b"transfer-encoding"})

_DIRECTIVE: Final = re.compile(
    rb'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*?))?\s*(?:,|$)'
)
#: the key of a zone that names none (nginx's proxy_cache_key default, with $host)
DEFAULT_KEY: Final = "$scheme$host$request_uri"


def field_value(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of field ``name`` (lower case), its lines joined with ", "; None when absent."""
    # a miss asks a response for a dozen fields: names of another length are passed over
    # without lower-casing them
    size = len(name)
    found: bytes | None = None
    more: list[bytes] | None = None
    for key, value in fields:
        if len(key) == size and key.lower() == name:
            if found is None:
                found = value.strip()
            elif more is None:
                more = [found, value.strip()]
            else:
                more.append(value.strip())
    if more is not None:
        return b", ".join(more)
    return found


#: values of Cache-Control parsed lately (an origin sends a few values over and over):
#: the parsed directives, shared by every caller, which only reads them
_PARSED: Final[dict[bytes, dict[str, bytes | None]]] = {}
PARSED_VALUES: Final = 256


def directives(value: bytes | None) -> dict[str, bytes | None]:
    """Cache-Control directives by lower-case name (the first of a repeated one wins, RFC
    9111 4.2.1); a quoted argument is unquoted, a bare directive maps to None. The dict
    may be shared with other callers: read it, never change it."""
    if not value:
        return {}
    known = _PARSED.get(value)
    if known is not None:
        return known
    result = _parse_directives(value)
    if len(_PARSED) >= PARSED_VALUES:
        _PARSED.clear()
    _PARSED[value] = result
    return result


def _parse_directives(value: bytes) -> dict[str, bytes | None]:
    result: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(value):
        match = _DIRECTIVE.match(value, pos)
        if match is None or match.end() == pos:
            # not a directive: skip to the next comma
            comma = value.find(b",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        pos = match.end()
        name = match.group(1).decode("latin-1").lower()
        argument = match.group(2)
        if argument is not None and argument.startswith(b'"'):
            argument = re.sub(rb"\\(.)", rb"\1", argument[1:-1])
        result.setdefault(name, argument)
    return result


def _delta(argument: bytes | None) -> float | None:
    """A delta-seconds argument; None when missing or not a number (RFC 9111 1.2.2)."""
    # bytes.isdigit: ASCII digits only, as 1*DIGIT wants (and no regex call per miss)
    if argument is None or not argument.isdigit():
        return None
    return float(min(int(argument), DELTA_MAX))


_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
         b"Dec"),
        1,
    )
}  # fmt: skip
_MONTH: Final = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_CLOCK: Final = rb"(\d\d):(\d\d):(\d\d)"
# RFC 9110 5.6.7: IMF-fixdate, and the obsolete rfc850-date and asctime-date forms,
# exactly: a date that is none of them is invalid (cache-tests' expires-parse).
_IMF_FIXDATE: Final = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) " + _MONTH + rb" (\d{4}) " + _CLOCK + rb" GMT"
)
_RFC850_DATE: Final = re.compile(
    rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-"
    + _MONTH
    + rb"-(\d\d) "
    + _CLOCK
    + rb" GMT"
)
_ASCTIME_DATE: Final = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _MONTH + rb" ( \d|\d\d) " + _CLOCK + rb" (\d{4})"
)


def parse_http_date(value: bytes | None) -> float | None:
    """An HTTP-date (RFC 9110 5.6.7: IMF-fixdate, rfc850-date or asctime-date, nothing
    looser) as a POSIX time; None if invalid."""
    if not value:
        return None
    value = value.strip()
    match = _IMF_FIXDATE.fullmatch(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
    else:
        match = _RFC850_DATE.fullmatch(value)
        if match is not None:
            day, month, short_year, hour, minute, second = match.groups()
            # a two-digit year more than 50 years ahead is in the past century (5.6.7)
            year = b"%d" % (2000 + int(short_year))
            if int(year) > _this_year() + 50:
                year = b"%d" % (1900 + int(short_year))
        else:
            match = _ASCTIME_DATE.fullmatch(value)
            if match is None:
                return None
            month, day, hour, minute, second, year = match.groups()
    try:
        fields = (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
        if not (1 <= fields[2] <= 31 and fields[3] < 24 and fields[4] < 60 and fields[5] < 61):
            return None
        return float(_timegm(*fields))
    except (KeyError, ValueError, OverflowError):
        return None


def _timegm(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """calendar.timegm of a date and time (UTC), in integer arithmetic: days from the civil
    date (H. Hinnant's algorithm), a day past the month's end counted on as timegm does."""
    if year < 1:
        raise ValueError("year 0")  # as timegm: before the proleptic calendar's first year
    if month <= 2:
        year -= 1
    era = year // 400
    of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    of_era_days = of_era * 365 + of_era // 4 - of_era // 100 + day_of_year
    days = era * 146097 + of_era_days - 719468
    return ((days * 24 + hour) * 60 + minute) * 60 + second


def _this_year() -> int:
    return time.gmtime().tm_year


@dataclass(frozen=True)
class Freshness:
    """What a stored response says about its own reuse, computed once when it is stored
    (and again when a 304 updates it)."""

    #: seconds it is fresh for, counted from its age 0
    lifetime: float
    #: stale-while-revalidate window (RFC 5861), seconds
    stale_while_revalidate: float = 0.0
    #: stale-if-error window (RFC 5861), seconds
    stale_if_error: float = 0.0
    #: never served stale: must-revalidate, proxy-revalidate or s-maxage
    must_revalidate: bool = False
    #: revalidated before each reuse (no-cache)
    no_cache: bool = False


_SF_KEY: Final = rb"[a-z*][a-z0-9_.*-]*"
_SF_BARE: Final = (
    rb'(?:-?\d{1,12}\.\d{1,3}|-?\d{1,15}|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
    rb"|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*|:[A-Za-z0-9+/=]*:|\?[01])"
)
_SF_PARAMS: Final = rb"(?:;[ ]*" + _SF_KEY + rb"(?:=" + _SF_BARE + rb")?)*"
_SF_MEMBER: Final = re.compile(rb"(" + _SF_KEY + rb")(?:=(" + _SF_BARE + rb"))?" + _SF_PARAMS)
_SF_INTEGER: Final = re.compile(rb"-?\d{1,15}")
#: CDN-Cache-Control directives whose value is delta-seconds (an sf-integer there)
_DELTA_DIRECTIVES: Final = frozenset(
    {"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"}
)


def targeted_directives(value: bytes) -> dict[str, bytes | None] | None:
    """A CDN-Cache-Control value (RFC 9213: a Structured Fields Dictionary, RFC 8941) as
    directives; None when it is not a valid one, or a delta directive is not an integer,
    so the field is ignored."""
    result: dict[str, bytes | None] = {}
    for member in value.split(b","):  # no sf-string of these directives holds a comma
        member = member.strip(b" \t")
        match = _SF_MEMBER.fullmatch(member)
        if match is None:
            return None
        name, item = match.group(1).decode("ascii"), match.group(2)
        if name in _DELTA_DIRECTIVES and (item is None or not _SF_INTEGER.fullmatch(item)):
            return None
        if item == b"?1":
            item = None  # true: a bare directive
        elif item == b"?0":
            continue  # false: absent
        result[name] = item  # the last of a repeated key wins in a dictionary
    return result


Controls = tuple[dict[str, bytes | None], bool]


def response_controls(fields: Fields) -> Controls:
    """The response's cache directives, and whether they came from CDN-Cache-Control
    (RFC 9213: a cache that honours it ignores Cache-Control and Expires when it is
    present and valid). Parsed once at a miss, for ``storable`` and ``freshness``."""
    targeted = field_value(fields, b"cdn-cache-control")
    if targeted is not None:
        parsed = targeted_directives(targeted)
        if parsed:
            return parsed, True
    return directives(field_value(fields, b"cache-control")), False


def storable(
    method: str,
    status: int,
    request: Fields,
    response: Fields,
    valid: Mapping[int, float],
    parsed: Controls | None = None,
) -> bool:
    """Whether a shared cache may store this response (RFC 9111 3 and 3.5); a response
    with Set-Cookie never is (nginx's default: a session must not go to another user).
    ``parsed``: ``response_controls(response)``, if already made."""
    if method != "GET" or status < 200 or status in (206, 304):
        return False
    if "no-store" in directives(field_value(request, b"cache-control")):
        return False
    controls, targeted = parsed if parsed is not None else response_controls(response)
    if "no-store" in controls or "private" in controls:
        return False
    if field_value(response, b"set-cookie") is not None:
        return False
    vary = vary_names(response)
    if vary is None:
        return False
    if field_value(request, b"authorization") is not None and not (
        "must-revalidate" in controls or "public" in controls or "s-maxage" in controls
    ):
        return False
    return (
        "public" in controls
        or "max-age" in controls
        or "s-maxage" in controls
        or (not targeted and field_value(response, b"expires") is not None)
        or status in HEURISTIC_STATUSES
        or status in valid
        or 0 in valid
    )


def freshness(
    status: int,
    response: Fields,
    valid: Mapping[int, float],
    parsed: Controls | None = None,
    date: float | None = None,
) -> Freshness:
    """The freshness of a stored response (RFC 9111 4.2.1): s-maxage, max-age, Expires
    less Date; else the zone's ``valid`` time for its status (0 stands for any status);
    else a heuristic from Last-Modified where 4.2.2 allows one. ``parsed`` and ``date``:
    ``response_controls(response)`` and its Date, if already made."""
    controls, targeted = parsed if parsed is not None else response_controls(response)
    if not targeted:
        known = _FRESHNESS_OF.get(id(controls))
        if known is not None and known[0] is controls:
            return known[1]
    must_revalidate = (
        "must-revalidate" in controls or "proxy-revalidate" in controls or "s-maxage" in controls
    )
    lifetime: float | None = None
    for name in ("s-maxage", "max-age"):
        if name in controls:
            lifetime = _delta(controls[name])
            if lifetime is None:
                lifetime = 0.0  # an invalid value: stale (4.2.1)
            break
    own = lifetime is not None  # the directives alone decide: the same for each response
    if date is None:
        date = parse_http_date(field_value(response, b"date"))
    if lifetime is None and not targeted:
        expires_field = field_value(response, b"expires")
        if expires_field is not None:
            expires = parse_http_date(expires_field)
            if expires is None or date is None:
                lifetime = 0.0  # an invalid Expires means already expired (5.3)
            else:
                lifetime = max(0.0, expires - date)
    if lifetime is None:
        configured = valid.get(status, valid.get(0))
        if configured is not None:
            lifetime = configured
    if lifetime is None:
        lifetime = 0.0
        modified = parse_http_date(field_value(response, b"last-modified"))
        if (
            modified is not None
            and date is not None
            and (status in HEURISTIC_STATUSES or "public" in controls)
        ):
            lifetime = min(HEURISTIC_MAX, max(0.0, (date - modified) * HEURISTIC_FRACTION))
    made = Freshness(
        lifetime=lifetime,
        stale_while_revalidate=_delta(controls.get("stale-while-revalidate")) or 0.0,
        stale_if_error=_delta(controls.get("stale-if-error")) or 0.0,
        must_revalidate=must_revalidate,
        no_cache="no-cache" in controls,
    )
    if own and not targeted:
        if len(_FRESHNESS_OF) >= PARSED_VALUES:
            _FRESHNESS_OF.clear()
        _FRESHNESS_OF[id(controls)] = (controls, made)
    return made


#: the freshness of the Cache-Control values parsed lately (``directives`` shares one
#: dict per value) whose max-age or s-maxage decides it alone: by the dict's id, with
#: the dict itself, so that the id is not another's while it is remembered. A miss
#: made its Freshness anew each time (a frozen dataclass: slow to build).
_FRESHNESS_OF: Final[dict[int, tuple[dict[str, bytes | None], Freshness]]] = {}


def initial_age(
    response: Fields, request_time: float, response_time: float, date: float | None = None
) -> float:
    """The corrected initial age of a response (RFC 9111 4.2.3), from its Date and Age and
    the times its request went out and it came back (``date``: its Date, if parsed)."""
    if date is None:
        date = parse_http_date(field_value(response, b"date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_value = 0.0
    age_field = field_value(response, b"age")
    if age_field is not None:
        age_value = _delta(age_field.split(b",")[0].strip()) or 0.0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


def current_age(initial: float, response_time: float, now: float) -> float:
    """The age of a stored response now (RFC 9111 4.2.3: initial age plus resident time)."""
    return initial + max(0.0, now - response_time)


class Usable(Enum):
    """What a stored response may do for a request that matched it."""

    #: answer from it
    FRESH = "fresh"
    #: answer from it, stale, as the client allows (max-stale)
    STALE = "stale"
    #: answer from it, stale, and refresh it meanwhile (stale-while-revalidate)
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    #: ask the origin first (a conditional request)
    REVALIDATE = "revalidate"


def usable(entry: Freshness, age: float, request: Fields) -> Usable:
    """Whether a stored response of this freshness and age can answer a request with these
    fields (RFC 9111 4.2, 5.2.1; RFC 5861 3)."""
    wanted = directives(field_value(request, b"cache-control"))
    if "no-cache" in wanted:
        return Usable.REVALIDATE
    if not wanted and b"no-cache" in (field_value(request, b"pragma") or b""):
        return Usable.REVALIDATE  # Pragma only counts without Cache-Control (5.4)
    if entry.no_cache:
        return Usable.REVALIDATE
    if "max-age" in wanted:
        limit = _delta(wanted["max-age"])
        if limit is not None and age > limit:
            return Usable.REVALIDATE
    left = entry.lifetime - age
    if "min-fresh" in wanted:
        floor = _delta(wanted["min-fresh"])
        if floor is not None and left < floor:
            return Usable.REVALIDATE
    if left > 0:
        return Usable.FRESH
    if entry.must_revalidate:
        return Usable.REVALIDATE
    if "max-stale" in wanted:
        allowed = wanted["max-stale"]
        stale_limit = _delta(allowed) if allowed is not None else float("inf")
        if stale_limit is not None and -left <= stale_limit:
            return Usable.STALE
    if -left <= entry.stale_while_revalidate:
        return Usable.STALE_WHILE_REVALIDATE
    return Usable.REVALIDATE


def stale_on_error(entry: Freshness, age: float, condition: str, use_stale: Iterable[str]) -> bool:
    """Whether a stale response may answer when the origin failed with ``condition``
    ("error", "timeout", "http_500", ...): within its stale-if-error window (RFC 5861 4),
    or when the zone's ``use_stale`` lists the condition; never for must-revalidate
    (4.2.4) nor for no-cache (5.2.2.4: not used without a successful revalidation)."""
    if entry.must_revalidate or entry.no_cache:
        return False
    if age - entry.lifetime <= entry.stale_if_error:
        return True
    return condition in use_stale


def vary_names(response: Fields) -> tuple[bytes, ...] | None:
    """The request fields the response varies on (lower case, sorted, unique); None for
    ``Vary: *``, which no request ever matches (RFC 9111 4.1)."""
    value = field_value(response, b"vary")
    if value is None:
        return ()
    names = {name.strip().lower() for name in value.split(b",") if name.strip()}
    if b"*" in names:
        return None
    return tuple(sorted(names))


def vary_values(names: tuple[bytes, ...], request: Fields) -> tuple[bytes | None, ...]:
    """The secondary key of a request (RFC 9111 4.1): the value of each field in ``names``,
    whitespace around its list members dropped; None for an absent field."""
    values: list[bytes | None] = []
    for name in names:
        value = field_value(request, name)
        if value is not None:
            value = b",".join([part.strip() for part in value.split(b",")])
        values.append(value)
    return tuple(values)


def cache_key(template: str, head: RequestHead, client_ip: str, https: bool = False) -> str:
    """The primary key of a request: ``template`` with its nginx variables replaced
    ($scheme$host$request_uri by default)."""
    if template == DEFAULT_KEY:
        # the default, put together directly (each hit makes it): as hash_key would
        host = b""
        for name, value in head.headers:
            if name.lower() == b"host":
                host = value
                break
        scheme = "https" if https else "http"
        return scheme + host.decode("latin-1").split(":")[0].lower() + head.target.decode("latin-1")
    return hash_key(template, head, client_ip, https)


def bypassed(bypass: Iterable[str], head: RequestHead, client_ip: str) -> bool:
    """Whether a request is not answered from the cache: a ``bypass`` variable of it is
    neither empty nor "0" (nginx's proxy_cache_bypass)."""
    for template in bypass:
        value = hash_key(template, head, client_ip)
        if value and value != "0":
            return True
    return False


def invalidates(method: str, status: int) -> bool:
    """Whether a response to ``method`` invalidates the stored responses of its target
    (RFC 9111 4.4: an unsafe method answered with a non-error status)."""
    return method not in SAFE_METHODS and 200 <= status < 400


def _etags(value: bytes) -> list[bytes]:
    """The entity tags of an If-None-Match list, weakness dropped (weak comparison)."""
    tags = []
    for tag in value.split(b","):
        tag = tag.strip()
        if tag.startswith(b"W/"):
            tag = tag[2:]
        if tag:
            tags.append(tag)
    return tags


def not_modified(request: Fields, stored: Fields) -> bool:
    """Whether a client's conditional GET is answered 304 from a stored response (RFC 9110
    13.1.2 and 13.1.3, weak comparison; If-Modified-Since only without If-None-Match)."""
    if_none_match = field_value(request, b"if-none-match")
    if if_none_match is not None:
        etag = field_value(stored, b"etag")
        if etag is None:
            return False
        tags = _etags(if_none_match)
        own = _etags(etag)
        return b"*" in tags or (bool(own) and own[0] in tags)
    since = parse_http_date(field_value(request, b"if-modified-since"))
    if since is None:
        return False
    modified = parse_http_date(field_value(stored, b"last-modified"))
    if modified is None:
        modified = parse_http_date(field_value(stored, b"date"))
    return modified is not None and modified <= since


def validators(stored: Fields) -> Fields:
    """The conditional fields that revalidate a stored response (RFC 9111 4.3.1)."""
    fields: Fields = []
    etag = field_value(stored, b"etag")
    if etag is not None:
        fields.append((b"If-None-Match", etag))
    modified = field_value(stored, b"last-modified")
    if modified is not None:
        fields.append((b"If-Modified-Since", modified))
    return fields


def merge_not_modified(stored: Fields, update: Fields) -> Fields:
    """The stored fields as a 304 updates them (RFC 9111 4.3.4 and 3.2): each field the 304
    carries replaces the stored one of that name, except the framing ones."""
    replaced = {name.lower() for name, _ in update} - _KEPT_ON_UPDATE
    merged = [(n, v) for n, v in stored if n.lower() not in replaced]
    merged.extend((n, v) for n, v in update if n.lower() in replaced)
    return merged


def cache_status(hit: bool, ttl: float | None = None, detail: str = "") -> bytes:
    """A Cache-Status field value (RFC 9211): ``hit`` with its ttl (negative when stale),
    else ``fwd=<detail>`` (uri-miss, vary-miss, stale, bypass, request, method)."""
    if hit and ttl is not None and not detail:
        return b"gantry; hit; ttl=%d" % int(ttl)  # every hit: the same, made quicker
    parts = ["gantry"]
    if hit:
        parts.append("hit")
    else:
        parts.append(f"fwd={detail or 'uri-miss'}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    return "; ".join(parts).encode("ascii")
