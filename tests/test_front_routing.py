"""Routing as nginx documents it: server_name choice, location precedence, access rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.config.front_model import AccessRule, Location, VirtualServer
from gantry.front.routing import Router, client_allowed, normalize_path

# The example of nginx's `location` documentation, configurations A to E.
A = Location("/", "=")
B = Location("/")
C = Location("/documents/")
D = Location("/images/", "^~")
E = Location(r"\.(gif|jpg|jpeg)$", "~*")
DOCS = VirtualServer(locations=(A, B, C, D, E))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", A),
        ("/index.html", B),
        ("/documents/document.html", C),
        ("/images/1.gif", D),
        ("/documents/1.jpg", E),
    ],
)
def test_nginx_documentation_example(path: str, expected: Location) -> None:
    assert Router([DOCS]).location_for(DOCS, path) is expected


def test_regexes_in_file_order_and_case() -> None:
    first = Location(r"^/a", "~")
    second = Location(r"^/a/b", "~")
    icase = Location(r"\.PNG$", "~*")
    exact_case = Location(r"\.GIF$", "~")
    prefix = Location("/a/")
    server = VirtualServer(locations=(prefix, first, second, icase, exact_case))
    router = Router([server])
    assert router.location_for(server, "/a/b/c") is first
    assert router.location_for(server, "/x.png") is icase
    assert router.location_for(server, "/x.gif") is None
    assert router.location_for(server, "/x.GIF") is exact_case


def test_longest_prefix_and_no_match() -> None:
    short, long = Location("/static"), Location("/static/img/")
    server = VirtualServer(locations=(short, long))
    router = Router([server])
    assert router.location_for(server, "/static/img/a.png") is long
    assert router.location_for(server, "/staticfile") is short
    assert router.location_for(server, "/other") is None


def test_bad_regex_fails_at_start() -> None:
    with pytest.raises(ValueError, match="bad regex"):
        Router([VirtualServer(locations=(Location("(", "~"),))])


EXACT = VirtualServer(server_names=("example.test",))
WILD = VirtualServer(server_names=("*.example.test",))
DEEP = VirtualServer(server_names=("*.api.example.test",))
TRAIL = VirtualServer(server_names=("www.other.*",))
DEFAULT = VirtualServer(server_names=("fallback.test",), default=True)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.test", EXACT),
        ("EXAMPLE.test:8080", EXACT),
        ("example.test.", EXACT),
        ("a.example.test", WILD),
        ("b.a.example.test", WILD),
        ("v1.api.example.test", DEEP),
        ("www.other.org", TRAIL),
        ("unknown.test", DEFAULT),
        (None, DEFAULT),
        ("[::1]:80", DEFAULT),
    ],
)
def test_server_name_choice(host: str | None, expected: VirtualServer) -> None:
    assert Router([EXACT, WILD, DEEP, TRAIL, DEFAULT]).server_for(host) is expected


def test_first_server_is_the_default_without_one_marked() -> None:
    assert Router([EXACT, WILD]).server_for("nothing.test") is EXACT


def _rule(allow: bool, network: str | None) -> AccessRule:
    return AccessRule(allow, ipaddress.ip_network(network) if network else None)


def test_access_rules_first_match_wins() -> None:
    rules = [_rule(True, "10.0.0.0/8"), _rule(True, "::1/128"), _rule(False, None)]
    assert client_allowed(rules, "10.1.2.3")
    assert client_allowed(rules, "::1")
    assert not client_allowed(rules, "192.0.2.1")
    assert client_allowed([], "192.0.2.1")
    assert not client_allowed([_rule(False, "192.0.2.0/24"), _rule(True, None)], "192.0.2.9")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/a/b", "/a/b"),
        (b"/a//b/./c", "/a/b/c"),
        (b"/a/b/../c", "/a/c"),
        (b"/a/%2e%2e/b", "/b"),
        (b"/%252e%252e/x", "/%2e%2e/x"),
        (b"/dir/", "/dir/"),
        (b"/caf%C3%A9", "/café"),
        (b"/..", None),
        (b"/a/../../etc/passwd", None),
        (b"/a%00b", None),
        (b"/%ff", None),
        (b"relative", None),
    ],
)
def test_normalize_path(raw: bytes, expected: str | None) -> None:
    assert normalize_path(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_normalize_path_never_escapes(raw: bytes) -> None:
    result = normalize_path(b"/" + raw)
    if result is not None:
        assert result.startswith("/") and "/../" not in result + "/" and "\0" not in result
