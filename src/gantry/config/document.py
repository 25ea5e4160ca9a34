"""The one TOML reader and the one TOML writer of Gantry's configuration files.

Reading names the file in every error (unreadable, not UTF-8, or a TOML syntax error
with its line, column and the line itself); writing uses tomli-w, so what
``gantry check`` prints loads back.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import tomli_w

from gantry.config.serve import ConfigError

__all__ = ["dumps_document", "loads_document", "read_config_text", "read_document"]


def read_config_text(path: str) -> str:
    """A configuration file's text; ConfigError naming the file if it cannot be read."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: expected UTF-8 text, got byte {data[exc.start]:#x} at offset {exc.start}"
        ) from None


_TOML_WHERE = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def syntax_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """The ConfigError for a TOML syntax error: file, line, column, and the line itself."""
    match = _TOML_WHERE.match(str(exc))
    if match is None:
        if str(exc).endswith(" (at end of document)"):
            # an unclosed array or string: the file ends before the value does
            message = str(exc).removesuffix(" (at end of document)")
            return ConfigError(f"{source}: at the end of the file: invalid TOML: {message}")
        return ConfigError(f"{source}: invalid TOML: {exc}")
    line = int(match["line"])
    lines = text.splitlines()
    shown = f"\n    {lines[line - 1]}" if 0 < line <= len(lines) else ""
    return ConfigError(
        f"{source}: line {line}, column {match['col']}: invalid TOML: {match['msg']}{shown}"
    )


def loads_document(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error names ``source``, the line and the column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(source, text, exc) from None


def read_document(path: str) -> dict[str, Any]:
    """Read and parse a TOML file."""
    return loads_document(read_config_text(path), path)


def _without_none(value: Any) -> Any:
    # TOML has no null: an unset key is left out
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def dumps_document(document: dict[str, Any]) -> str:
    """TOML text for a document; keys whose value is None are left out."""
    return tomli_w.dumps(_without_none(document))
