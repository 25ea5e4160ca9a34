"""Unit tests for gantry.protocol.http1: each refusal the RFCs demand, with its status.

No server: bytes go into a RequestParser and the test looks at what reached the
sink and what was raised. Cases where Gantry is wrong today are strict xfails
(``BUG``) so that the fix shows up as an unexpected pass.
"""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.protocol.http1 import HTTPLimits, ProtocolError, RequestParser
from tests.corpus import Outcome, RecordingSink, run


def BUG(reason: str) -> pytest.MarkDecorator:  # noqa: N802 - reads as a label in param lists
    """Mark a case Gantry gets wrong today (reported to the lead)."""
    return pytest.mark.xfail(reason=f"parser bug: {reason}", strict=True)


def request(*fields: bytes, line: bytes = b"GET / HTTP/1.1", body: bytes = b"") -> bytes:
    """A request with Host and the given field lines."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in (b"Host: h", *fields)) + b"\r\n" + body


def post(*fields: bytes, body: bytes = b"") -> bytes:
    """A POST request with Host and the given field lines."""
    return request(*fields, line=b"POST /p HTTP/1.1", body=body)


def chunked(body: bytes) -> bytes:
    """A chunked POST whose body (chunks as written) follows the head."""
    return post(b"Transfer-Encoding: chunked", body=body)


def refused(data: bytes, limits: HTTPLimits | None = None, mode: str = "whole") -> Outcome:
    """Feed ``data`` and return the outcome, asserting the parser refused it."""
    outcome = run(data, limits, mode)
    assert outcome.error is not None, f"accepted: {[r.head for r in outcome.requests]}"
    return outcome


def accepted(data: bytes, limits: HTTPLimits | None = None, mode: str = "whole") -> Outcome:
    """Feed ``data`` and return the outcome, asserting every request went through whole."""
    outcome = run(data, limits, mode)
    assert outcome.error is None, outcome.error
    assert outcome.requests and all(r.ended for r in outcome.requests)
    return outcome


def assert_refused_in_head(data: bytes, status: int, limits: HTTPLimits | None = None) -> None:
    """Refused with ``status`` before any head reached the sink, however the bytes are cut."""
    for mode in ("whole", "lines", "bytes"):
        outcome = refused(data, limits, mode)
        assert outcome.requests == [], mode
        assert outcome.error is not None and outcome.error.status == status, (mode, outcome.error)


def assert_refused_in_body(data: bytes, status: int, limits: HTTPLimits | None = None) -> None:
    """Refused with ``status`` after the head but before the message completed."""
    for mode in ("whole", "lines", "bytes"):
        outcome = refused(data, limits, mode)
        assert len(outcome.requests) == 1 and not outcome.requests[0].ended, mode
        assert outcome.error is not None and outcome.error.status == status, (mode, outcome.error)


# --- message framing (RFC 9112 6) -------------------------------------------------


def test_conflicting_content_length_is_400() -> None:
    """RFC 9112 6.3 (5): differing Content-Length values are an unrecoverable error."""
    assert_refused_in_head(post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), 400)


def test_duplicate_equal_content_length_is_400() -> None:
    """RFC 9112 6.3 (5) allows rejecting equal duplicates too; Gantry does (no guessing)."""
    assert_refused_in_head(post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), 400)


def test_content_length_list_is_400() -> None:
    """'Content-Length: 3, 3' is the list form of a duplicate; refused the same way."""
    assert_refused_in_head(post(b"Content-Length: 3, 3", body=b"abc"), 400)


@pytest.mark.parametrize(
    "value", [b"-1", b"+3", b"0x3", b"3 4", b"", b"1e3", b"99999999999999999999"]
)
def test_malformed_content_length_is_400(value: bytes) -> None:
    """Content-Length is 1*DIGIT (RFC 9110 8.6), anything else is refused."""
    assert_refused_in_head(post(b"Content-Length: " + value, body=b"abc"), 400)


@pytest.mark.parametrize(
    "fields",
    [
        (b"Content-Length: 5", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked", b"Content-Length: 5"),
    ],
)
def test_content_length_with_transfer_encoding_is_400(fields: tuple[bytes, ...]) -> None:
    """RFC 9112 6.1: CL with TE is a smuggling signature; Gantry refuses rather than pick one."""
    assert_refused_in_head(post(*fields, body=b"0\r\n\r\n"), 400)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"deflate,chunked", b"identity"])
def test_unknown_transfer_coding_is_501(coding: bytes) -> None:
    """RFC 9112 6.1: a transfer coding the server does not understand gets 501."""
    assert_refused_in_head(post(b"Transfer-Encoding: " + coding, body=b"0\r\n\r\n"), 501)


@pytest.mark.parametrize(
    "fields",
    [
        (b"Transfer-Encoding: chunked, chunked",),
        (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding: chunked, gzip",),
        (b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"),
        (b"Transfer-Encoding:",),
        (b"Transfer-Encoding: chunked;q=1",),
    ],
)
def test_chunked_not_once_and_last_is_400(fields: tuple[bytes, ...]) -> None:
    """RFC 9112 6.3 (4): chunked not final (or twice, or empty TE) MUST get 400, not 501."""
    assert_refused_in_head(post(*fields, body=b"0\r\n\r\n"), 400)


def test_transfer_encoding_in_http10_is_400() -> None:
    """RFC 9112 6.1: a 1.0 message with Transfer-Encoding has faulty framing."""
    data = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert_refused_in_head(data, 400)


def test_transfer_encoding_is_case_insensitive() -> None:
    """Transfer codings are case-insensitive (RFC 9112 7): CHUNKED is chunked."""
    outcome = accepted(post(b"Transfer-Encoding: CHUNKED", body=b"3\r\nabc\r\n0\r\n\r\n"))
    assert bytes(outcome.requests[0].body) == b"abc"


# --- chunked coding (RFC 9112 7.1) -------------------------------------------------


@pytest.mark.parametrize(
    "size_line",
    [b"zz", b"", b" 5", b"5 ", b"5\t", b"6_0", b"0x5", b"1" * 20, b"+5", b"-5", b"5\n"],
    ids=["non-hex", "empty", "leading-sp", "trailing-sp", "trailing-tab", "underscore",
         "0x", "overflow", "plus", "minus", "bare-lf"],
)  # fmt: skip
def test_invalid_chunk_size_is_400(size_line: bytes) -> None:
    """chunk-size is 1*HEXDIG followed by an optional extension and CRLF, nothing else."""
    assert_refused_in_body(chunked(size_line + b"\r\nhello\r\n0\r\n\r\n"), 400)


@pytest.mark.parametrize(
    "ext",
    [b";\x01", b";a=b c", b';a="unterminated', b";a=\x7f", b";a\x00",
     b";=b"],
    ids=["ctl", "space-in-value", "open-quote", "del", "nul", "no-name"],
)  # fmt: skip
def test_chunk_extension_garbage_is_400(ext: bytes) -> None:
    """chunk-ext is ';' token ['=' token / quoted-string] (RFC 9112 7.1.1)."""
    assert_refused_in_body(chunked(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"), 400)


@pytest.mark.parametrize(
    "ext",
    [
        b";a",
        b";a=b",
        b';a="b c";d',
        b" ;a",
        b"; a",
    ],
)
def test_chunk_extensions_are_ignored(ext: bytes) -> None:
    """Valid chunk extensions are parsed and dropped; the data is unchanged."""
    outcome = accepted(chunked(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"))
    assert bytes(outcome.requests[0].body) == b"hello"


@pytest.mark.parametrize(
    "ext",
    [b"\t;\ta", b";a = b", b';a\t=\t"q\\"d"', b' ; a ; b=c ;d = ""', b';a="x;y=z"'],
    ids=["tabs", "bws-around-eq", "quoted-pair", "several", "quoted-separators"],
)
def test_chunk_extensions_with_bws_are_ignored(ext: bytes) -> None:
    """BWS is allowed around ';' and '=' (RFC 9112 7.1.1), however the bytes are cut."""
    data = chunked(b"5" + ext + b"\r\nhello\r\n6" + ext + b"\r\n world\r\n0" + ext + b"\r\n\r\n")
    for mode in ("whole", "lines", "bytes"):
        (got,) = accepted(data, mode=mode).requests
        assert bytes(got.body) == b"hello world"


@pytest.mark.parametrize(
    "ext",
    [b";a ", b";a b", b";a;", b";;a", b"; ", b";a= ", b";a=b ", b";a=\"b\" ", b";a=\"\\\x01\"",
     b";a=b=c", b";a==b", b" ", b";\ta\t", b";a\r"],
    ids=["trailing-bws", "two-names", "empty-last", "empty-first", "only-bws", "no-value",
         "bws-after-value", "bws-after-quoted", "ctl-quoted-pair", "two-eq", "eq-eq",
         "bws-without-ext", "trailing-tab", "bare-cr"],
)  # fmt: skip
def test_chunk_extension_bws_outside_the_abnf_is_400(ext: bytes) -> None:
    """BWS only before ';' and around '=': anything else in a chunk-size line is 400."""
    assert_refused_in_body(chunked(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"), 400)


def test_chunk_size_with_leading_zeros_is_read() -> None:
    """Leading zeros do not count towards the size's 16 significant hex digits."""
    outcome = accepted(chunked(b"0" * 30 + b"5\r\nhello\r\n0\r\n\r\n"))
    assert bytes(outcome.requests[0].body) == b"hello"
    assert_refused_in_body(chunked(b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n"), 400)


def test_chunk_size_line_too_long_is_400() -> None:
    """A chunk-size line is bounded (extensions included) even when it never ends."""
    assert_refused_in_body(chunked(b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), 400)
    for mode in ("whole", "lines"):
        outcome = refused(chunked(b"5;a=" + b"b" * 5000), mode=mode)
        assert outcome.error is not None and outcome.error.status == 400


def test_chunk_size_is_checked_before_data_after_it() -> None:
    """A refused chunk-size line stops the body: earlier chunks' data only reaches the sink."""
    outcome = refused(chunked(b"5\r\nhello\r\n5; a b\r\nworld\r\n0\r\n\r\n"))
    assert bytes(outcome.requests[0].body) == b"hello"


GET = b"GET /g HTTP/1.1\r\nHost: h\r\n\r\n"
CHUNKED_BWS = chunked(b"5 ; a = b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")


@pytest.mark.parametrize(
    "stream",
    [
        GET + CHUNKED_BWS + GET,
        CHUNKED_BWS + CHUNKED_BWS + GET,
        GET + GET + CHUNKED_BWS,
        b"\r\n" + CHUNKED_BWS + b"\r\n" + GET,
        # a body that looks like a chunked head must not be read as one
        post(b"Content-Length: " + str(len(CHUNKED_BWS)).encode(), body=CHUNKED_BWS) + CHUNKED_BWS,
        post(b"Content-Length: 4", body=b"\r\n\r\n") + CHUNKED_BWS + GET,
        post(b"Expect: 100-continue", b"Content-Length: 1", body=b"x") + CHUNKED_BWS,
    ],
    ids=["get-chunked-get", "chunked-chunked-get", "get-get-chunked", "blank-lines",
         "lookalike-body", "crlfcrlf-body", "expect"],
)  # fmt: skip
def test_pipelined_requests_around_chunked_bodies(stream: bytes) -> None:
    """Requests before and after a chunked one in the same bytes each go through whole."""
    results = []
    for mode in ("whole", "lines", "bytes"):
        outcome = accepted(stream, mode=mode)
        results.append(
            [(r.head.method, r.head.path, bytes(r.body), r.trailers) for r in outcome.requests]
        )
    assert results[0] == results[1] == results[2]
    chunked_ones = [r for r in results[0] if r[1] == b"/p" and r[2] == b"hello"]
    assert chunked_ones and all(r[3] == [(b"X-T", b"1")] for r in chunked_ones)


def test_chunked_head_split_across_feeds_then_pipelined() -> None:
    """A chunked head cut anywhere (even inside its final CRLF CRLF) finds its body."""
    stream = GET + CHUNKED_BWS + GET
    for cut in range(1, len(stream)):
        sink = RecordingSink()
        parser = RequestParser(sink)
        parser.feed(stream[:cut])
        parser.feed(stream[cut:])
        assert [bytes(r.body) for r in sink.requests] == [b"", b"hello", b""], cut
        assert all(r.ended for r in sink.requests), cut


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5),
    exts=st.lists(
        st.sampled_from([b"", b";a", b" ;a", b"; a", b";a = b", b';a="x y"', b"\t;\tz=1"]),
        min_size=6,
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_chunked_body_survives_any_cuts(
    sizes: list[int], exts: list[bytes], cuts: list[int]
) -> None:
    """Valid chunks with extensions, cut at arbitrary points, give back their data."""
    body = b"".join(b"%x%s\r\n%s\r\n" % (n, exts[i], b"d" * n) for i, n in enumerate(sizes))
    stream = GET + chunked(body + b"0" + exts[-1] + b"\r\n\r\n") + GET
    sink = RecordingSink()
    parser = RequestParser(sink)
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, end in zip(points, points[1:], strict=False):
        parser.feed(stream[start:end])
    assert [bytes(r.body) for r in sink.requests] == [b"", b"d" * sum(sizes), b""]
    assert all(r.ended for r in sink.requests)


def test_chunk_data_longer_than_its_size_is_400() -> None:
    """The CRLF after chunk-data is checked: extra bytes are not a new chunk."""
    assert_refused_in_body(chunked(b"5\r\nhelloX\r\n0\r\n\r\n"), 400)


def test_chunked_body_with_trailers() -> None:
    """Trailer fields after the last chunk reach request_end, the body is the chunk data."""
    data = chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")
    for mode in ("whole", "lines", "bytes"):
        (got,) = accepted(data, mode=mode).requests
        assert got.head.chunked and got.head.content_length is None
        assert bytes(got.body) == b"hello world"
        assert got.trailers == [(b"X-Checksum", b"abc"), (b"X-Other", b"1")]


def test_chunked_body_without_trailers_ends_with_none() -> None:
    """No trailer section gives request_end(None)."""
    (got,) = accepted(chunked(b"3\r\nabc\r\n0\r\n\r\n")).requests
    assert got.trailers is None


@pytest.mark.parametrize(
    "name",
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Authorization",
        b"Content-Type",
    ],
)
def test_forbidden_trailer_field_is_400(name: bytes) -> None:
    """RFC 9110 6.5.1: framing, routing and authentication fields cannot be trailers."""
    data = chunked(b"5\r\nhello\r\n0\r\n" + name + b": x\r\n\r\n")
    assert_refused_in_body(data, 400)


# --- field lines (RFC 9112 5, RFC 9110 5.5) --------------------------------------


@pytest.mark.parametrize("fold", [b" two", b"\ttwo"])
def test_obs_fold_is_400(fold: bytes) -> None:
    """RFC 9112 5.2: a server MUST reject obs-fold with 400 or unfold it; Gantry rejects."""
    assert_refused_in_head(request(b"X-Long: one", fold), 400)


def test_leading_whitespace_before_first_field_is_400() -> None:
    """RFC 9112 2.2: whitespace between the start line and the first field MUST be refused."""
    assert_refused_in_head(b"GET / HTTP/1.1\r\n X: y\r\nHost: h\r\n\r\n", 400)


@pytest.mark.parametrize("name", [b"Content-Length ", b"X\t", b"Host "])
def test_whitespace_before_colon_is_400(name: bytes) -> None:
    """RFC 9112 5.1: whitespace between field name and colon MUST get 400."""
    assert_refused_in_head(post(name + b": 3", body=b"abc"), 400)


@pytest.mark.parametrize(
    "value",
    [b"a\x00b", b"a\rb", b"a\nb: c", b"a\x07b", b"a\x7fb"],
    ids=["nul", "cr", "lf", "bel", "del"],
)
def test_control_characters_in_value_are_400(value: bytes) -> None:
    """RFC 9110 5.5: field-value is VCHAR, obs-text, SP and HTAB only."""
    assert_refused_in_head(request(b"X: " + value), 400)


@pytest.mark.parametrize("name", [b"X\x00Y", b"X Y", b"X(Y", b"", b"X\xdfY"])
def test_invalid_field_name_is_400(name: bytes) -> None:
    """field-name is a token (RFC 9110 5.1)."""
    assert_refused_in_head(request(name + b": v"), 400)


def test_obs_text_and_htab_in_values_pass() -> None:
    """Octets 0x80-0xFF (obs-text) and inner HTAB are allowed in values, passed as bytes."""
    (got,) = accepted(request(b"X-A: caf\xc3\xa9", b"X-B: a\tb")).requests
    assert (b"X-A", b"caf\xc3\xa9") in got.head.headers
    assert (b"X-B", b"a\tb") in got.head.headers


@pytest.mark.parametrize(
    "line",
    [
        b"X: \t value",
        b"X: value \t ",
        b"X:\tvalue\t",
        b"X:value ",
    ],
)
def test_surrounding_whitespace_is_not_part_of_the_value(line: bytes) -> None:
    """RFC 9110 5.5: a parser MUST exclude leading and trailing OWS from a field value."""
    (got,) = accepted(request(line)).requests
    assert got.head.headers[-1] == (b"X", b"value")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\rHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n",
    ],
    ids=["request-line", "field-line", "end-of-head"],
)
def test_bare_cr_as_line_end_is_400(data: bytes) -> None:
    """RFC 9112 2.2: a bare CR outside content MUST be rejected or replaced; Gantry rejects."""
    assert_refused_in_head(data, 400)


def test_bare_lf_line_ends_are_400() -> None:
    """RFC 9112 2.2 lets a recipient accept bare LF; Gantry refuses it (no lenient framing)."""
    assert_refused_in_head(b"GET / HTTP/1.1\nHost: h\n\n", 400)


# --- the request line (RFC 9112 3) -------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"G@T / HTTP/1.1", b"GET: / HTTP/1.1", b" GET / HTTP/1.1", b"GET\x00 / HTTP/1.1",
     b"GET\t/ HTTP/1.1", b"\xc3\x9f / HTTP/1.1"],
)  # fmt: skip
def test_invalid_method_is_400(line: bytes) -> None:
    """method is a token (RFC 9110 9.1) followed by exactly one SP."""
    assert_refused_in_head(request(line=line), 400)


@pytest.mark.parametrize(
    "mode",
    [
        "whole",
        "lines",
        "bytes",
    ],
)
@pytest.mark.parametrize("method", [b"FROB", b"-BLARGH", b"get"])
def test_unknown_method_is_501(method: bytes, mode: str) -> None:
    """RFC 9110 9.1: an unrecognised (but well-formed) method SHOULD get 501."""
    outcome = refused(request(line=method + b" / HTTP/1.1"), mode=mode)
    assert outcome.requests == []
    assert outcome.error is not None and outcome.error.status == 501, outcome.error


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_unknown_method_after_a_pipelined_request_is_not_named_after_it(mode: str) -> None:
    """The 501 names the refused request's method, never the one before it in the stream."""
    outcome = refused(request() + request(line=b"FROB / HTTP/1.1"), mode=mode)
    assert [r.head.method for r in outcome.requests] == ["GET"]
    assert outcome.error is not None and outcome.error.status in (400, 501), outcome.error
    assert "GET" not in outcome.error.reason


def test_unknown_method_waits_for_its_space() -> None:
    """An unknown token cut before its SP gets no verdict yet; a bad byte after it gets 400."""
    sink = RecordingSink()
    parser = RequestParser(sink)
    parser.feed(b"FRO")
    parser.feed(b"B")
    with pytest.raises(ProtocolError) as refused_token:
        parser.feed(b" / HTTP/1.1\r\n")
    assert refused_token.value.status == 501
    parser = RequestParser(RecordingSink())
    parser.feed(b"FROB")
    with pytest.raises(ProtocolError) as garbage:
        parser.feed(b"\x01 / HTTP/1.1\r\n")
    assert garbage.value.status == 400


@pytest.mark.parametrize("method", [b"PATCH", b"PROPFIND", b"PURGE", b"SEARCH"])
def test_extension_methods_llhttp_knows_pass(method: bytes) -> None:
    """Methods beyond RFC 9110's eight that llhttp knows reach the application."""
    (got,) = accepted(request(line=method + b" / HTTP/1.1")).requests
    assert got.head.method == method.decode()


@pytest.mark.parametrize(
    "target",
    [b"a", b"foo/bar", b"example.test:443", b"/#frag", b"/a\x7f", b"/\xc3\xa0",
     b"ftp://example.test/", b"*x", b"s://]ufd/:"],
)  # fmt: skip
def test_invalid_target_is_400(target: bytes) -> None:
    """RFC 9112 3.2: origin-, absolute- or asterisk-form (authority-form only for CONNECT)."""
    assert_refused_in_head(request(line=b"GET " + target + b" HTTP/1.1"), 400)


def test_asterisk_outside_options_is_400() -> None:
    """RFC 9112 3.2.4: asterisk-form is only for a server-wide OPTIONS."""
    assert_refused_in_head(request(line=b"GET * HTTP/1.1"), 400)


def test_asterisk_with_options_passes() -> None:
    """OPTIONS * is the one place asterisk-form is allowed."""
    (got,) = accepted(request(line=b"OPTIONS * HTTP/1.1")).requests
    assert (got.head.method, got.head.path, got.head.query) == ("OPTIONS", b"*", b"")


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"http://example.test/a?b", b"/a", b"b"),
        (b"https://example.test/", b"/", b""),
        (b"http://example.test", b"/", b""),
        (b"http://example.test?x=1", b"/", b"x=1"),
        (b"http://user:pw@example.test:8080/p/q?r=/s", b"/p/q", b"r=/s"),
        (b"http://[::1]:8080/v6", b"/v6", b""),
    ],
)
def test_absolute_form_gives_path_and_query(target: bytes, path: bytes, query: bytes) -> None:
    """RFC 9112 3.2.2: an absolute-form target is reduced to its path and query."""
    (got,) = accepted(request(line=b"GET " + target + b" HTTP/1.1")).requests
    assert (got.head.target, got.head.path, got.head.query) == (target, path, query)


def test_origin_form_keeps_the_path_as_sent() -> None:
    """Empty segments and percent-escapes are not normalised by the parser."""
    (got,) = accepted(request(line=b"GET //a/%2F/../b?c=d&e HTTP/1.1")).requests
    assert (got.head.path, got.head.query) == (b"//a/%2F/../b", b"c=d&e")


def test_http11_without_host_is_400() -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without Host MUST get 400."""
    assert_refused_in_head(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)


@pytest.mark.parametrize("second", [b"Host: h", b"host: other"])
def test_two_host_fields_are_400(second: bytes) -> None:
    """RFC 9112 3.2: more than one Host field MUST get 400."""
    assert_refused_in_head(request(second), 400)


def test_empty_host_passes() -> None:
    """RFC 9112 3.2: a client sends an empty Host when the target has no authority."""
    accepted(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")


def test_http10_without_host_passes() -> None:
    """Host is required from HTTP/1.1 on; a 1.0 request may omit it."""
    (got,) = accepted(b"GET / HTTP/1.0\r\n\r\n").requests
    assert got.head.version == "1.0"


@pytest.mark.parametrize(
    "version",
    [b"2.0", b"3.0", b"9.9"],
)  # fmt: skip
def test_unsupported_major_version_is_505(version: bytes) -> None:
    """RFC 9110 15.6.6: 505 for a major version the server does not support."""
    assert_refused_in_head(request(line=b"GET / HTTP/" + version), 505)


def test_higher_minor_version_is_served_as_11() -> None:
    """RFC 9110 2.5: a higher minor version of a known major SHOULD be handled as 1.1."""
    (got,) = accepted(request(line=b"GET / HTTP/1.2")).requests
    assert got.head.version == "1.1"


@pytest.mark.parametrize("version", [b"HTTP/1.1x", b"HTTP/11", b"HTTP/1", b"http/1.1", b"FTP/1.1"])
def test_malformed_version_is_400(version: bytes) -> None:
    """HTTP-version is "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 2.3)."""
    assert_refused_in_head(request(line=b"GET / " + version), 400)


# --- limits -------------------------------------------------------------------------

_SMALL = HTTPLimits(max_request_line=64, max_field_size=64, max_fields=5, max_body_size=100)


def test_request_target_over_the_limit_is_414() -> None:
    """A target longer than max_request_line gets 414, whole or trickled."""
    assert_refused_in_head(request(line=b"GET /" + b"a" * 64 + b" HTTP/1.1"), 414, _SMALL)


def test_request_target_at_the_limit_passes() -> None:
    """The limit is inclusive: a 64-octet target passes a 64-octet limit."""
    accepted(request(line=b"GET /" + b"a" * 63 + b" HTTP/1.1"), _SMALL)


def test_unterminated_long_target_is_refused_before_the_line_ends() -> None:
    """A target that never ends is refused as soon as it passes the limit."""
    outcome = refused(b"GET /" + b"a" * 1000, _SMALL)
    assert outcome.error is not None and outcome.error.status == 414


def test_field_over_the_limit_is_431() -> None:
    """A field (name plus value) longer than max_field_size gets 431."""
    assert_refused_in_head(request(b"X-Big: " + b"v" * 60), 431, _SMALL)


def test_field_at_the_limit_passes() -> None:
    """name (5) plus value (59) is exactly the 64-octet limit."""
    accepted(request(b"X-Big: " + b"v" * 59), _SMALL)


def test_unterminated_huge_field_is_refused_at_the_head_limit() -> None:
    """A field that never ends cannot grow past max_head_size."""
    outcome = refused(request(b"X: " + b"v" * 70000)[:-4])
    assert outcome.error is not None and outcome.error.status == 431


def test_too_many_fields_is_431() -> None:
    """More than max_fields field lines (Host counts) get 431."""
    assert_refused_in_head(request(*[b"X-%d: v" % i for i in range(5)]), 431, _SMALL)
    accepted(request(*[b"X-%d: v" % i for i in range(4)]), _SMALL)


def test_content_length_over_the_body_limit_is_413_at_head_time() -> None:
    """A declared length over max_body_size is refused before the head reaches the app."""
    assert_refused_in_head(post(b"Content-Length: 101"), 413, _SMALL)
    accepted(post(b"Content-Length: 100", body=b"x" * 100), _SMALL)


def test_chunked_body_over_the_limit_is_413_while_reading() -> None:
    """A chunked body is counted as it arrives; the piece that crosses the limit is refused."""
    data = chunked(b"40\r\n" + b"x" * 64 + b"\r\n40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n")
    for mode in ("whole", "lines", "bytes"):
        outcome = refused(data, _SMALL, mode)
        assert outcome.error is not None and outcome.error.status == 413
        (got,) = outcome.requests
        assert not got.ended and len(got.body) <= 100


def test_a_large_body_in_one_feed_is_not_a_large_head() -> None:
    """A request whose body arrives in one piece larger than max_head_size is fine."""
    accepted(post(b"Content-Length: 70000", body=b"x" * 70000))


def test_a_large_chunk_completing_a_request_is_not_a_large_head() -> None:
    """The head limit applies to heads: the feed that ends a 70 kB chunked body passes."""
    data = chunked(b"11170\r\n" + b"x" * 70000 + b"\r\n0\r\n\r\n")
    head_end = data.index(b"\r\n\r\n") + 4
    sink = RecordingSink()
    parser = RequestParser(sink)
    parser.feed(data[:head_end])
    parser.feed(data[head_end:])
    assert sink.requests[0].ended and len(sink.requests[0].body) == 70000


def test_head_limit_does_not_depend_on_how_the_head_is_cut() -> None:
    """A head under max_head_size passes whether it comes whole or byte by byte."""
    limits = HTTPLimits(max_head_size=6000)
    data = request(b"X: " + b"v" * 4000)
    accepted(data, limits, "whole")
    accepted(data, limits, "bytes")


# --- Expect, keep-alive, pipelining -------------------------------------------------


def test_expect_100_continue_sets_the_flag() -> None:
    """A 1.1 request with a body and 'Expect: 100-continue' asks for an interim response."""
    sink = RecordingSink()
    RequestParser(sink).feed(post(b"Expect: 100-Continue", b"Content-Length: 3"))
    (got,) = sink.requests
    assert got.head.expect_continue and not got.ended


def test_expect_100_continue_needs_a_body_and_http11() -> None:
    """No body, or an HTTP/1.0 client (RFC 9110 10.1.1): no interim response."""
    (got,) = accepted(request(b"Expect: 100-continue")).requests
    assert not got.head.expect_continue
    data = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    (got,) = accepted(data).requests
    assert not got.head.expect_continue


def test_expect_with_trailing_whitespace_still_continues() -> None:
    """RFC 9110 5.5: 'Expect: 100-continue ' is the same expectation."""
    sink = RecordingSink()
    RequestParser(sink).feed(post(b"Expect: 100-continue ", b"Content-Length: 3"))
    assert sink.requests[0].head.expect_continue


def test_other_expectation_is_417() -> None:
    """RFC 9110 10.1.1: an expectation the server cannot meet gets 417."""
    assert_refused_in_head(post(b"Expect: something-else", b"Content-Length: 3"), 417)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Close", False),
        (b"1.1", b"keep-alive, close", False),
    ],
)
def test_keep_alive_rules(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    """RFC 9112 9.3: 1.1 persists unless 'close'; 1.0 only with 'keep-alive'."""
    fields = [] if connection is None else [b"Connection: " + connection]
    (got,) = accepted(request(*fields, line=b"GET / HTTP/" + version)).requests
    assert got.head.keep_alive is keep_alive


def test_pipelined_requests_come_out_in_order_with_their_bodies() -> None:
    """Three requests in one feed: three heads, in order, each with its own body."""
    data = (
        post(b"Content-Length: 5", body=b"first")
        + chunked(b"6\r\nsecond\r\n0\r\n\r\n")
        + request(line=b"GET /third?x HTTP/1.1")
    )
    for mode in ("whole", "lines", "bytes"):
        got = accepted(data, mode=mode).requests
        assert [(r.head.method, r.head.path, bytes(r.body)) for r in got] == [
            ("POST", b"/p", b"first"),
            ("POST", b"/p", b"second"),
            ("GET", b"/third", b""),
        ]


def test_nothing_is_parsed_after_a_closing_request() -> None:
    """RFC 9112 9.6: after 'Connection: close' no further request is processed.

    Gantry delivers the closing request whole, then refuses the rest (the server
    closes the connection after the response).
    """
    data = request(b"Connection: close") + request(line=b"GET /second HTTP/1.1")
    outcome = refused(data)
    assert [r.head.path for r in outcome.requests] == [b"/"]
    assert outcome.requests[0].ended


def test_leading_empty_lines_are_ignored() -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request-line."""
    (got,) = accepted(b"\r\n" + request()).requests
    assert got.head.path == b"/"


def test_a_head_fed_byte_by_byte() -> None:
    """Trickling a head one octet at a time gives the same head, delivered exactly once."""
    data = request(b"User-Agent: test/1.0", b"Accept: */*", line=b"GET /a/b?c=d HTTP/1.1")
    sink = RecordingSink()
    parser = RequestParser(sink)
    for index in range(len(data) - 1):
        parser.feed(data[index : index + 1])
        assert sink.requests == [] and parser.in_head
    parser.feed(data[-1:])
    (got,) = sink.requests
    assert (got.head.method, got.head.path, got.head.query) == ("GET", b"/a/b", b"c=d")
    assert got.head.headers == [
        (b"Host", b"h"),
        (b"User-Agent", b"test/1.0"),
        (b"Accept", b"*/*"),
    ]
    assert got.ended and parser.in_head


def test_the_parser_stays_refused() -> None:
    """After a refusal the stream cannot be trusted: every later feed raises too."""
    sink = RecordingSink()
    parser = RequestParser(sink)
    with pytest.raises(ProtocolError):
        parser.feed(b"GET / HTTP/1.1\r\nX : y\r\n\r\n")
    with pytest.raises(ProtocolError):
        parser.feed(request())
    assert sink.requests == []


def test_upgrade_request_with_a_body_is_refused() -> None:
    """llhttp stops at an Upgrade head, so its body would be lost: refuse, never drop it."""
    data = post(b"Connection: Upgrade", b"Upgrade: h2c", b"Content-Length: 5", body=b"hello")
    assert_refused_in_head(data, 400)


def test_upgrade_request_without_a_body_is_served() -> None:
    """WSGI cannot switch protocols; the request is served as plain HTTP (RFC 9110 7.8)."""
    (got,) = accepted(request(b"Connection: Upgrade", b"Upgrade: websocket")).requests
    assert got.head.upgrade


# --- fuzzing: the parser's only failure is ProtocolError ---------------------------

_STATUSES = {400, 405, 413, 414, 417, 431, 501, 505}
_PIECES = [
    b"GET ", b"POST ", b"OPTIONS ", b"CONNECT ", b"/", b"/a?b", b"*", b"http://x.test",
    b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b" ", b"\t",
    b"Host: h", b"Transfer-Encoding: ", b"chunked", b"gzip", b",", b"Content-Length: ",
    b"5", b"0", b"ff", b";", b"=", b'"', b":", b"Connection: ", b"close", b"upgrade",
    b"Upgrade: x", b"Expect: 100-continue", b"\x00", b"\xff", b"#", b"hello",
]  # fmt: skip
_LIMITS = HTTPLimits(
    max_request_line=64, max_field_size=64, max_fields=6, max_head_size=300, max_body_size=40
)


def _feed_all(pieces: list[bytes], limits: HTTPLimits) -> None:
    parser = RequestParser(RecordingSink(), limits)
    try:
        for piece in pieces:
            parser.feed(piece)
    except ProtocolError as exc:
        assert exc.status in _STATUSES, exc


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for size in cuts:
        pieces.append(data[start : start + size])
        start += size
    return [*pieces, data[start:]]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(1, 40), max_size=8))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    """Any bytes, cut anywhere: the parser either takes them or raises ProtocolError."""
    _feed_all(_cut(data, cuts), HTTPLimits())


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /p HTTP/1.1\r\nHost: h\r\n"]),
    st.binary(max_size=400),
    st.lists(st.integers(1, 40), max_size=8),
)
def test_bytes_after_a_valid_request_line_parse_or_raise(
    line: bytes, data: bytes, cuts: list[int]
) -> None:
    """Garbage after a good request line only ever ends in ProtocolError."""
    _feed_all(_cut(line + data, cuts), _LIMITS)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=3)), max_size=40),
    st.lists(st.integers(1, 30), max_size=6),
)
def test_request_shaped_noise_parses_or_raises(pieces: list[bytes], cuts: list[int]) -> None:
    """Streams built from request fragments (the interesting edges) obey the same rule."""
    _feed_all(_cut(b"".join(pieces), cuts), _LIMITS)


# The plain-request short cut (RequestParser._simple): a whole request in one feed may skip
# llhttp, and must then give the sink exactly what llhttp's callbacks give when the same
# bytes come one at a time (which never takes it). Each case near one of its edges.
SIMPLE_EDGES = [
    request(),
    request(b"User-Agent: curl/8.5.0", b"Accept: */*"),
    request(b"Connection: keep-alive"),
    request(b"Connection: Keep-Alive"),
    request(b"Connection: close"),
    request(b"connection: CLOSE", line=b"HEAD / HTTP/1.1"),
    request(b"Connection: upgrade", b"Upgrade: websocket"),
    request(b"Connection: keep-alive, close"),
    request(b"Connection: close", b"Connection: keep-alive"),
    request(b"Upgrade: h2c"),
    request(b"Proxy-Connection: close"),
    request(b"Expect: 100-continue"),
    request(b"Content-Length: 0"),
    request(b"Content-Length: 3", body=b"abc"),
    request(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    request(b"HOST: twice"),
    request(b"X-Host: not-a-host", b"Host-Name: neither"),
    b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",  # no Host
    b"GET / HTTP/1.0\r\nX-A: b\r\n\r\n",  # no Host in 1.0
    request(line=b"GET / HTTP/1.0"),
    request(b"Connection: keep-alive", line=b"GET / HTTP/1.0"),
    request(line=b"GET /a/b%20c;p?x=1&y=%2F HTTP/1.1"),
    request(line=b"GET /?only-query HTTP/1.1"),
    request(line=b"GET /!$&'()*+,;=:@-._~%41/%zz?q=/?:@ HTTP/1.1"),  # every target character
    request(b"X!#$%&'*+.^_`|~09az: v", b"Content-Length-X: 5", b"X-Connection: close"),
    request(line=b"GET /a#frag HTTP/1.1"),
    request(line=b'GET /a"b HTTP/1.1'),
    request(line=b"GET http://h/abs?q HTTP/1.1"),
    request(line=b"GET * HTTP/1.1"),
    request(line=b"GET / HTTP/1.2"),
    request(line=b"GET / HTTP/2.0"),
    request(line=b"get / HTTP/1.1"),
    request(line=b"POST / HTTP/1.1"),
    request(line=b"DELETE /x HTTP/1.1"),
    request(b"X-Tab: a\tb", b"X-Spaces: a   b"),
    request(b"X-Trailing: a "),
    request(b"X-Leading:   a"),
    request(b"X-Nospace:a"),
    request(b"X-Empty:"),
    request(b"X-Empty: "),
    request(b"X-Obs: caf\xc3\xa9"),
    request(b"X-Ctl: a\x01b"),
    request(b"X-Del: a\x7fb"),
    request(b"Bad Name: a"),
    request(b"X-Fold: a", b" folded"),
    request(b"X-Colon: a: b: c"),
    request(*(b"X-%d: v" % i for i in range(99))),
    request(*(b"X-%d: v" % i for i in range(100))),
    request() + request(line=b"GET /second HTTP/1.1"),  # pipelined: two in one feed
    request().replace(b"\r\n\r\n", b"\n\r\n"),
    b"\r\n" + request(),
]


def _heads(outcome: Outcome) -> list[tuple[object, ...]]:
    return [
        (
            h.method,
            h.target,
            h.path,
            h.query,
            h.version,
            h.keep_alive,
            h.headers,
            h.has_body,
            h.expect_continue,
            h.upgrade,
            r.body,
            r.ended,
        )  # fmt: skip
        for r in outcome.requests
        for h in (r.head,)
    ]


@pytest.mark.parametrize("data", SIMPLE_EDGES)
def test_plain_request_short_cut_gives_what_llhttp_gives(data: bytes) -> None:
    limits = HTTPLimits(max_fields=100)
    whole, one_by_one = run(data, limits, "whole"), run(data, limits, "bytes")
    assert _heads(whole) == _heads(one_by_one)
    assert (whole.error and (whole.error.status, whole.error.reason)) == (
        one_by_one.error and (one_by_one.error.status, one_by_one.error.reason)
    )


@pytest.mark.parametrize(
    ("data", "short"),
    [
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", True),  # wrk
        (request(b"User-Agent: curl/8.5.0", b"Accept: */*", line=b"HEAD /x?y HTTP/1.1"), True),
        (request(b"Connection: keep-alive", b"Accept-Encoding: gzip, br"), True),
        (request(b"Connection: close", line=b"GET / HTTP/1.0"), True),
        (request(b"Content-Length: 0"), False),
        (request(b"X-Nospace:a"), False),
        (request(line=b"POST / HTTP/1.1"), False),
        (request(*(b"X-%d: v" % i for i in range(100))), False),  # 101 fields: 431 by llhttp
    ],
)
def test_which_requests_take_the_short_cut(data: bytes, short: bool) -> None:
    taken: list[bool] = []

    class Watched(RequestParser):
        __slots__ = ()

        def _simple(self, match: re.Match[bytes]) -> bool:
            taken.append(super()._simple(match))
            return taken[-1]

    sink = RecordingSink()
    with contextlib.suppress(ProtocolError):
        Watched(sink).feed(data)
    assert any(taken) is short


def test_a_closed_parser_refuses_what_comes_after() -> None:
    """RequestParser.close (the connection is gone) lets go of llhttp and the sink; a
    second close is harmless, and bytes fed after it are refused, not parsed."""
    sink = RecordingSink()
    parser = RequestParser(sink)
    parser.feed(request())
    parser.close()
    parser.close()
    for data in (request(), request(b"X-Nospace:a")):
        with pytest.raises(ProtocolError) as refused:
            parser.feed(data)
        assert refused.value.status == 400
    assert len(sink.requests) == 1
