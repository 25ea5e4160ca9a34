"""WSGI apps exercising the server side of PEP 3333; each is wrapped in wsgiref's validator.

Events (``close`` called, requests seen) go to the file named by
GANTRY_CONTRACT_EVENTS so that the test process can read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

EVENTS_ENV = "GANTRY_CONTRACT_EVENTS"
FILE_SIZE = 300_000
_FILE = os.path.join(tempfile.gettempdir(), f"gantry-contract-{os.getpid()}.bin")

StartResponse = Callable[..., Any]


def record(event: str) -> None:
    """Append one event line for the test to read."""
    path = os.environ.get(EVENTS_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, event.encode() + b"\n")
        finally:
            os.close(fd)


class Closing:
    """A result iterable that records its close()."""

    def __init__(self, name: str, chunks: Iterable[bytes], fail_at: int | None = None) -> None:
        self.name = name
        self.chunks = chunks
        self.fail_at = fail_at

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("failing mid-stream on purpose")
            yield chunk

    def close(self) -> None:
        record(f"closed {self.name}")


def _file_bytes() -> bytes:
    return bytes(range(256)) * (FILE_SIZE // 256) + bytes(FILE_SIZE % 256)


def _ensure_file() -> str:
    if not os.path.exists(_FILE) or os.path.getsize(_FILE) != FILE_SIZE:
        with open(_FILE, "wb") as handle:
            handle.write(_file_bytes())
    return _FILE


def _app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    text = [("Content-Type", "text/plain")]
    if path == "/hello":
        start_response("200 OK", [*text, ("Content-Length", "12")])
        return [b"Hello World!"]
    if path == "/stream":
        start_response("200 OK", text)
        return Closing("stream", (b"part%d;" % i for i in range(5)))
    if path == "/own-headers":  # fields a proxy hides (Server, Date) or passes on
        fields = [("Server", "app/1"), ("Date", "then"), ("X-Kept", "yes"), ("X-Kept", "twice")]
        start_response("200 OK", [*text, *fields, ("Content-Length", "4")])
        return [b"mine"]
    if path == "/not-modified":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return []
    if path == "/big-stream":
        # 200 MiB, far more than any buffer: only back-pressure keeps memory flat.
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        block = b"x" * 65536
        return Closing("big-stream", (block for _ in range(3200)))
    if path == "/fail-mid-stream":
        start_response("200 OK", text)
        return Closing("fail-mid-stream", (b"a" * 100 for _ in range(10)), fail_at=2)
    if path == "/fail-before-body":
        try:
            raise ValueError("before the body")
        except ValueError:
            start_response("200 OK", text)
            start_response("503 Service Unavailable", text, sys.exc_info())
            return [b"recovered"]
    if path == "/write":
        write = start_response("200 OK", text)
        write(b"written;")
        write(b"then;")
        return Closing("write", [b"returned"])
    if path == "/too-long":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"12345", b"67890"]
    if path == "/too-short":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"12345"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(_ensure_file(), "rb"))  # noqa: SIM115
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        start_response("200 OK", text)
        return [b"slow done"]
    if path == "/environ":
        keys = ("REMOTE_ADDR", "wsgi.url_scheme", "SERVER_NAME", "PATH_INFO", "SCRIPT_NAME")
        body = json.dumps({key: environ.get(key) for key in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/cgi":  # every CGI var the server gave, as JSON
        cgi = {key: value for key, value in environ.items() if isinstance(value, str)}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(cgi, sort_keys=True).encode()]
    if path == "/raise":
        raise RuntimeError("the app failed on purpose: SECRET-TRACEBACK-MARKER")
    if path == "/echo":
        stream = environ["wsgi.input"]
        body = b""
        while True:
            piece = stream.read(65536)
            if not piece:
                break
            body += piece
        # the digest lets a test compare the bytes that arrived with the bytes it sent
        digest = ("X-Body-SHA256", hashlib.sha256(body).hexdigest())
        start_response("200 OK", [*text, digest])
        return [b"%d:%s" % (len(body), environ.get("CONTENT_LENGTH", "-").encode())]
    start_response("404 Not Found", text)
    return [b"not found"]


app = validator(_app)


def raw_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Without the validator: lets the server see its own wsgi.file_wrapper (sendfile path)."""
    return _app(environ, start_response)


def bad_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Breaks the contract in ways the server must survive (not validated, on purpose)."""
    path = environ["PATH_INFO"]
    if path == "/no-start":
        return [b"never started"]
    if path == "/str-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["not bytes"]  # type: ignore[list-item]
    if path == "/header-injection":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: stolen=1")])
        return [b"x"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
