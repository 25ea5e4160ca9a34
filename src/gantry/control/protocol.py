"""The control socket's wire format and its command registry (no sockets here).

A request is one line of JSON, an object naming its ``command`` and carrying that
command's arguments: ``{"command": "purge", "url": "http://example.test/a"}``. The
answer is one line of JSON too: ``{"ok": true, ...}`` with the command's result, or
``{"ok": false, "error": "..."}``. A command is one function from its arguments to its
result, registered under its name; one that may take long (walks a cache on disk) is
registered ``off_loop`` and runs in a child of the master. Adding a command is one
function and one ``register`` call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "Arguments",
    "Command",
    "CommandError",
    "CommandRegistry",
    "REQUEST_LIMIT",
    "decode_answer",
    "encode_answer",
    "encode_request",
    "error_answer",
    "flag_argument",
    "text_argument",
]

#: bytes of one request at most, its newline included (a URL is at most a few KiB)
REQUEST_LIMIT: Final = 16 * 1024

#: a request's arguments (the JSON object, ``command`` left out)
Arguments = dict[str, Any]


class CommandError(Exception):
    """A request that cannot be carried out; the message is the answer's ``error``."""


@dataclass(frozen=True)
class Command:
    """One command: ``run(arguments)`` gives the answer's fields (or raises CommandError)."""

    name: str
    run: Callable[[Arguments], dict[str, Any]]
    #: run in a forked child of the master, never on its loop (it may take long)
    off_loop: bool = False


class CommandRegistry:
    """The commands a control socket answers, by name."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def register(
        self, name: str, run: Callable[[Arguments], dict[str, Any]], *, off_loop: bool = False
    ) -> None:
        """Answer ``name`` with ``run``; ``off_loop`` for work that may take long."""
        if name in self.commands:
            raise ValueError(f"command {name!r} is registered twice")
        self.commands[name] = Command(name, run, off_loop)

    def parse(self, request: bytes) -> tuple[Command, Arguments]:
        """The command a request line names and its arguments; CommandError when the line
        is too long, not JSON, not an object or names no known command."""
        line, newline, rest = request.partition(b"\n")
        if not newline:
            if len(request) >= REQUEST_LIMIT:
                raise CommandError(f"request too large: at most {REQUEST_LIMIT} bytes a line")
            raise CommandError("expected one JSON object on a line ending with a newline")
        if len(line) + 1 > REQUEST_LIMIT:
            raise CommandError(f"request too large: at most {REQUEST_LIMIT} bytes a line")
        if rest.strip():
            raise CommandError("expected one request a connection")
        try:
            document = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CommandError(f"the request is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise CommandError('expected a JSON object such as {"command": "status"}')
        name = document.pop("command", None)
        if not isinstance(name, str):
            raise CommandError('expected a "command" naming one of: ' + self.known())
        command = self.commands.get(name)
        if command is None:
            raise CommandError(f"no command {name!r} (known: {self.known()})")
        return command, document

    def known(self) -> str:
        """The registered names, for error messages."""
        return ", ".join(sorted(self.commands)) or "none"


def text_argument(arguments: Arguments, name: str, required: bool = False) -> str | None:
    """The string argument ``name``; None when absent (CommandError when ``required``)."""
    value = arguments.get(name)
    if value is None:
        if required:
            raise CommandError(f"expected the argument {name!r}")
        return None
    if not isinstance(value, str) or not value:
        raise CommandError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def flag_argument(arguments: Arguments, name: str) -> bool:
    """The boolean argument ``name`` (false when absent)."""
    value = arguments.get(name, False)
    if not isinstance(value, bool):
        raise CommandError(f"{name}: expected true or false, got {value!r}")
    return value


def encode_request(command: str, **arguments: Any) -> bytes:
    """A request line (arguments that are None are left out)."""
    document = {"command": command, **{k: v for k, v in arguments.items() if v is not None}}
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def encode_answer(fields: dict[str, Any]) -> bytes:
    """A successful answer line."""
    return json.dumps({"ok": True, **fields}, separators=(",", ":")).encode() + b"\n"


def error_answer(message: str) -> bytes:
    """A failed answer line."""
    return json.dumps({"ok": False, "error": message}, separators=(",", ":")).encode() + b"\n"


def decode_answer(data: bytes) -> dict[str, Any]:
    """An answer line as a dict with a boolean ``ok``; ValueError when it is not one."""
    document = json.loads(data.partition(b"\n")[0])
    if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
        raise ValueError("not an answer of the control socket")
    return document
