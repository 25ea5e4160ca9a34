"""A Flask app mounted under a prefix by the front server (its ``script_name``).

Its links come from ``url_for``, so they show whether the app learned its mount
point: from SCRIPT_NAME over uwsgi, or from the ``X-Script-Name`` header over HTTP
(read by the small middleware below, as apps behind nginx usually do).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request, url_for

flask_app = Flask(__name__)


@flask_app.route("/")
def index() -> Any:
    """Links built by url_for, and what the app saw of its path."""
    return jsonify(
        link=url_for("page", name="first"),
        script_name=request.environ.get("SCRIPT_NAME"),
        path_info=request.environ.get("PATH_INFO"),
    )


@flask_app.route("/page/<name>")
def page(name: str) -> Any:
    """A page with a link back to the index."""
    return jsonify(
        name=name,
        back=url_for("index"),
        script_name=request.environ.get("SCRIPT_NAME"),
        path_info=request.environ.get("PATH_INFO"),
        x_script_name=request.headers.get("X-Script-Name"),
        path_sent=request.environ.get("mounted.path_sent"),
    )


def app(environ: dict[str, Any], start_response: Any) -> Any:
    """The Flask app; an X-Script-Name header (HTTP upstreams) sets SCRIPT_NAME."""
    environ["mounted.path_sent"] = environ.get("PATH_INFO")
    prefix = environ.get("HTTP_X_SCRIPT_NAME", "")
    if prefix and environ.get("PATH_INFO", "").startswith(prefix):
        environ["SCRIPT_NAME"] = prefix
        environ["PATH_INFO"] = environ["PATH_INFO"][len(prefix) :]
    return flask_app(environ, start_response)
