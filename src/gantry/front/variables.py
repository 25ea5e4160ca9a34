"""nginx's variables of one request ($host, $uri, $http_NAME, $1 ...), read from its
exchange, and the templates of return, rewrite and the header rules filled with them."""

from __future__ import annotations

import re
from typing import Final

from gantry.config.front_model import Template
from gantry.front.exchange import Exchange

__all__ = ["expand", "field_value", "host", "text", "variable"]

#: bytes that never go into a field value as they are (CR, LF, NUL and other controls:
#: a decoded $uri may hold them, and a field must not end early)
_CONTROLS: Final = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"
_ESCAPED: Final = {byte: b"%%%02X" % byte for byte in _CONTROLS}
_CONTROL: Final = re.compile(b"[" + re.escape(_CONTROLS) + b"]")


def text(data: bytes) -> str:
    """Bytes of the request as text that encodes back to the same bytes."""
    return data.decode("utf-8", "surrogateescape")


def field_value(value: str) -> bytes:
    """A value for a field: UTF-8 (the request's own bytes as they came), controls
    percent-escaped."""
    data = value.encode("utf-8", "surrogateescape")
    if _CONTROL.search(data) is not None:
        data = b"".join(_ESCAPED.get(byte, bytes((byte,))) for byte in data)
    return data


def _header(exchange: Exchange, name: bytes) -> bytes | None:
    for key, value in exchange.head.headers:
        if key.lower() == name:
            return value
    return None


def host(exchange: Exchange) -> str:
    """$host: the Host's name (lower case, no port), else the server's first name."""
    value = _header(exchange, b"host")
    if value:
        name = text(value).strip().lower()
        if name.startswith("["):
            return name.split("]", 1)[0] + "]"
        return name.rsplit(":", 1)[0] if ":" in name else name
    names = exchange.server.server_names
    return names[0] if names else ""


def _param(query: bytes, name: bytes, separator: bytes) -> str:
    for pair in query.split(separator):
        key, equals, value = pair.strip().partition(b"=")
        if equals and key == name:
            return text(value)
    return ""


def variable(name: str, exchange: Exchange, captures: tuple[str | None, ...] = ()) -> str:
    """The value of ``$name`` for this request ("" for a capture or field it lacks)."""
    head = exchange.head
    if name.isdigit():
        index = int(name)
        return (captures[index] or "") if index < len(captures) else ""
    if name == "host":
        return host(exchange)
    if name == "uri" or name == "document_uri":
        return exchange.path
    if name == "args" or name == "query_string":
        return text(head.query)
    if name == "is_args":
        return "?" if head.query else ""
    if name == "request_uri":
        original = exchange.original
        return text((original if original is not None else head).target)
    if name == "scheme":
        return "https" if exchange.https else "http"
    if name == "server_name":
        names = exchange.server.server_names
        return names[0] if names else ""
    if name == "server_port":
        return exchange.ports[1]
    if name == "remote_addr":
        return exchange.remote_addr
    if name == "request_method":
        return head.method
    if name.startswith("http_"):
        value = _header(exchange, name[5:].replace("_", "-").encode())
        return text(value) if value is not None else ""
    if name.startswith("cookie_"):
        cookie = _header(exchange, b"cookie")
        return _param(cookie, name[7:].encode(), b";") if cookie else ""
    if name.startswith("arg_"):
        return _param(head.query, name[4:].encode(), b"&")
    return ""  # the schema lets no other name through


def expand(template: Template, exchange: Exchange, captures: tuple[str | None, ...] = ()) -> str:
    """``template`` with each variable replaced by its value for this request."""
    parts = template.parts
    if len(parts) <= 1:
        return template.text
    out = [parts[0]]
    for at in range(1, len(parts), 2):
        out.append(variable(parts[at], exchange, captures))
        out.append(parts[at + 1])
    return "".join(out)
