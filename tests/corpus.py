"""The shared HTTP/1.1 request corpus (gunicorn's requests) and a harness to feed the parser.

The corpus lives in the repository, in ``tests/data/conformance/http1-requests``;
its README defines how the ``.http`` files are escaped and what
``expected.json`` holds. This module turns those files into bytes and
expected parses, and feeds bytes to the parser whole, line by line or byte by
byte while recording what reaches the sink: the tests decide what agreement means.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gantry.protocol.http1 import HTTPLimits, ProtocolError, RequestHead, RequestParser

__all__ = [
    "CORPUS_DIR",
    "HOST",
    "MODES",
    "CorpusCase",
    "ExpectedRequest",
    "Outcome",
    "ParsedRequest",
    "RecordingSink",
    "decode_escapes",
    "load_corpus",
    "require_corpus",
    "run",
    "with_host",
]

#: the corpus is part of the repository (tests/data/README.md says where it comes from)
CORPUS_DIR = Path(__file__).resolve().parent / "data" / "conformance" / "http1-requests"

#: the Host value ``with_host`` adds
HOST = b"corpus.test"

_HEX_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class ExpectedRequest:
    """One request as gunicorn parsed it: strings are latin-1 views of the wire bytes."""

    method: str
    raw_target: str
    path: str
    query: str
    fragment: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    trailers: tuple[tuple[str, str], ...] | None


@dataclass(frozen=True)
class CorpusCase:
    """One ``.http`` file: its wire bytes and what gunicorn made of them."""

    name: str  # e.g. "valid/001"
    data: bytes
    requests: tuple[ExpectedRequest, ...] = ()
    error: str | None = None  # gunicorn's exception class for invalid cases
    gunicorn_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """Whether gunicorn accepts this case."""
        return self.name.startswith("valid/")

    def lines(self) -> list[bytes]:
        """The wire bytes cut after every LF, as a client writing line by line would send them."""
        return self.data.splitlines(keepends=True)


def decode_escapes(text: bytes) -> bytes:
    """Turn an escaped ``.http`` file into wire bytes, in the order the corpus README gives."""
    data = text.replace(b"\n", b"")
    data = data.replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\0")
    data = data.replace(b"\\n", b"\n")
    data = data.replace(b"\\t", b"\t")
    return _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _pairs(raw: list[list[str]] | None) -> tuple[tuple[str, str], ...] | None:
    if raw is None:
        return None
    return tuple((name, value) for name, value in raw)


def _expected_request(raw: dict[str, Any]) -> ExpectedRequest:
    uri = raw["uri"]
    headers = _pairs(raw["headers"])
    assert headers is not None
    return ExpectedRequest(
        method=raw["method"],
        raw_target=uri["raw"],
        path=uri["path"],
        query=uri["query"],
        fragment=uri["fragment"],
        version=(raw["version"][0], raw["version"][1]),
        headers=headers,
        body=base64.b64decode(raw["body_base64"]),
        trailers=_pairs(raw.get("trailers")),
    )


def load_corpus(directory: Path = CORPUS_DIR) -> list[CorpusCase]:
    """Every case of the corpus, valid ones first, each with its expected outcome."""
    expected: dict[str, dict[str, Any]] = json.loads((directory / "expected.json").read_text())
    cases = []
    for kind in ("valid", "invalid"):
        for path in sorted((directory / kind).glob("*.http")):
            name = f"{kind}/{path.stem}"
            entry = expected[name]  # a case without an expectation is a broken corpus
            cases.append(
                CorpusCase(
                    name=name,
                    data=decode_escapes(path.read_bytes()),
                    requests=tuple(_expected_request(r) for r in entry.get("requests", ())),
                    error=entry.get("error"),
                    gunicorn_settings=dict(entry.get("gunicorn_settings", {})),
                )
            )
    return cases


def require_corpus() -> list[CorpusCase]:
    """Load the corpus; it ships with the tests, so a missing corpus fails the run."""
    if not (CORPUS_DIR / "expected.json").is_file():
        pytest.fail(f"HTTP/1.1 conformance corpus not found at {CORPUS_DIR}", pytrace=False)
    return load_corpus()


def with_host(case: CorpusCase, host: bytes = HOST) -> bytes:
    """The case's bytes with a Host field added to every HTTP/1.1 request head that lacks one.

    Used to tell "refused because HTTP/1.1 needs Host" apart from what a case is
    really about. For a valid case the request lines of the expected requests
    are found in order (so a request line inside a body is left alone); for an
    invalid one only the first head is touched, since its framing is in doubt.
    """
    data = case.data
    if case.valid:
        folded = data.lower()  # a lenient setting may have casefolded the method
        starts = []
        cursor = 0
        for request in case.requests:
            line = f"{request.method} {request.raw_target} HTTP/".encode("latin-1")
            at = folded.find(line.lower(), cursor)
            if at < 0:
                continue
            cursor = at + len(line)
            if request.version == (1, 1) and not any(
                name.lower() == "host" for name, _ in request.headers
            ):
                starts.append(at)
    else:
        first = len(data) - len(data.lstrip(b"\r\n"))
        line_end = data.find(b"\n", first)
        head_end = data.find(b"\r\n\r\n")
        head = data if head_end < 0 else data[:head_end]
        is_http11 = b"HTTP/1.1" in data[first:line_end]
        has_host = re.search(rb"(?im)^host[ \t]*:", head) is not None
        starts = [first] if is_http11 and not has_host else []
    out = []
    previous = 0
    for at in starts:
        line_end = data.find(b"\n", at)
        if line_end < 0:
            break
        out.append(data[previous : line_end + 1])
        out.append(b"Host: " + host + b"\r\n")
        previous = line_end + 1
    out.append(data[previous:])
    return b"".join(out)


@dataclass
class ParsedRequest:
    """What the sink received for one request."""

    head: RequestHead
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False


class RecordingSink:
    """A RequestSink that keeps everything, and checks the calls come in a legal order."""

    def __init__(self) -> None:
        self.requests: list[ParsedRequest] = []

    def request_head(self, head: RequestHead) -> None:
        assert not self.requests or self.requests[-1].ended, "head before the previous end"
        self.requests.append(ParsedRequest(head))

    def request_body(self, data: bytes) -> None:
        assert self.requests and not self.requests[-1].ended, "body outside a request"
        assert data, "empty body piece"
        self.requests[-1].body += data

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        assert self.requests and not self.requests[-1].ended, "end outside a request"
        self.requests[-1].trailers = trailers
        self.requests[-1].ended = True


@dataclass
class Outcome:
    """The requests a stream produced and the refusal that stopped it, if any."""

    requests: list[ParsedRequest]
    error: ProtocolError | None

    @property
    def refused(self) -> bool:
        """Whether the parser raised."""
        return self.error is not None


MODES: dict[str, Callable[[bytes], Iterator[bytes]]] = {
    "whole": lambda data: iter([data]),
    "lines": lambda data: iter(data.splitlines(keepends=True)),
    "bytes": lambda data: (data[i : i + 1] for i in range(len(data))),
}


def run(data: bytes, limits: HTTPLimits | None = None, mode: str = "whole") -> Outcome:
    """Feed ``data`` in the pieces ``mode`` cuts it into, stopping at the first refusal."""
    sink = RecordingSink()
    parser = RequestParser(sink, limits)
    try:
        for piece in MODES[mode](data):
            parser.feed(piece)
    except ProtocolError as exc:
        return Outcome(sink.requests, exc)
    return Outcome(sink.requests, None)
