"""The control socket a master answers from its loop (``[front] control``).

Connections are served by ``process/answers.py`` (non-blocking, a deadline each, a
bound on how many are open); a request line is parsed and its command run: on the
loop when it is quick, in a forked child (``process/offload.py``) when it may take
long, so the loop goes on reaping and respawning workers meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Final

from gantry.config import ListenAddress
from gantry.control.protocol import (
    REQUEST_LIMIT,
    Arguments,
    Command,
    CommandError,
    CommandRegistry,
    encode_answer,
    error_answer,
)
from gantry.process.answers import AnswerServer
from gantry.process.loop import ProcessLoop
from gantry.process.offload import ChildWork
from gantry.process.sockets import address_key, bind

__all__ = ["ControlServer", "bind_control"]

log = logging.getLogger("gantry.control")

#: seconds a client has from its connection to the end of its request line
READ_TIMEOUT: Final = 5.0
#: seconds a command run off the loop may take before its child is killed
COMMAND_TIMEOUT: Final = 120.0
#: commands running off the loop at once (each is a process); more are refused
MAX_RUNNING: Final = 4
#: who may connect: the socket's owner (the master's user) alone
SOCKET_MODE: Final = 0o600


def bind_control(path: str, passed: dict[object, socket.socket]) -> tuple[socket.socket, bool]:
    """The listening control socket at ``path``: the one in ``passed`` (handed down by
    ``gantry up``, which owns its file) or a new one (a stale file replaced); and whether
    the file is this process's to remove at exit."""
    address = ListenAddress("control", path=path)
    inherited = passed.pop(address_key(address), None)
    if inherited is not None:
        inherited.setblocking(False)
        return inherited, False
    return bind(address, SOCKET_MODE, 64), True  # ConfigError when its folder is missing


class ControlServer:
    """Answers the requests of ``gantry ctl`` on ``listener`` with ``commands``.

    ``prepare_child`` runs first in the child of an off-loop command (it drops to the
    workers' user, so files it writes are theirs). ``path``: the socket file to remove
    at ``close`` (if it is still the one this server bound).
    """

    def __init__(
        self,
        loop: ProcessLoop,
        listener: socket.socket,
        commands: CommandRegistry,
        *,
        prepare_child: Callable[[], None] = lambda: None,
        path: str | None = None,
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.commands = commands
        self.prepare_child = prepare_child
        self.running: set[ChildWork] = set()
        self.path = path
        self.inode = 0
        if path is not None:
            with contextlib.suppress(OSError):
                self.inode = os.stat(path).st_ino
        self.answers = AnswerServer(
            loop,
            listener,
            self._respond,
            reads_request=True,
            terminator=b"\n",
            request_limit=REQUEST_LIMIT,
            deadline=READ_TIMEOUT,
            answer_timeout=COMMAND_TIMEOUT + 5.0,
            name="control",
        )

    def _respond(self, request: bytes, deliver: Callable[[bytes], None]) -> None:
        try:
            command, arguments = self.commands.parse(request)
        except CommandError as exc:
            deliver(error_answer(str(exc)))
            return
        if not command.off_loop:
            deliver(run_command(command, arguments))
            return
        if len(self.running) >= MAX_RUNNING:
            deliver(error_answer(f"busy: {MAX_RUNNING} commands under way; try again"))
            return

        def finished(answer: bytes) -> None:
            self.running.discard(work)
            deliver(answer)

        def failed(message: str) -> None:
            self.running.discard(work)
            deliver(error_answer(f"{command.name}: {message}"))

        work = ChildWork(
            self.loop,
            lambda: run_command(command, arguments),
            finished,
            failed,
            COMMAND_TIMEOUT,
            self.prepare_child,
        )
        self.running.add(work)

    def close(self) -> None:
        """Stop answering, stop the commands under way, close the socket and remove its
        file (unless another process bound a new one there since)."""
        for work in list(self.running):
            work.cancel()
        self.running.clear()
        self.answers.close()
        self.listener.close()
        if self.path is not None and self.inode:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self.inode:
                    os.unlink(self.path)


def run_command(command: Command, arguments: Arguments) -> bytes:
    """The answer line of one command: its result, or its error."""
    try:
        return encode_answer(command.run(arguments))
    except CommandError as exc:
        return error_answer(f"{command.name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a command's bug is an answer, never a crash
        log.exception("control command %s failed", command.name)
        return error_answer(f"{command.name} failed: {exc!r}")
