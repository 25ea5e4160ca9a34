"""A Flask app for the interop tests (the real Flask, wrapped in wsgiref's validator)."""

from __future__ import annotations

import os
import tempfile
from wsgiref.validate import validator

from flask import Flask, Response, jsonify, request, send_file

from tests.e2e.payloads import FILE_BYTES, STREAM_CHUNKS, echo_payload, hash_body

flask_app = Flask(__name__)
_FILE = os.path.join(tempfile.gettempdir(), f"gantry-e2e-flask-{os.getpid()}.bin")


@flask_app.route("/hello")
def hello() -> str:
    """The classic greeting."""
    return "Hello World!"


@flask_app.route("/echo/", defaults={"rest": ""}, methods=["GET", "POST", "PUT"])
@flask_app.route("/echo/<path:rest>", methods=["GET", "POST", "PUT"])
def echo(rest: str) -> Response:
    """What the app saw of the request, with a hash of the body it read."""
    sha256, size = hash_body(request.environ["wsgi.input"].read)
    payload = echo_payload(request.environ, sha256, size)
    payload["route_rest"] = rest
    return jsonify(payload)


@flask_app.route("/stream")
def stream() -> Response:
    """A streamed response of several chunks, no Content-Length."""
    return Response((chunk for chunk in STREAM_CHUNKS), mimetype="text/plain")


@flask_app.route("/file")
def file() -> Response:
    """A file sent with send_file (wsgi.file_wrapper underneath)."""
    if not os.path.exists(_FILE):
        with open(_FILE, "wb") as handle:
            handle.write(FILE_BYTES)
    return send_file(_FILE, mimetype="application/octet-stream")


@flask_app.route("/error")
def error() -> str:
    """Fails on purpose."""
    raise RuntimeError("flask view failed on purpose: E2E-TRACEBACK-MARKER")


app = validator(flask_app)
