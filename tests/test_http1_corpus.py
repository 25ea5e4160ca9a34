"""Gantry's HTTP/1.1 request parser against gunicorn's request corpus.

Every case is fed whole, line by line and byte by byte. A valid case must give
the same requests gunicorn saw (method, path, query, version, fields, body,
trailers); an invalid one must be refused with a 4xx/501/505 before anything
after the broken part reaches the sink. Where Gantry disagrees on purpose the
case is listed in ``KNOWN_DIFFERENCES`` with the RFC section behind the
choice; where it disagrees by mistake it is in ``KNOWN_BUGS`` (strict xfail,
so a fix shows up). docs/conformance.md carries the same list and the counts.

Many corpus requests are HTTP/1.1 without Host, which RFC 9112 3.2 tells a
server to refuse. So each case is also run as its *subject*: the same bytes
with ``Host: corpus.test`` added to every HTTP/1.1 head that lacks one, which
is what tests the thing the case is about.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import pytest

from gantry.protocol.http1 import HTTPLimits
from tests.corpus import (
    CORPUS_DIR,
    HOST,
    MODES,
    CorpusCase,
    ExpectedRequest,
    Outcome,
    ParsedRequest,
    load_corpus,
    require_corpus,
    run,
    with_host,
)

# --- what Gantry does differently, and why -----------------------------------


@dataclass(frozen=True)
class Difference:
    """A documented, RFC-based disagreement with gunicorn on one case (its subject bytes)."""

    gantry: str  # "refuses", "accepts" or "parses" (accepts, with the listed deviations)
    reason: str
    statuses: tuple[int, ...] = ()  # for "refuses": the status(es) Gantry answers with
    extra_fields: tuple[bytes, ...] = ()  # for "parses": fields Gantry keeps, gunicorn drops
    path: bytes | None = None  # for "parses": the path Gantry reports instead


_UNKNOWN_CODING = Difference(
    "refuses",
    "RFC 9112 6.1: a server that receives a transfer coding it does not understand "
    "SHOULD answer 501 (gunicorn passes the coded body through undecoded; 'identity' "
    "is not a transfer coding since RFC 7230)",
    statuses=(501,),
)
_OBS_FOLD = Difference(
    "refuses",
    "RFC 9112 5.2: a server MUST either reject obs-fold with 400 or replace it with SP; "
    "Gantry rejects (gunicorn's permit_obsolete_folding is the lenient option)",
    statuses=(400,),
)
_PROXY_PROTOCOL = Difference(
    "refuses",
    "PROXY protocol is not HTTP: the first line is not a request-line (RFC 9112 3); "
    "Gantry has no proxy_protocol option (gunicorn's proxy_protocol=auto). v1's "
    "'PROXY' may be taken for an unknown method (501, RFC 9110 9.1)",
    statuses=(400, 501),
)
_UNKNOWN_METHOD = Difference(
    "refuses",
    "RFC 9110 9.1: a server that does not recognise a method SHOULD answer 501; "
    "llhttp knows a fixed set of methods (gunicorn accepts any token)",
    statuses=(501,),
)
_CONNECT = Difference(
    "refuses",
    "RFC 9110 9.3.6: CONNECT asks for a tunnel, which a WSGI server cannot provide; "
    "Gantry answers 405",
    statuses=(405,),
)
_UNDERSCORE_FIELDS = (b"Transfer_Encoding", b"Content_Length")
_UNDERSCORE_REASON = (
    "RFC 9110 5.1: field-name is a token and '_' is a tchar, so Transfer_Encoding and "
    "Content_Length are ordinary fields with no framing meaning; gunicorn drops "
    "(header_map=drop) or refuses (header_map=refuse) them. The WSGI layer must keep "
    "them from shadowing CONTENT_LENGTH in the environ"
)

KNOWN_DIFFERENCES: dict[str, Difference] = {
    "valid/005": Difference(
        "refuses",
        "RFC 9112 3.2.1: origin-form is absolute-path [ '?' query ]; a fragment is not "
        "part of a request-target",
        statuses=(400,),
    ),
    "valid/009": Difference(
        "refuses",
        "RFC 9112 6.1: a server MAY reject a request with both Transfer-Encoding and "
        "Content-Length (and 'identity' is no transfer coding; the target has a fragment)",
        statuses=(400,),
    ),
    "valid/012": Difference(
        "refuses",
        "RFC 9110 6.5.1: content-format fields (Content-Type) cannot be processed as "
        "trailers; Gantry refuses such a trailer section rather than guess",
        statuses=(400,),
    ),
    "valid/025": _UNKNOWN_CODING,
    "valid/025_line": _UNKNOWN_CODING,
    "valid/029": _UNKNOWN_CODING,
    "valid/030": _UNKNOWN_CODING,
    "valid/rfc9112_smuggle_gzip_chunked_01": _UNKNOWN_CODING,
    "valid/rfc9112_smuggle_te_identity_chunked_01": _UNKNOWN_CODING,
    "valid/027": Difference(
        "refuses",
        "RFC 9112 3.2 / RFC 3986 2: a request-target is ASCII; raw octets above 0x7F "
        "must be percent-encoded",
        statuses=(400,),
    ),
    "valid/028": Difference(
        "refuses",
        "RFC 9112 5.1: a server MUST reject whitespace between field name and colon "
        "with 400 (gunicorn's strip_header_spaces is the lenient option)",
        statuses=(400,),
    ),
    "valid/031": _UNKNOWN_METHOD,
    "valid/031compat": _UNKNOWN_METHOD,
    "valid/031compat2": _UNKNOWN_METHOD,
    "valid/040": Difference("parses", _UNDERSCORE_REASON, extra_fields=_UNDERSCORE_FIELDS),
    "valid/100": Difference(
        "parses",
        "RFC 9112 3.2.1 / RFC 3986 3.3: '///keeping_slashes' is an absolute-path with "
        "empty segments and is kept as sent; gunicorn's urlsplit reads '//' as an "
        "empty authority",
        path=b"///keeping_slashes",
    ),
    "valid/compat_obs_fold": _OBS_FOLD,
    "valid/compat_obs_fold_huge": _OBS_FOLD,
    "valid/pp_01": _PROXY_PROTOCOL,
    "valid/pp_02": _PROXY_PROTOCOL,
    "valid/pp_04": _PROXY_PROTOCOL,
    "valid/pp_05": _PROXY_PROTOCOL,
    "valid/rfc9112_target_authority_connect_01": _CONNECT,
    "valid/rfc9112_target_authority_ipv6_01": _CONNECT,
    "invalid/019": Difference(
        "accepts",
        "X-Forwarded-Proto vs X-Forwarded-Ssl is gunicorn's proxy-trust check "
        "(forwarded_allow_ips), not HTTP/1.1 syntax: both are ordinary fields (RFC 9110 5)",
    ),
    "invalid/040": Difference("accepts", _UNDERSCORE_REASON),
    "invalid/chunked_07": Difference("accepts", _UNDERSCORE_REASON),
}

#: valid cases with an HTTP/1.1 request that has no Host field: Gantry refuses the
#: corpus bytes (RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status
#: code to any HTTP/1.1 request message that lacks a Host header field"), so they are
#: judged on their subject (Host added).
MISSING_HOST: tuple[str, ...] = (
    "valid/004",
    "valid/005",
    "valid/006",
    "valid/007",
    "valid/009",
    "valid/010",
    "valid/011",
    "valid/012",
    "valid/013",
    "valid/014",
    "valid/018",
    "valid/021",
    "valid/022",
    "valid/023",
    "valid/025",
    "valid/025_line",
    "valid/028",
    "valid/029",
    "valid/030",
    "valid/031",
    "valid/031compat",
    "valid/031compat2",
    "valid/100",
    "valid/compat_obs_fold_huge",
    "valid/pp_02",
)
MISSING_HOST_REASON = "RFC 9112 3.2: an HTTP/1.1 request without Host MUST get 400"

#: streams that end before the message does: nothing may complete, nothing is refused
#: yet (the server answers 408 on its header timeout or closes at EOF).
INCOMPLETE: dict[str, str] = {
    "valid/099": "Content-Length is 17914 but the file holds 8599 body bytes",
    "invalid/001": "the head never ends ('baz' and no CRLF)",
    "invalid/rfc9112_chunked_missing_final_crlf_01": "the last-chunk has no final CRLF",
}


@dataclass(frozen=True)
class Bug:
    """A disagreement that is a Gantry bug (reported to the lead), in some feeding modes."""

    reason: str
    modes: tuple[str, ...] = ("whole", "lines", "bytes")


#: disagreements that are Gantry bugs. The test asserts the corpus (or, with a
#: Difference, the RFC) outcome, so it fails (strict xfail) until fixed.
KNOWN_BUGS: dict[str, Bug] = {}

#: gunicorn settings the corpus uses that have no Gantry equivalent, and what then holds
UNMAPPED_SETTINGS: dict[str, str] = {
    "permit_obsolete_folding": "obs-fold is always refused (RFC 9112 5.2)",
    "strip_header_spaces": "space before ':' is always refused (RFC 9112 5.1)",
    "casefold_http_method": "methods are case-sensitive tokens (RFC 9110 9.1)",
    "permit_unconventional_http_method": "only methods llhttp knows are accepted",
    "header_map": "fields with '_' are passed on like any token (RFC 9110 5.1)",
    "proxy_protocol": "no PROXY protocol: such streams are refused",
    "forwarded_allow_ips": "proxy headers are application data, not parsed",
}

# gunicorn's defaults (gunicorn/config.py) for the limits that have an equivalent
_GUNICORN_LIMITS = {
    "limit_request_line": 4094,
    "limit_request_fields": 100,
    "limit_request_field_size": 8190,
}
# gunicorn counts a field as the whole line: name ": " value CRLF; Gantry counts
# name plus value. The four octets are the difference in measure, not in limit.
_FIELD_LINE_OVERHEAD = len(b": \r\n")

# gunicorn error classes raised for a defect after the head (the head may be delivered)
_BODY_ERRORS = frozenset({"InvalidChunkSize", "InvalidChunkExtension", "ChunkMissingTerminator"})


def gunicorn_limits(settings: dict[str, Any]) -> HTTPLimits:
    """HTTPLimits equivalent to gunicorn's effective limits for a case's settings."""
    effective = dict(_GUNICORN_LIMITS)
    for key in _GUNICORN_LIMITS:
        value = settings.get(key)
        if value is not None and value > 0:  # gunicorn: 0 means "the default"
            effective[key] = value
    return HTTPLimits(
        # gunicorn limits the whole request line; the target is always shorter
        max_request_line=effective["limit_request_line"],
        max_fields=effective["limit_request_fields"],
        max_field_size=effective["limit_request_field_size"] - _FIELD_LINE_OVERHEAD,
    )


def _latin1(text: str) -> bytes:
    # gunicorn reports wire octets decoded as latin-1
    return text.encode("latin-1")


def _fields(pairs: list[tuple[bytes, bytes]] | None) -> list[tuple[bytes, bytes]] | None:
    return None if pairs is None else [(name.lower(), value) for name, value in pairs]


def _expected_fields(pairs: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(_latin1(name).lower(), _latin1(value)) for name, value in pairs]


def assert_parsed_as(
    got: ParsedRequest,
    want: ExpectedRequest,
    host_added: bool,
    difference: Difference | None,
    complete: bool,
) -> None:
    """One parsed request equals gunicorn's parse, allowing the documented deviations."""
    head = got.head
    assert head.method == want.method
    expected_path = _latin1(want.path)
    if difference is not None and difference.path is not None:
        expected_path = difference.path
    assert head.path == expected_path
    assert head.query == _latin1(want.query)
    assert head.version == f"{want.version[0]}.{want.version[1]}"
    fields = _fields(head.headers)
    assert fields is not None
    if difference is not None and difference.extra_fields:
        extra = {name.lower() for name in difference.extra_fields}
        assert extra <= {name for name, _ in fields}, "the documented extra fields are gone"
        fields = [(name, value) for name, value in fields if name not in extra]
    expected_fields = _expected_fields(want.headers)
    if host_added and want.version == (1, 1) and b"host" not in dict(expected_fields):
        expected_fields.insert(0, (b"host", HOST))
    assert fields == expected_fields
    assert bytes(got.body) == want.body
    assert got.ended is complete
    if complete:
        expected_trailers = None if want.trailers is None else _expected_fields(want.trailers)
        assert _fields(got.trailers) == expected_trailers


def check_valid(case: CorpusCase, data: bytes, mode: str) -> Outcome:
    """Assert a valid case's subject parses as gunicorn parsed it (or as documented)."""
    outcome = run(data, gunicorn_limits(case.gunicorn_settings), mode)
    difference = KNOWN_DIFFERENCES.get(case.name)
    if difference is not None and difference.gantry == "refuses":
        assert outcome.error is not None, f"{case.name} should be refused: {difference.reason}"
        assert outcome.error.status in difference.statuses, outcome.error
        return outcome
    complete = case.name not in INCOMPLETE
    got = outcome.requests
    if outcome.error is not None:
        # The only refusal allowed in a valid stream: bytes after a request that closes
        # the connection (RFC 9112 9.6: no further request is processed), once that
        # request has gone through whole.
        assert len(got) == len(case.requests), f"refused early: {outcome.error}"
        assert got and got[-1].ended and not got[-1].head.keep_alive, outcome.error
        assert 400 <= outcome.error.status < 500, outcome.error
    assert len(got) == len(case.requests), [r.head for r in got]
    for index, (parsed, expected) in enumerate(zip(got, case.requests, strict=True)):
        last = index == len(got) - 1
        assert_parsed_as(parsed, expected, data != case.data, difference, complete or not last)
    return outcome


def check_invalid(case: CorpusCase, data: bytes, mode: str) -> Outcome:
    """Assert an invalid case is refused, with nothing past the broken part delivered."""
    outcome = run(data, gunicorn_limits(case.gunicorn_settings), mode)
    difference = KNOWN_DIFFERENCES.get(case.name)
    if difference is not None and difference.gantry == "accepts":
        assert outcome.error is None, f"{case.name} should pass: {difference.reason}"
        assert outcome.requests and all(r.ended for r in outcome.requests)
        return outcome
    got = outcome.requests
    if case.name in INCOMPLETE:
        assert outcome.error is None, outcome.error
        assert not any(r.ended for r in got), "a truncated message completed"
        return outcome
    assert outcome.error is not None, f"accepted: {[r.head for r in got]}"
    status = outcome.error.status
    assert 400 <= status < 500 or status in (501, 505), outcome.error
    assert status != 500
    broken_in_body = case.error in _BODY_ERRORS or "trailer" in case.name
    if broken_in_body:
        # the head came before the defect; the message must not complete, nor any after it
        assert len(got) <= 1 and not any(r.ended for r in got), [r.head for r in got]
    else:
        assert got == [], f"a head reached the sink: {[r.head for r in got]}"
    return outcome


# --- the tests -------------------------------------------------------------------


def _cases() -> dict[str, CorpusCase]:
    if not (CORPUS_DIR / "expected.json").is_file():
        return {}
    return {case.name: case for case in load_corpus()}


_CASES = _cases()
_MISSING = ["<corpus missing>"]


def _names(valid: bool) -> list[str]:
    return [name for name, case in _CASES.items() if case.valid is valid] or _MISSING


@pytest.fixture(scope="module")
def corpus() -> dict[str, CorpusCase]:
    """The corpus by name; fails in CI and skips loudly elsewhere when it is missing."""
    return {case.name: case for case in require_corpus()}


def _mark_bug(request: pytest.FixtureRequest, name: str, mode: str) -> None:
    bug = KNOWN_BUGS.get(name)
    if bug is not None and mode in bug.modes:
        request.applymarker(pytest.mark.xfail(reason=f"parser bug: {bug.reason}", strict=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", _names(valid=True))
def test_valid_case(
    corpus: dict[str, CorpusCase], name: str, mode: str, request: pytest.FixtureRequest
) -> None:
    """A valid case (Host added where HTTP/1.1 needs it) parses as gunicorn parsed it."""
    _mark_bug(request, name, mode)
    case = corpus[name]
    check_valid(case, with_host(case), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MISSING_HOST)
def test_valid_case_without_host_is_refused(
    corpus: dict[str, CorpusCase], name: str, mode: str
) -> None:
    """The corpus bytes as they are: the Host-less HTTP/1.1 request gets 400, earlier ones pass."""
    case = corpus[name]
    outcome = run(case.data, gunicorn_limits(case.gunicorn_settings), mode)
    assert outcome.error is not None, MISSING_HOST_REASON
    hostless = next(
        index
        for index, want in enumerate(case.requests)
        if want.version == (1, 1) and all(n.lower() != "host" for n, _ in want.headers)
    )
    difference = KNOWN_DIFFERENCES.get(name)
    if difference is not None and difference.gantry == "refuses":
        # refused for its own defect or for Host, whichever the parser meets first
        assert outcome.error.status in (400, *difference.statuses), outcome.error
    else:
        assert outcome.error.status == 400, outcome.error
        assert "Host" in outcome.error.reason
    assert len(outcome.requests) == hostless, [r.head for r in outcome.requests]
    assert all(r.ended for r in outcome.requests)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", _names(valid=False))
def test_invalid_case(
    corpus: dict[str, CorpusCase], name: str, mode: str, request: pytest.FixtureRequest
) -> None:
    """An invalid case is refused with Host added, so the refusal is about its own defect."""
    _mark_bug(request, name, mode)
    case = corpus[name]
    check_invalid(case, with_host(case), mode)


@pytest.mark.parametrize("name", _names(valid=False))
def test_invalid_case_as_is(corpus: dict[str, CorpusCase], name: str) -> None:
    """The corpus bytes as they are: refused (or left incomplete), never passed on whole."""
    case = corpus[name]
    outcome = run(case.data, gunicorn_limits(case.gunicorn_settings), "whole")
    difference = KNOWN_DIFFERENCES.get(name)
    if outcome.error is None and name not in INCOMPLETE:
        assert difference is not None and difference.gantry == "accepts", "accepted"


def test_missing_host_list_is_exact(corpus: dict[str, CorpusCase]) -> None:
    """MISSING_HOST names exactly the valid cases whose bytes lack a needed Host."""
    lacking = sorted(n for n, c in corpus.items() if c.valid and with_host(c) != c.data)
    assert lacking == sorted(MISSING_HOST)


def test_every_listed_case_exists(corpus: dict[str, CorpusCase]) -> None:
    """The exception lists name real cases, so a renamed case cannot hide a failure."""
    for name in (*KNOWN_DIFFERENCES, *MISSING_HOST, *INCOMPLETE, *KNOWN_BUGS):
        assert name in corpus, name
    for name, difference in KNOWN_DIFFERENCES.items():
        wanted = "accepts" if name.startswith("invalid/") else ("refuses", "parses")
        assert difference.gantry in wanted, name
        assert "RFC" in difference.reason, name


def test_every_gunicorn_setting_is_mapped_or_explained(corpus: dict[str, CorpusCase]) -> None:
    """A corpus setting is either turned into HTTPLimits or explained in UNMAPPED_SETTINGS."""
    for case in corpus.values():
        for key in case.gunicorn_settings:
            assert key in _GUNICORN_LIMITS or key in UNMAPPED_SETTINGS, (case.name, key)


def test_limit_cases_follow_the_mapped_limits(corpus: dict[str, CorpusCase]) -> None:
    """The limit cases flip exactly at the mapped limits, so the mapping is what decides."""
    # Gantry's own defaults are looser than gunicorn's (8190-octet target, as RFC 9112 3
    # recommends at least 8000): these cases pass with HTTPLimits().
    for name in ("invalid/006", "invalid/008", "invalid/017", "invalid/limit_header_default_01"):
        case = corpus[name]
        outcome = run(with_host(case), HTTPLimits(), "whole")
        assert outcome.error is None, (name, outcome.error)
    for name, status in (("invalid/006", 414), ("invalid/010", 431), ("invalid/011", 431)):
        case = corpus[name]
        outcome = run(with_host(case), gunicorn_limits(case.gunicorn_settings), "whole")
        assert outcome.error is not None and outcome.error.status == status, name


def verdict(case: CorpusCase) -> str:
    """How Gantry fares on one case's subject, in the words docs/conformance.md uses."""
    try:
        if case.valid:
            check_valid(case, with_host(case), "whole")
        else:
            check_invalid(case, with_host(case), "whole")
    except AssertionError:
        return "bug"
    difference = KNOWN_DIFFERENCES.get(case.name)
    if difference is not None:
        return {"refuses": "refused", "accepts": "accepted", "parses": "accepted"}[
            difference.gantry
        ] + " (documented difference)"
    if case.name in INCOMPLETE:
        return "incomplete (waits for more)"
    return "accepted" if case.valid else "refused"


def agreement_counts(corpus: dict[str, CorpusCase]) -> dict[str, collections.Counter[str]]:
    """Verdicts per kind of case, as reported in docs/conformance.md."""
    counts: dict[str, collections.Counter[str]] = {
        "valid": collections.Counter(),
        "invalid": collections.Counter(),
    }
    for case in corpus.values():
        result = verdict(case)
        counts["valid" if case.valid else "invalid"][result] += 1
        if case.name in MISSING_HOST and result == "accepted":
            counts["valid"]["  of which only with Host added"] += 1
    return counts


def test_agreement_counts(
    corpus: dict[str, CorpusCase], capsys: pytest.CaptureFixture[str]
) -> None:
    """Print the agreement counts and hold them to what docs/conformance.md states."""
    counts = agreement_counts(corpus)
    with capsys.disabled():
        for kind, counter in counts.items():
            total = sum(n for label, n in counter.items() if not label.startswith(" "))
            print(f"\n{kind} cases ({total}):")
            for label in sorted(counter, key=lambda label: (label.strip(), label)):
                print(f"  {counter[label]:3d}  {label}")
    # every disagreement is either documented or a known bug, nothing in between
    whole_mode_bugs = [name for name, bug in KNOWN_BUGS.items() if "whole" in bug.modes]
    assert counts["valid"]["bug"] + counts["invalid"]["bug"] == len(whole_mode_bugs)
    valid_bugs = len([n for n in whole_mode_bugs if n.startswith("valid/")])
    assert dict(counts["valid"]) == {
        "accepted": 38,
        "accepted (documented difference)": 2,
        "  of which only with Host added": 11,
        "incomplete (waits for more)": 1,
        "refused (documented difference)": 22,
        **({"bug": valid_bugs} if valid_bugs else {}),
    }
    assert dict(counts["invalid"]) == {
        "refused": 69,
        "incomplete (waits for more)": 2,
        "accepted (documented difference)": 3,
    }
