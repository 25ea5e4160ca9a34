"""The header rules of the front: ``add_header`` on responses, ``proxy_set_header`` on
requests to the upstream (``proxy_hide_header`` is applied where the proxy passes the
upstream's fields on). Values are filled with the request's nginx variables."""

from __future__ import annotations

from typing import Final

from gantry.config.front_model import HeaderRule
from gantry.front.exchange import Exchange
from gantry.front.variables import expand, field_value

__all__ = ["ADDED_FOR", "added_fields", "proxy_fields"]

#: the statuses add_header adds its fields to without ``always`` (nginx's list)
ADDED_FOR: Final = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


def added_fields(rules: tuple[HeaderRule, ...], status: int, exchange: Exchange) -> bytes:
    """The add_header lines (each ending in CRLF) of a response of ``status``; a field
    whose value comes out empty is not added, as nginx does."""
    plain = status in ADDED_FOR
    lines = []
    for rule in rules:
        if plain or rule.always:
            if rule.line:
                lines.append(rule.line)
                continue
            value = expand(rule.value, exchange)
            if value:
                lines.append(rule.name.encode("ascii") + b": " + field_value(value) + b"\r\n")
    return b"".join(lines)


def proxy_fields(exchange: Exchange) -> list[tuple[bytes, bytes]] | None:
    """proxy_set_header's fields for this request's upstream request, (name, value) with
    an empty value for a field to remove; None when the location sets none."""
    location = exchange.location
    if location is None or not location.proxy_set_header:
        return None
    return [
        (name.encode("ascii"), field_value(expand(value, exchange)))
        for name, value in location.proxy_set_header
    ]
