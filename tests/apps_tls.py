"""A Flask app whose links are absolute (``url_for(_external=True)``), to show which scheme
the app learned from the front (over uwsgi: HTTPS=on, REQUEST_SCHEME)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.route("/link")
def link() -> Any:
    """An absolute link to this page, and the scheme the app was told."""
    return jsonify(
        link=url_for("link", _external=True),
        url_scheme=request.environ.get("wsgi.url_scheme"),
        https=request.environ.get("HTTPS"),
    )
