"""uwsgi packets captured from real nginx: they decode, and the app sees what HTTP would give it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from gantry.protocol.http1 import RequestHead, RequestParser
from gantry.protocol.uwsgi import (
    DEFAULT_BUFFER_SIZE,
    UwsgiProtocolError,
    encode_packet,
    parse_packet,
)
from gantry.wsgi.environ import EnvironTemplate
from gantry.wsgi.uwsgi_environ import environ_from_uwsgi

PACKETS = Path(__file__).resolve().parent / "data" / "conformance" / "uwsgi-from-nginx"


def _packet_files() -> list[Path]:
    files = sorted(PACKETS.glob("*.bin")) if PACKETS.is_dir() else []
    return files


def _load(name: str) -> bytes:
    if not PACKETS.is_dir():
        pytest.fail(f"conformance packets missing at {PACKETS} (tests/data/)", pytrace=False)
    return (PACKETS / f"{name}.bin").read_bytes()


CASES = [p.stem for p in _packet_files()] or ["get-simple"]

# What each captured request must look like to the app (from the corpus README).
EXPECTED: dict[str, dict[str, Any]] = {
    "get-simple": {"REQUEST_METHOD": "GET", "PATH_INFO": "/hello"},
    "get-query-utf8": {
        "PATH_INFO": "/café/a b".encode().decode("latin-1"),
        "QUERY_STRING": "x=1&y=%2F&z=%E2%9C%93",
        "REQUEST_URI": "/caf%C3%A9/a%20b?x=1&y=%2F&z=%E2%9C%93",
    },
    "post-form": {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "9", "_body": b"a=1&b=two"},
    "post-chunked-client": {"CONTENT_LENGTH": "12", "_body": b"line1\nline2\n"},
    "repeated-headers": {"HTTP_X_MULTI": "a, b"},
    "head": {"REQUEST_METHOD": "HEAD", "PATH_INFO": "/head"},
    "host-and-port": {"SERVER_NAME": "example.test"},
    "large-header": {"PATH_INFO": "/big"},
    "post-binary-70k": {
        "CONTENT_LENGTH": "70000",
        "CONTENT_TYPE": "application/octet-stream",
        # the digest of the 70,000 random bytes the client sent, taken at capture time
        "_sha256": "1863ce1263cde55c6e20319346d284d0dc504d989c539f9187fb00524630ab8d",
    },
    "http10": {"SERVER_PROTOCOL": "HTTP/1.0", "PATH_INFO": "/old"},
}


def _decode(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    parsed = parse_packet(data, max_size=65535)
    assert parsed is not None, "packet incomplete"
    _, pairs, used = parsed
    return pairs, data[used:]


@pytest.mark.parametrize("name", CASES)
def test_packet_decodes_and_describes_its_request(name: str) -> None:
    data = _load(name)
    pairs, body = _decode(data)
    environ = environ_from_uwsgi(pairs)
    assert environ["HTTP_X_CASE"] == name
    assert int(environ.get("CONTENT_LENGTH") or 0) == len(body)
    for key, value in EXPECTED.get(name, {}).items():
        if key == "_body":
            assert body == value
        elif key == "_sha256":
            assert hashlib.sha256(body).hexdigest() == value
        else:
            assert environ[key] == value, key
    if name == "repeated-headers":
        assert environ["HTTP_COOKIE"].count("; ") >= 1
    if name == "large-header":
        assert max(len(v) for v in environ.values()) >= 3000
    if name == "post-binary-70k":
        assert len(body) == 70000
    # PEP 3333 has CONTENT_* without the HTTP_ prefix only
    assert "HTTP_CONTENT_LENGTH" not in environ and "HTTP_CONTENT_TYPE" not in environ


@pytest.mark.parametrize("name", CASES)
def test_default_buffer_size(name: str) -> None:
    """uWSGI's default buffer (4096) takes every captured packet, large-header included."""
    data = _load(name)
    datasize = int.from_bytes(data[1:3], "little")
    if datasize <= DEFAULT_BUFFER_SIZE:
        assert parse_packet(data) is not None
    else:
        with pytest.raises(UwsgiProtocolError):
            parse_packet(data)


@pytest.mark.parametrize("name", CASES)
def test_reencoding_gives_the_same_vars(name: str) -> None:
    pairs, _ = _decode(_load(name))
    again, _ = _decode(encode_packet(pairs))
    assert again == pairs


class _Heads:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.body = b""

    def request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def request_body(self, data: bytes) -> None:
        self.body += data

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        pass


# Keys that differ by nature between the two paths: nginx adds its own view of
# the connection and the document root; HTTP_TRANSFER_ENCODING is hop-by-hop
# (nginx has already de-chunked the body and sends a length instead).
_NOT_COMPARED = {"HTTP_TRANSFER_ENCODING"}


def _as_http(vars_: dict[str, str], pairs: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [f"{vars_['REQUEST_METHOD']} {vars_['REQUEST_URI']} {vars_['SERVER_PROTOCOL']}"]
    for key, value in pairs:
        name = key.decode("latin-1")
        if not name.startswith("HTTP_") or name in _NOT_COMPARED:
            continue
        if name in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
            continue
        lines.append(f"{name[5:].replace('_', '-').title()}: {value.decode('latin-1')}")
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if vars_.get(key):
            lines.append(f"{key.replace('_', '-').title()}: {vars_[key]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@pytest.mark.parametrize("name", CASES)
def test_same_environ_as_over_http(name: str) -> None:
    """The request nginx described, sent over HTTP instead, gives the app the same view."""
    pairs, body = _decode(_load(name))
    over_uwsgi = environ_from_uwsgi(pairs)
    raw = _as_http(over_uwsgi, pairs, body)
    sink = _Heads()
    RequestParser(sink).feed(raw)
    (head,) = sink.heads
    template = EnvironTemplate("ignored", "0")
    over_http = template.from_http(head, template.for_peer("127.0.0.1", "1"))
    compared = [
        key
        for key in set(over_uwsgi) | set(over_http)
        if (key.startswith("HTTP_") and key not in _NOT_COMPARED)
        or key
        in (
            "REQUEST_METHOD",
            "PATH_INFO",
            "QUERY_STRING",
            "CONTENT_TYPE",
            "CONTENT_LENGTH",
            "SERVER_PROTOCOL",
            "REQUEST_URI",
            "SCRIPT_NAME",
        )
    ]
    assert {k: over_uwsgi.get(k) for k in compared} == {k: over_http.get(k) for k in compared}
    assert sink.body == body
