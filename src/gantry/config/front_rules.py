"""The front's rewrite and header keys: ``return``, ``rewrite``, ``add_header``,
``proxy_set_header`` and ``proxy_hide_header``, checked and compiled once, at load.

Values may hold nginx variables ($host, $uri, $http_NAME, $1 ...); a name the front
does not know is a config error here, never a surprise on a request.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

from gantry.config.front_model import HeaderRule, ReturnRule, RewriteRule, RewriteRules, Template

__all__ = [
    "AddHeaderValue",
    "AddHeaders",
    "HideHeaders",
    "Rewrites",
    "ReturnValue",
    "SetHeaders",
    "VARIABLES",
    "compile_return",
    "compile_rewrites",
    "header_rules",
    "merge_headers",
    "set_header_rules",
    "template",
]

#: the variables a value may use besides $http_NAME, $cookie_NAME, $arg_NAME and $0-$9
VARIABLES: Final = frozenset(
    {"host", "request_uri", "uri", "document_uri", "args", "query_string", "is_args",
     "scheme", "server_name", "server_port", "remote_addr", "request_method"}
)  # fmt: skip
_PREFIXES: Final = ("http_", "cookie_", "arg_")
# nginx's forms: ${name}, $1 (one digit: "$1x" is capture 1 then "x"), $name
_VARIABLE: Final = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([0-9])|([A-Za-z_][A-Za-z0-9_]*))")
#: what nginx's return sends a URL with (the others take a body text)
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FLAGS: Final = ("last", "break", "redirect", "permanent")


def template(text: str) -> Template:
    """``text`` split into literal runs and variable names; ValueError naming an unknown
    variable or a "$" that starts none."""
    parts: list[str] = []
    at = 0
    for match in _VARIABLE.finditer(text):
        name = match.group(1) or match.group(2) or match.group(3)
        known = name in VARIABLES or name.isdigit() or name.startswith(_PREFIXES)
        if not known or (name.startswith(_PREFIXES) and name.endswith("_")):
            raise ValueError(f"unknown variable '${name}' in {text!r}")
        parts += [text[at : match.start()], name.lower()]
        at = match.end()
    parts.append(text[at:])
    if "$" in "".join(parts[::2]):
        raise ValueError(f"a '$' that starts no variable name in {text!r}")
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"expected no CR, LF or NUL in {text!r}")
    return Template(text, tuple(parts))


def compile_return(text: str) -> ReturnRule:
    """nginx's ``return``: "CODE", "CODE URL" (301, 302, 303, 307, 308), "CODE text" (the
    others) or "URL" alone (302; it starts with http://, https:// or $scheme)."""
    value = text.strip()
    code, _, rest = value.partition(" ")
    if not code.isdigit():
        if value.startswith(("http://", "https://", "$scheme")):
            return ReturnRule(302, template(value))
        raise ValueError(
            "expected 'CODE', 'CODE URL', 'CODE text' or a URL starting with http://, "
            f"https:// or $scheme, got {text!r}"
        )
    status = int(code)
    if not 200 <= status <= 599:
        raise ValueError(f"expected a status from 200 to 599, got {code!r}")
    rest = rest.strip()
    if len(rest) >= 2 and rest[0] == rest[-1] == '"':
        rest = rest[1:-1]  # nginx's quoting of a text with spaces
    if not rest:
        return ReturnRule(status, None)
    return ReturnRule(status, template(rest))


def _return_check(text: str | None) -> str | None:
    if text is not None:
        compile_return(text)
    return text


def _rewrite(rule: list[str]) -> RewriteRule:
    if len(rule) not in (2, 3):
        raise ValueError(
            f"expected [regex, replacement] or [regex, replacement, flag], got {rule!r}"
        )
    flag = rule[2] if len(rule) == 3 else ""
    if len(rule) == 3 and flag not in _FLAGS:
        raise ValueError(f"expected a flag among {', '.join(_FLAGS)}, got {flag!r}")
    try:
        pattern = re.compile(rule[0])
    except re.error as exc:
        raise ValueError(f"bad regular expression {rule[0]!r}: {exc}") from None
    replacement = rule[1]
    keep_args = not replacement.endswith("?")
    if not keep_args:
        replacement = replacement[:-1]
    absolute = replacement.startswith(("http://", "https://", "$scheme"))
    return RewriteRule(pattern, template(replacement), flag, absolute, keep_args)


def compile_rewrites(rules: list[list[str]], return_: str | None) -> RewriteRules:
    """The rewrites of a block, in order, and its return."""
    return RewriteRules(
        tuple(_rewrite(rule) for rule in rules),
        compile_return(return_) if return_ is not None else None,
    )


def _rewrites_check(rules: list[list[str]]) -> list[list[str]]:
    for rule in rules:
        _rewrite(rule)
    return rules


class AddHeaderValue(BaseModel):
    """An add_header value with its option: ``{ value = "...", always = true }``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    value: str = Field(description="The field's value (nginx variables allowed).")
    always: bool = Field(False, description="Added to every response, errors too.")


def _name(name: str) -> None:
    if not _TOKEN.match(name):
        raise ValueError(f"expected a header field name, got {name!r}")


def _add_check(fields: dict[str, str | AddHeaderValue]) -> dict[str, str | AddHeaderValue]:
    for name, value in fields.items():
        _name(name)
        template(value if isinstance(value, str) else value.value)
    return fields


def _set_check(fields: dict[str, str]) -> dict[str, str]:
    for name, value in fields.items():
        _name(name)
        template(value)
    return fields


def _hide_check(names: list[str]) -> list[str]:
    for name in names:
        _name(name)
    return names


def _value_kind(value: object) -> str:
    return "AddHeaderValue" if isinstance(value, dict | AddHeaderValue) else "str"


#: an add_header value: a string, or a table with `always` (a table's errors are its own,
#: not also "expected a string")
_AddHeader = Annotated[
    Annotated[str, Tag("str")] | Annotated[AddHeaderValue, Tag("AddHeaderValue")],
    Discriminator(_value_kind),
]

#: the TOML types of the keys
ReturnValue = Annotated[str | None, AfterValidator(_return_check)]
Rewrites = Annotated[list[list[str]], AfterValidator(_rewrites_check)]
AddHeaders = Annotated[dict[str, _AddHeader], AfterValidator(_add_check)]
SetHeaders = Annotated[dict[str, str], AfterValidator(_set_check)]
HideHeaders = Annotated[list[str], AfterValidator(_hide_check)]


_Value = TypeVar("_Value")


def merge_headers(server: dict[str, _Value], location: dict[str, _Value]) -> dict[str, _Value]:
    """The server's fields and the location's, the location's winning on the same name
    (field names compare without case). Unlike nginx, a location that names one field
    keeps the server's others."""
    merged = {name.lower(): (name, value) for name, value in server.items()}
    merged.update({name.lower(): (name, value) for name, value in location.items()})
    return dict(merged.values())


def header_rules(fields: dict[str, str | AddHeaderValue]) -> tuple[HeaderRule, ...]:
    """add_header's fields, compiled; an empty value adds nothing (as nginx's)."""
    rules = []
    for name, value in fields.items():
        text, always = (value, False) if isinstance(value, str) else (value.value, value.always)
        compiled = template(text)
        # a constant value's line is built once (the common case: X-Frame-Options DENY)
        line = f"{name}: {text}\r\n".encode() if compiled.constant and text else b""
        rules.append(HeaderRule(name, compiled, always, line))
    return tuple(rules)


def set_header_rules(fields: dict[str, str]) -> tuple[tuple[str, Template], ...]:
    """proxy_set_header's fields, compiled (an empty value removes the field)."""
    return tuple((name, template(value)) for name, value in fields.items())
