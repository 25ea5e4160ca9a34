"""Host, absolute-form targets and duplicate Content-Type (issue 19 #14, #19, #20).

RFC 9112 3.2.2: an absolute-form target's authority replaces the Host field;
RFC 9112 3.2: an invalid Host value (or more than one Host) gets 400; a repeated
Content-Type is refused with 400 (gantry serve read the last, the front the
first). The checks live in the parser, so both roles get them: unit tests on the
parser in every feeding mode, then a real ``gantry serve`` over a socket.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.corpus import run
from tests.process import GantryServer, read_until_closed, responses

MODES = ("whole", "lines", "bytes")

INVALID_HOSTS = [b"a b", b"a/b", b"..", b"a..b", b"a\\b", b"a@b", b"[::1", b"a:b:c", b"a\x7f"]
VALID_HOSTS = [b"a", b"example.test:8080", b"[::1]:80", b"127.0.0.1", b"xn--bcher-kva.test", b""]


def _get(*fields: bytes, target: bytes = b"/p?q=1") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_parser_refuses_an_invalid_host(host: bytes, mode: str) -> None:
    """400 before the head reaches the sink, however the bytes are cut."""
    outcome = run(_get(b"Host: " + host), mode=mode)
    assert outcome.requests == []
    assert outcome.error is not None and outcome.error.status == 400, outcome.error


@pytest.mark.parametrize("host", VALID_HOSTS)
def test_parser_accepts_a_valid_host(host: bytes) -> None:
    """The baseline: names, ports, IP literals and an empty Host pass."""
    outcome = run(_get(b"Host: " + host))
    assert outcome.error is None and len(outcome.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_parser_refuses_a_duplicate_content_type(mode: str) -> None:
    """Two Content-Type fields: 400 (gunicorn's answer too)."""
    data = _get(b"Host: a", b"Content-Type: text/plain", b"Content-Type: text/html")
    outcome = run(data, mode=mode)
    assert outcome.error is not None and outcome.error.status == 400, outcome.error


@pytest.mark.parametrize(
    ("target", "authority", "path", "query"),
    [
        (b"http://example.test/a?b", b"example.test", b"/a", b"b"),
        (b"http://example.test:8080", b"example.test:8080", b"/", b""),
        (b"https://u:pw@example.test/p", b"example.test", b"/p", b""),
        (b"http://[::1]:81?x", b"[::1]:81", b"/", b"x"),
    ],
)
def test_parser_takes_the_authority_of_an_absolute_target(
    target: bytes, authority: bytes, path: bytes, query: bytes
) -> None:
    """The authority (without userinfo) is kept apart from the path and query."""
    (got,) = run(_get(b"Host: other", target=target)).requests
    assert (got.head.authority, got.head.path, got.head.query) == (authority, path, query)


@pytest.mark.parametrize("target", [b"http:///p", b"http://a b/", b"http://u@/p", b"http://../"])
def test_parser_refuses_an_invalid_authority(target: bytes) -> None:
    """An absolute target with no host or an invalid one: 400."""
    outcome = run(_get(b"Host: a", target=target))
    assert outcome.error is not None and outcome.error.status == 400, outcome.error


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GantryServer]:
    """One ``gantry serve --http`` for the module."""
    workdir = tmp_path_factory.mktemp("host")
    with GantryServer("tests.apps_hostile:app", log_path=workdir / "server.log") as process:
        yield process


def _exchange(server: GantryServer, payload: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    with server.connect() as sock:
        sock.sendall(payload)
        result = read_until_closed(sock, wait=3)
    return responses(result.data), result.closed


def test_serve_uses_the_absolute_target_authority_as_host(server: GantryServer) -> None:
    """HTTP_HOST is the target's authority, PATH_INFO the path only."""
    payload = _get(b"Host: wrong.test", b"Connection: close", target=b"http://right.test:81/p?q=1")
    got, _ = _exchange(server, payload)
    assert [status for status, _ in got] == [200]
    assert b"called /p\nhost=right.test:81\n" in got[0][1]
    assert b"query=q=1\n" in got[0][1]


@pytest.mark.parametrize(
    "fields",
    [
        (b"Host: a b",),
        (b"Host: a/b",),
        (b"Host: ..",),
        (b"Host: a", b"Host: b"),
        (b"Host: a", b"Content-Type: text/plain", b"Content-Type: text/html"),
    ],
    ids=["space", "slash", "dotdot", "two-hosts", "two-content-types"],
)
def test_serve_refuses_with_400_and_closes(server: GantryServer, fields: tuple[bytes, ...]) -> None:
    """Invalid Host, two Hosts, two Content-Types: 400 and the close."""
    got, closed = _exchange(server, _get(*fields))
    assert [status for status, _ in got] == [400] and closed
