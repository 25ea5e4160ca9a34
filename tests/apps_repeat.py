"""A backend for tests/test_proxy_repeat_memos.py: ``/body?claim=N&send=M`` answers with a
Content-Length of N and M bytes of body ("x" each), so that responses share one head
byte for byte (the same N), or share it and carry more or fewer bytes than it says."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/body?claim=N&send=M`` (see the module's docstring); anything else: 404."""
    if environ["PATH_INFO"] != "/body":
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    claim = int(query["claim"][0])
    send = int(query.get("send", [str(claim)])[0])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(claim))])
    return [b"x" * send]
