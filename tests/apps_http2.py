"""A Flask app for the HTTP/2 tests: it echoes a request body's hash and size, says
which protocol and host it was told, streams large bodies (saying how far it got) and
small pieces, and waits for a sign before answering."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

app = Flask(__name__)

#: a 64 KiB block of a known pattern
BLOCK = bytes(range(256)) * 256


@app.route("/app/echo", methods=["POST", "PUT"])
@app.route("/raw/echo", methods=["POST", "PUT"])
def echo() -> Any:
    """The body's SHA-256 and size, as the app read it."""
    data = request.get_data()
    return jsonify(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


@app.route("/app/who")
def who() -> Any:
    """What the app learned of the request: protocol, host, cookies, scheme."""
    return jsonify(
        protocol=request.environ.get("SERVER_PROTOCOL"),
        host=request.host,
        cookie=request.headers.get("Cookie"),
        forwarded_proto=request.headers.get("X-Forwarded-Proto"),
    )


@app.route("/app/big/<int:size>")
def big(size: int) -> Response:
    """``size`` bytes of BLOCK repeated, streamed in 64 KiB pieces (no Content-Length);
    with ``?progress=PATH`` the bytes made so far are written to PATH after each piece."""
    progress = request.args.get("progress")

    def pieces() -> Iterator[bytes]:
        left = size
        made = 0
        while left > 0:
            piece = BLOCK[: min(left, len(BLOCK))]
            left -= len(piece)
            made += len(piece)
            if progress:
                with open(progress + ".part", "w") as handle:
                    handle.write(str(made))
                os.replace(progress + ".part", progress)
            yield piece

    return Response(pieces(), mimetype="application/octet-stream")


#: the text /app/tiny streams, in 40-byte pieces
TINY = b"".join(b"line %05d of a streamed text\n" % n for n in range(4000))


@app.route("/app/tiny")
def tiny() -> Response:
    """TINY in 40-byte pieces (no Content-Length): many pieces per read at the front."""
    return Response(
        (TINY[start : start + 40] for start in range(0, len(TINY), 40)), mimetype="text/plain"
    )


@app.route("/app/wait")
def wait() -> Any:
    """Answers once the file ``?sign=PATH`` exists (at most 20 s)."""
    sign = request.args.get("sign", "")
    deadline = time.monotonic() + 20
    while not os.path.exists(sign) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "waited\n"


#: how many scripts the browser's page loads (issue 18: a page with 30 assets)
ASSETS = 30


@app.route("/page")
def page() -> tuple[str, int, dict[str, str]]:
    """A page with ASSETS scripts (the front serves them from disk); the last inline
    script says how many of them ran."""
    scripts = "\n".join(f'<script src="/assets/a{i}.js"></script>' for i in range(ASSETS))
    html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>h2</title>'
        f"<script>window.ran = 0;</script>\n{scripts}\n</head><body>"
        '<p id="out">scripts did not run</p><script>'
        "document.getElementById('out').textContent = 'assets ran: ' + window.ran;"
        "</script></body></html>"
    )
    return html, 200, {"Content-Type": "text/html; charset=utf-8"}
