"""An app that says what request reached it (for rewrites and proxy_set_header), and
sends fields a front may hide or add to."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Every path: JSON of PATH_INFO, QUERY_STRING, REQUEST_URI and the HTTP_* fields;
    with X-Powered-By and X-Kept fields; ?status=NNN answers that status, ?stream=1
    streams the body without a Content-Length."""
    seen = {
        key: value
        for key, value in environ.items()
        if key in ("PATH_INFO", "QUERY_STRING", "REQUEST_URI") or key.startswith("HTTP_")
    }
    body = json.dumps(seen, sort_keys=True).encode()
    status = environ.get("QUERY_STRING", "").partition("status=")[2][:3] or "200"
    fields = [("Content-Type", "application/json"), ("X-Powered-By", "apps_rewrite")]
    fields.append(("X-Kept", "yes"))
    if "stream=1" in environ.get("QUERY_STRING", ""):
        # no length: the response streams (chunked), past the proxy's whole-response path
        start_response(f"{status} Whatever", fields)
        return iter([body[:5], body[5:]])
    start_response(f"{status} Whatever", [*fields, ("Content-Length", str(len(body)))])
    return [body]
