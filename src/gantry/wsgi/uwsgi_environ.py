"""The CGI part of a PEP 3333 environ from uwsgi vars, matching what the HTTP side builds."""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

__all__ = ["environ_from_fields", "environ_from_uwsgi"]

# What gantry's front always sends; a packet without them takes the full path.
_REQUIRED: Final = frozenset(
    {"REQUEST_METHOD", "QUERY_STRING", "PATH_INFO", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT",
     "SERVER_PROTOCOL"}
)  # fmt: skip


def environ_from_uwsgi(pairs: list[tuple[bytes, bytes]], mount_prefix: str = "") -> dict[str, str]:
    """Vars as latin-1 strings; repeated vars joined like headers (", ", "; " for Cookie).

    No ``wsgi.*`` keys: the server adds those. The scheme the front saw is left
    under ``UWSGI_SCHEME`` (sent by the peer, or derived from ``HTTPS``).
    """
    environ: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        key = raw_key.decode("latin-1")
        value = raw_value.decode("latin-1")
        previous = environ.get(key)
        if previous is not None and key.startswith("HTTP_"):
            value = previous + ("; " if key == "HTTP_COOKIE" else ", ") + value
        environ[key] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key) == "":
            # nginx sends these empty when the request had none.
            del environ[key]
        # nginx also passes the client's own header as HTTP_CONTENT_*: PEP 3333
        # has these only without the prefix (as the HTTP side builds them).
        environ.pop("HTTP_" + key, None)
    environ.setdefault("REQUEST_METHOD", "GET")
    environ.setdefault("QUERY_STRING", "")
    environ.setdefault("SERVER_NAME", "localhost")
    environ.setdefault("SERVER_PORT", "80")
    environ.setdefault("SERVER_PROTOCOL", "HTTP/1.1")
    if "PATH_INFO" not in environ:
        uri = environ.get("REQUEST_URI", "/").encode("latin-1")
        path = uri.split(b"?", 1)[0]
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
    script_name = environ.get("SCRIPT_NAME", "")
    path_info = environ["PATH_INFO"]
    if script_name and path_info.startswith(script_name):
        rest = path_info[len(script_name) :]
        if not rest or rest[0] == "/":
            path_info = rest
    prefix = mount_prefix.rstrip("/")
    if prefix and not script_name and path_info.startswith(prefix):
        rest = path_info[len(prefix) :]
        if not rest or rest[0] == "/":
            script_name, path_info = prefix, rest
    environ["SCRIPT_NAME"] = script_name
    environ["PATH_INFO"] = path_info
    if "UWSGI_SCHEME" not in environ and environ.get("HTTPS", "").lower() in ("on", "1"):
        environ["UWSGI_SCHEME"] = "https"
    return environ


def environ_from_fields(fields: list[str], mount_prefix: str = "") -> dict[str, str]:
    """The same from gantry's own packet: ``fields`` are key, value, key, value, ...

    The front sends every var a request needs once and no empty CONTENT_*: that is
    one dict() away from the environ. Anything else (a repeated field, a missing
    var, a mount prefix to apply) goes through :func:`environ_from_uwsgi`.
    """
    pairs = iter(fields)
    environ = dict(zip(pairs, pairs, strict=False))
    if len(environ) * 2 == len(fields) and not mount_prefix and _REQUIRED <= environ.keys():
        environ.pop("HTTP_CONTENT_TYPE", None)
        environ.pop("HTTP_CONTENT_LENGTH", None)
        if environ.get("CONTENT_LENGTH") == "":
            del environ["CONTENT_LENGTH"]
        if environ.get("CONTENT_TYPE") == "":
            del environ["CONTENT_TYPE"]
        return environ
    encoded = [field.encode("latin-1") for field in fields]
    return environ_from_uwsgi(list(zip(encoded[::2], encoded[1::2], strict=True)), mount_prefix)
