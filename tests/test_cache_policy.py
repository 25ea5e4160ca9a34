"""The cache's decisions (front.cache.policy), one rule a test, without sockets."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from gantry.front.cache.policy import (
    Fields,
    Freshness,
    Usable,
    bypassed,
    cache_key,
    cache_status,
    current_age,
    directives,
    freshness,
    initial_age,
    invalidates,
    merge_not_modified,
    not_modified,
    stale_on_error,
    storable,
    usable,
    validators,
    vary_names,
    vary_values,
)
from gantry.protocol.http1 import RequestHead

NOW = 1_700_000_000.0


def date(at: float) -> bytes:
    return formatdate(at, usegmt=True).encode()


def fields(*pairs: str) -> Fields:
    out = []
    for pair in pairs:
        name, _, value = pair.partition(":")
        out.append((name.strip().encode(), value.strip().encode()))
    return out


def head(target: str = "/a?b=1", *pairs: str, method: str = "GET") -> RequestHead:
    h = RequestHead()
    h.method = method
    h.target = target.encode()
    path, _, query = target.partition("?")
    h.path, h.query = path.encode(), query.encode()
    h.headers = fields(*pairs)
    return h


def test_directives_parse_quotes_case_and_first_wins() -> None:
    parsed = directives(b'Max-Age=60, max-age=5, private="set-cookie, x", public , no-cache')
    assert parsed == {
        "max-age": b"60",
        "private": b"set-cookie, x",
        "public": None,
        "no-cache": None,
    }
    assert directives(b"") == {}
    assert directives(b",,garbage;;, max-age=3") == {"max-age": b"3"}  # junk skipped


@pytest.mark.parametrize(
    ("method", "status", "request_fields", "response_fields", "expected"),
    [
        ("GET", 200, (), ("Cache-Control: max-age=60",), True),
        ("POST", 200, (), ("Cache-Control: max-age=60",), False),
        ("HEAD", 200, (), ("Cache-Control: max-age=60",), False),
        ("GET", 206, (), ("Cache-Control: max-age=60",), False),
        ("GET", 304, (), ("Cache-Control: max-age=60",), False),
        ("GET", 200, (), ("Cache-Control: no-store, max-age=60",), False),
        ("GET", 200, ("Cache-Control: no-store",), ("Cache-Control: max-age=60",), False),
        ("GET", 200, (), ("Cache-Control: private, max-age=60",), False),
        ("GET", 200, (), ("Cache-Control: max-age=60", "Set-Cookie: s=1"), False),
        ("GET", 200, (), ("Cache-Control: max-age=60", "Vary: *"), False),
        ("GET", 200, ("Authorization: x",), ("Cache-Control: max-age=60",), False),
        ("GET", 200, ("Authorization: x",), ("Cache-Control: public, max-age=60",), True),
        ("GET", 200, ("Authorization: x",), ("Cache-Control: s-maxage=60",), True),
        ("GET", 200, ("Authorization: x",), ("Cache-Control: must-revalidate",), True),
        ("GET", 200, (), (), True),  # heuristically cacheable status
        ("GET", 201, (), (), False),  # neither heuristic nor explicit
        ("GET", 201, (), ("Cache-Control: max-age=5",), True),
        ("GET", 201, (), ("Expires: Thu, 01 Jan 2099 00:00:00 GMT",), True),
        ("GET", 500, (), ("Cache-Control: public",), True),
        # CDN-Cache-Control first: its no-store wins over Cache-Control
        ("GET", 200, (), ("CDN-Cache-Control: no-store", "Cache-Control: max-age=60"), False),
    ],
)
def test_storable(
    method: str,
    status: int,
    request_fields: tuple[str, ...],
    response_fields: tuple[str, ...],
    expected: bool,
) -> None:
    assert (
        storable(method, status, fields(*request_fields), fields(*response_fields), {}) is expected
    )


def test_storable_with_the_zones_valid_table() -> None:
    assert storable("GET", 302, [], [], {302: 60.0})
    assert not storable("GET", 302, [], [], {200: 60.0})


def test_lifetime_order_s_maxage_max_age_expires() -> None:
    base = f"Date: {date(NOW).decode()}"
    assert freshness(200, fields(base, "Cache-Control: max-age=10, s-maxage=20"), {}).lifetime == 20
    assert freshness(200, fields(base, "Cache-Control: max-age=10"), {}).lifetime == 10
    expires = f"Expires: {date(NOW + 30).decode()}"
    assert freshness(200, fields(base, expires), {}).lifetime == 30
    assert freshness(200, fields(base, expires, "Cache-Control: max-age=3"), {}).lifetime == 3
    assert freshness(200, fields(base, "Expires: 0"), {}).lifetime == 0  # invalid: expired
    assert freshness(200, fields(base, "Cache-Control: max-age=abc"), {}).lifetime == 0


def test_cdn_cache_control_takes_precedence() -> None:
    response = fields(
        f"Date: {date(NOW).decode()}",
        "CDN-Cache-Control: max-age=100",
        "Cache-Control: max-age=1",
        f"Expires: {date(NOW + 5).decode()}",
    )
    assert freshness(200, response, {}).lifetime == 100


def test_valid_table_then_heuristic_only_where_allowed() -> None:
    modified = f"Last-Modified: {date(NOW - 1000).decode()}"
    base = f"Date: {date(NOW).decode()}"
    assert freshness(200, fields(base), {200: 600.0}).lifetime == 600
    assert freshness(404, fields(base), {0: 60.0}).lifetime == 60
    assert freshness(200, fields(base, modified), {}).lifetime == pytest.approx(100)
    assert freshness(201, fields(base, modified), {}).lifetime == 0  # not heuristic
    assert freshness(201, fields(base, modified, "Cache-Control: public"), {}).lifetime == 100
    # explicit freshness beats the valid table
    assert freshness(200, fields(base, "Cache-Control: max-age=5"), {200: 600.0}).lifetime == 5


def test_revalidation_directives() -> None:
    assert freshness(200, fields("Cache-Control: must-revalidate"), {}).must_revalidate
    assert freshness(200, fields("Cache-Control: proxy-revalidate"), {}).must_revalidate
    assert freshness(200, fields("Cache-Control: s-maxage=5"), {}).must_revalidate
    assert freshness(200, fields("Cache-Control: no-cache"), {}).no_cache
    rfc5861 = freshness(
        200, fields("Cache-Control: stale-while-revalidate=7, stale-if-error=9"), {}
    )
    assert (rfc5861.stale_while_revalidate, rfc5861.stale_if_error) == (7, 9)


def test_age_as_in_4_2_3() -> None:
    # Date 10 s before it came back, Age 3, the request took 2 s: the larger wins
    response = fields(f"Date: {date(NOW - 10).decode()}", "Age: 3")
    assert initial_age(response, NOW - 2, NOW) == 10
    response = fields(f"Date: {date(NOW).decode()}", "Age: 30")
    assert initial_age(response, NOW - 2, NOW) == 32  # Age plus the response delay
    assert initial_age(fields("Age: junk"), NOW, NOW) == 0
    assert current_age(32.0, NOW, NOW + 8) == 40


def test_usable_fresh_stale_and_client_limits() -> None:
    entry = Freshness(lifetime=60)
    assert usable(entry, 10, []) is Usable.FRESH
    assert usable(entry, 61, []) is Usable.REVALIDATE
    assert usable(entry, 10, fields("Cache-Control: no-cache")) is Usable.REVALIDATE
    assert usable(entry, 10, fields("Pragma: no-cache")) is Usable.REVALIDATE
    assert usable(entry, 10, fields("Cache-Control: max-age=5")) is Usable.REVALIDATE
    assert usable(entry, 10, fields("Cache-Control: min-fresh=55")) is Usable.REVALIDATE
    assert usable(entry, 70, fields("Cache-Control: max-stale=20")) is Usable.STALE
    assert usable(entry, 70, fields("Cache-Control: max-stale")) is Usable.STALE
    assert usable(entry, 90, fields("Cache-Control: max-stale=20")) is Usable.REVALIDATE
    assert usable(Freshness(60, must_revalidate=True), 70, fields("Cache-Control: max-stale")) is (
        Usable.REVALIDATE
    )
    assert usable(Freshness(60, no_cache=True), 1, []) is Usable.REVALIDATE
    swr = Freshness(60, stale_while_revalidate=30)
    assert usable(swr, 80, []) is Usable.STALE_WHILE_REVALIDATE
    assert usable(swr, 95, []) is Usable.REVALIDATE


def test_stale_on_error() -> None:
    assert stale_on_error(Freshness(60, stale_if_error=30), 80, "error", ())
    assert not stale_on_error(Freshness(60, stale_if_error=30), 100, "error", ())
    assert stale_on_error(Freshness(60), 1000, "http_502", ("http_502",))
    assert not stale_on_error(Freshness(60), 1000, "timeout", ("http_502",))
    assert not stale_on_error(Freshness(60, must_revalidate=True), 61, "error", ("error",))
    assert not stale_on_error(Freshness(60, no_cache=True), 61, "error", ("error",))


def test_vary_secondary_keys() -> None:
    assert vary_names(fields("Vary: Accept-Encoding, accept-language", "Vary: Accept")) == (
        b"accept",
        b"accept-encoding",
        b"accept-language",
    )
    assert vary_names([]) == ()
    assert vary_names(fields("Vary: Accept, *")) is None
    names = (b"accept-encoding", b"x-missing")
    assert vary_values(names, fields("Accept-Encoding: gzip,  br")) == (b"gzip,br", None)
    assert vary_values(names, fields("Accept-Encoding: gzip, br")) == vary_values(
        names, fields("Accept-Encoding: gzip,br")
    )


def test_key_and_bypass_from_nginx_variables() -> None:
    request = head("/p?q=1", "Host: Example.test:8080", "Cookie: a=1; sessionid=xyz")
    assert cache_key("$scheme$host$request_uri", request, "10.0.0.1") == "httpexample.test/p?q=1"
    assert bypassed(["$cookie_sessionid"], request, "10.0.0.1")
    assert not bypassed(["$cookie_other", "$http_authorization"], request, "10.0.0.1")
    assert not bypassed(["$cookie_a0"], head("/", "Cookie: a0=0"), "")  # "0" is off, as nginx


def test_invalidation_by_unsafe_methods() -> None:
    assert invalidates("POST", 200)
    assert invalidates("DELETE", 303)
    assert not invalidates("POST", 500)
    assert not invalidates("GET", 200)


def test_client_conditionals_answered_from_the_entry() -> None:
    stored = fields('ETag: "v1"', f"Last-Modified: {date(NOW - 100).decode()}")
    assert not_modified(fields('If-None-Match: "v0", W/"v1"'), stored)
    assert not_modified(fields("If-None-Match: *"), stored)
    assert not not_modified(fields('If-None-Match: "v2"'), stored)
    assert not_modified(fields(f"If-Modified-Since: {date(NOW).decode()}"), stored)
    assert not not_modified(fields(f"If-Modified-Since: {date(NOW - 200).decode()}"), stored)
    # If-Modified-Since is ignored when If-None-Match is there
    both = fields('If-None-Match: "v2"', f"If-Modified-Since: {date(NOW).decode()}")
    assert not not_modified(both, stored)
    assert not not_modified([], stored)


def test_revalidation_fields_and_304_update() -> None:
    stored = fields('ETag: "v1"', "Last-Modified: x", "Content-Length: 5", "X-A: old")
    assert validators(stored) == [(b"If-None-Match", b'"v1"'), (b"If-Modified-Since", b"x")]
    merged = merge_not_modified(stored, fields("X-A: new", "Content-Length: 0", "X-B: b"))
    assert (b"X-A", b"new") in merged and (b"X-A", b"old") not in merged
    assert (b"Content-Length", b"5") in merged and (b"X-B", b"b") in merged


def test_cache_status_values() -> None:
    assert cache_status(True, 42.7) == b"gantry; hit; ttl=42"
    assert cache_status(False) == b"gantry; fwd=uri-miss"
    assert cache_status(False, detail="bypass") == b"gantry; fwd=bypass"


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (b"Sun, 06 Nov 1994 08:49:37 GMT", True),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", True),
        (b"Sun Nov  6 08:49:37 1994", True),
        (b"Sun, 06 Nov 1994 08:49:37 UTC", False),
        (b"Sun, 06 Nov 94 08:49:37 GMT", False),
        (b"Sun 06 Nov 1994 08:49:37 GMT", False),
        (b"Sun, 06  Nov 1994 08:49:37 GMT", False),
        (b"Sun, 06-Nov-1994 08:49:37 GMT", False),
        (b"Sun, 06 Nov 1994 08.49.37 GMT", False),
        (b"Sun, 06 Nov 1994 8:49:37 GMT", False),
        (b"0", False),
    ],
)
def test_http_dates_are_parsed_strictly(text: bytes, valid: bool) -> None:
    from gantry.front.cache.policy import parse_http_date

    parsed = parse_http_date(text)
    assert (parsed is not None) is valid
    if valid:
        assert parsed == 784111777.0


def test_an_invalid_expires_means_stale() -> None:
    response = fields(f"Date: {date(NOW).decode()}", "Expires: Sun, 06 Nov 2094 08:49:37 UTC")
    assert freshness(200, response, {}).lifetime == 0


@pytest.mark.parametrize(
    ("value", "lifetime"),
    [
        ("max-age=100", 100),
        ("max-age=100, must-revalidate", 100),
        ("max-age=100, &&&&&", 5),  # not a structured field: ignored
        ('max-age="100"', 5),  # a string, not an integer: ignored
        ("Max-Age=100", 5),  # keys are lower case
    ],
)
def test_cdn_cache_control_must_be_a_valid_structured_field(value: str, lifetime: int) -> None:
    response = fields(f"CDN-Cache-Control: {value}", "Cache-Control: max-age=5")
    assert freshness(200, response, {}).lifetime == lifetime
