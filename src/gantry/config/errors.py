"""The one error format of every table: the file, the key path, what was expected.

Pydantic's errors carry a location (``("server", 0, "location", 1, "proxy")``); this
module follows it through the schema (tables, arrays of tables, tables by name) to
write ``front.server[0].location[1].proxy`` and say what a key takes, in words.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, ValidationError

from gantry.config.units import Unit

__all__ = ["error_lines", "show", "suggest"]


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unwrap(annotation: object, metadata: list[Any]) -> tuple[object, list[Any]]:
    """The annotation without Annotated[...] and Optional, and the metadata gathered."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = typing.get_args(annotation)
            metadata = [*metadata, *extra]
        elif origin in (types.UnionType, typing.Union):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, metadata


def _expected(annotation: object, metadata: list[Any]) -> str:
    """What a value of this annotated type looks like, in words ("an integer >= 1")."""
    annotation, metadata = _unwrap(annotation, metadata)
    origin = typing.get_origin(annotation)
    if origin is list:
        item = _expected(typing.get_args(annotation)[0], [])
        return "a list of " + item.removeprefix("a ").removeprefix("an ") + "s"
    if origin is dict:
        return "a table"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a table"
    unit = next((m for m in metadata if isinstance(m, Unit)), None)
    if unit is not None:
        noun = f"a {unit.kind}"
    else:
        noun = {int: "an integer", float: "a number"}.get(annotation)  # type: ignore[call-overload]
    if noun is None:
        return "a value"
    low = next((m for m in metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m for m in metadata if isinstance(m, annotated_types.Le)), None)
    above = next((m for m in metadata if isinstance(m, annotated_types.Gt)), None)
    if low is not None and high is not None:
        return f"{noun} from {_number(low.ge)} to {_number(high.le)}"
    if low is not None:
        return f"{noun} >= {_number(low.ge)}"
    if above is not None:
        return f"{noun} > {_number(above.gt)}"
    return str(noun)


def show(value: object, converted: bool = False) -> str:
    """A value as the user wrote it, cut short."""
    # a time arrives here converted to seconds: -1.0 for the "-1" the user wrote
    text = _number(value) if converted and isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, candidates: list[str], cutoff: float = 0.6) -> str:
    """The hint "; did you mean 'x'?" for the candidate closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclasses.dataclass
class _KeyPath:
    """Where a pydantic error location points in the schema."""

    path: str
    annotation: object
    metadata: list[Any]
    name: str  # the last key, "" for the table itself
    siblings: list[str]  # the keys of the table the last key is in


def _walk(loc: tuple[int | str, ...], root: str, root_model: type[BaseModel]) -> _KeyPath:
    """Follow ``loc`` through the schema: tables, arrays and tables by name."""
    at = _KeyPath(root, root_model, [], "", [])
    for part in loc:
        annotation, _ = _unwrap(at.annotation, [])
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if isinstance(part, int):
            at.path += f"[{part}]"
            at.annotation, at.metadata = (args[0] if origin is list and args else None), []
            continue
        if origin in (types.UnionType, typing.Union):
            # pydantic names the member of a union it tried; the key path does not
            members = [_unwrap(member, [])[0] for member in args]
            chosen = next((m for m in members if getattr(m, "__name__", None) == part), None)
            if chosen is not None:
                at.annotation, at.metadata = chosen, []
                continue
        at.path += f".{part}" if at.path else str(part)
        if origin is dict and len(args) == 2:
            at.annotation, at.metadata = args[1], []  # a table by name: the key is a name
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            at.name = part
            fields = annotation.model_fields
            at.siblings = [f.alias or n for n, f in fields.items()]
            field = fields.get(part) or next(
                (f for f in fields.values() if f.alias == part), None
            )  # a key spelled as its alias ("return" for return_)
            at.annotation = field.annotation if field else None
            at.metadata = list(field.metadata) if field else []
        else:
            at.annotation, at.metadata = None, []
    return at


def error_lines(
    exc: ValidationError,
    where: Callable[[tuple[int | str, ...], str], str],
    root: str,
    root_model: type[BaseModel],
) -> str:
    """One line per pydantic error: ``where(loc, key path)``, then what was expected.

    ``root`` is the key path of the validated table and ``root_model`` its model.
    """
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        at = _walk(loc, root, root_model)
        prefix = where(loc, at.path)
        if error["type"] == "extra_forbidden":
            lines.append(f"{prefix}: unknown key{suggest(at.name, at.siblings)}")
        elif error["type"] == "value_error":
            lines.append(f"{prefix}: {error['ctx']['error']}")
        elif error["type"] == "missing":
            lines.append(f"{prefix}: required, expected {_expected(at.annotation, at.metadata)}")
        else:
            expected = _expected(at.annotation, at.metadata)
            converted = any(isinstance(m, Unit) for m in at.metadata)
            lines.append(f"{prefix}: expected {expected}, got {show(error['input'], converted)}")
    return "\n".join(lines)
