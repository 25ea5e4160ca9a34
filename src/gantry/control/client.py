"""``gantry ctl``'s side of the control socket: find it, send one request, read the answer."""

from __future__ import annotations

import socket
import time
from typing import Any, Final

from gantry.config import ConfigError
from gantry.config.document import read_document
from gantry.config.front import ControlPath
from gantry.control.protocol import decode_answer

__all__ = ["ControlUnavailable", "ask", "socket_in_config"]

#: bytes of answer read at most (a status of many workers and zones is a few KiB)
ANSWER_LIMIT: Final = 4 * 1024 * 1024


class ControlUnavailable(Exception):
    """No answer could be had: no socket, nobody on it, no answer in time, not an answer."""


def socket_in_config(path: str) -> str:
    """The control socket a gantry.toml names: [stack] control, else [front] control."""
    from pydantic import TypeAdapter, ValidationError

    document = read_document(path)
    for table in ("stack", "front"):
        section = document.get(table)
        value = section.get("control") if isinstance(section, dict) else None
        if value is None:
            continue
        try:
            return str(TypeAdapter(ControlPath).validate_python(value, strict=True))
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{path}: {table}.control: {reason}") from None
    raise ConfigError(
        f"{path}: front.control: not set, so the front has no control socket: set [front] "
        'control = "/run/gantry/front.ctl" (or [stack] control for gantry up) and restart it'
    )


def ask(path: str, request: bytes, timeout: float) -> dict[str, Any]:
    """Send ``request`` (one line) to the control socket at ``path``; its answer."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlUnavailable(
                f"no control socket at {path}: is the front running with this control?"
            ) from None
        except ConnectionRefusedError:
            raise ControlUnavailable(
                f"nothing answers on {path}: the front that made it is not running"
            ) from None
        except OSError as exc:
            raise ControlUnavailable(f"cannot connect to {path}: {exc.strerror}") from None
        data = b""
        try:
            sock.sendall(request)
            while b"\n" not in data and len(data) < ANSWER_LIMIT:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        except TimeoutError:
            raise ControlUnavailable(f"no answer from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlUnavailable(f"the connection to {path} failed: {exc.strerror}") from None
    if not data:
        raise ControlUnavailable(
            f"{path} closed the connection without an answer (too many clients at once?)"
        )
    try:
        return decode_answer(data)
    except ValueError:
        shown = data[:200].decode("utf-8", "replace")
        raise ControlUnavailable(f"{path} did not answer as a control socket: {shown!r}") from None
