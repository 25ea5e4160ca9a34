"""A reload that re-imports code a process already holds: re-execute the process.

A master that loaded the app before forking (preload) cannot import new code into
itself: Python keeps the modules it has. uWSGI re-executes its master on a reload;
Gantry does the same. First a fresh interpreter checks that the new code imports (the
probe), so a broken edit costs a log line and the old workers keep serving; then the
process replaces itself (same PID: the pidfile, systemd and ``gantry up`` see no
change), handing its listening sockets down as LISTEN_FDS so no connection is refused,
and naming the workers it leaves running so the new image can stop them once its own
are ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gantry.process.systemd import SD_LISTEN_FDS_START, notify

__all__ = [
    "LoneReload",
    "ADOPT_ENV",
    "GENERATION_ENV",
    "OWNED_ENV",
    "Reexec",
    "adopted_workers",
    "hold_signals",
    "owned_sockets",
    "read_probe",
    "release_held_signals",
    "start_probe",
]

log = logging.getLogger("gantry.master")

#: the environment variables a re-executed image reads (and removes)
ADOPT_ENV = "GANTRY_ADOPT"
GENERATION_ENV = "GANTRY_GENERATION"
OWNED_ENV = "GANTRY_OWNED_FDS"

#: Blocked across the re-exec (a blocked signal stays pending through execve): a
#: SIGHUP sent while the new image imports would otherwise meet the default action
#: and kill it; held, it is delivered once the new image has its handler.
HELD_ACROSS_EXEC = frozenset({signal.SIGHUP})


def hold_signals() -> None:
    """Block what a re-exec holds, from before the listening sockets are bound until
    release_held_signals: once a port accepts, a reload may be sent (a deploy script that
    waits for the port), and before the handlers are installed SIGHUP's default action
    killed the server (a preloading master imports the app in between)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_ACROSS_EXEC)


def release_held_signals() -> None:
    """Unblock what a re-exec or hold_signals held (call once the handlers are installed):
    a signal sent meanwhile is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_ACROSS_EXEC)


@dataclass
class Reexec:
    """How a process re-executes itself: the command that checks the new code first
    (exit 0: it imports), where it starts again, and its listening sockets."""

    probe: list[str]
    #: the directory the process started in (relative paths in its arguments)
    start_dir: str
    #: (fd, bound by this process rather than inherited)
    sockets: list[tuple[int, bool]] = field(default_factory=list)
    argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "gantry", *sys.argv[1:]])

    def exec(self, workers: list[int], generation: int) -> None:
        """Replace this process (does not return unless exec fails, raising OSError)."""
        fds = [fd for fd, _ in self.sockets]
        # out of the way first: fd 3, 4, ... may be taken by one of them
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
        for index, fd in enumerate(high):
            os.dup2(fd, SD_LISTEN_FDS_START + index, inheritable=True)
            os.close(fd)
        env = dict(os.environ)
        env.update(
            {
                "LISTEN_FDS": str(len(fds)),
                "LISTEN_PID": str(os.getpid()),
                ADOPT_ENV: ",".join(str(pid) for pid in workers),
                GENERATION_ENV: str(generation),
                OWNED_ENV: ",".join(str(i) for i, (_, own) in enumerate(self.sockets) if own),
            }
        )
        env.pop("LISTEN_FDNAMES", None)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(self.start_dir)
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_ACROSS_EXEC)
        try:
            os.execve(self.argv[0], self.argv, env)
        except BaseException:
            release_held_signals()
            raise


def probe_failure(text: str) -> str:
    """The one line that says why a probe failed: the loader's "cannot import ..." line
    when there is one (its traceback and sys.path follow it), else the last line."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("cannot import "):
            return line
    return lines[-1] if lines else ""


def start_probe(argv: list[str]) -> tuple[int, int]:
    """Start ``argv`` (a fresh interpreter) in the current directory; its PID (the caller
    reaps it) and a descriptor of the unnamed file its stderr goes to (see read_probe)."""
    # an unnamed temporary file: no path in /tmp another user could plant a link at
    output, path = tempfile.mkstemp(prefix="gantry-probe-")
    os.unlink(path)
    try:
        pid = os.posix_spawn(
            argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, output, 2)]
        )
    except BaseException:
        os.close(output)
        raise
    return pid, output


def read_probe(output: int) -> str:
    """What the probe wrote to its stderr (the descriptor is closed)."""
    try:
        os.lseek(output, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(output, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(output)


def adopted_workers() -> tuple[list[int], int]:
    """After a re-exec: the workers the old image left running and the generation this
    image serves (([], 1) otherwise). Removes the variables."""
    raw = os.environ.pop(ADOPT_ENV, None)
    generation = os.environ.pop(GENERATION_ENV, None)
    if raw is None:
        return [], 1
    pids = [int(pid) for pid in raw.split(",") if pid.isdigit()]
    return pids, int(generation) if generation and generation.isdigit() else 2


def owned_sockets() -> set[int] | None:
    """After a re-exec: the indexes (among LISTEN_FDS) of the sockets this process bound
    itself before (None when it was not re-executed). Removes the variable."""
    raw = os.environ.pop(OWNED_ENV, None)
    if raw is None:
        return None
    return {int(index) for index in raw.split(",") if index.isdigit()}


class LoneReload:
    """SIGHUP for a process that serves alone (no master to start new workers): check the
    new code or file with the probe, then stop accepting, let the requests in flight
    finish, and re-execute, the listening sockets held open throughout (new connections
    wait in the listen queue; none is refused)."""

    def __init__(self, reexec: Reexec, request_stop: Callable[[], None]) -> None:
        self.reexec = reexec
        self.request_stop = request_stop
        self.checking = False
        #: the probe passed: stop, then re-execute
        self.requested = False
        #: the listening sockets, duplicated before the server closes its own
        self.kept: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def on_sighup(self) -> None:
        """The signal handler (on the event loop): start the check."""
        if self.checking or self.requested:
            log.info("SIGHUP: a reload is already under way")
            return
        self.checking = True
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        log.info("SIGHUP: checking the new code, then re-executing this process")
        self._task = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        try:
            probe = await asyncio.create_subprocess_exec(
                *self.reexec.probe,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, errors = await probe.communicate()
            failed = probe.returncode != 0
            text = errors.decode("utf-8", "replace").rstrip()
        except OSError as exc:
            failed, text = True, f"cannot check the new code: {exc}"
        finally:
            self.checking = False
        if failed:
            reason = probe_failure(text) or "the check failed"
            log.error("reload abandoned, this process keeps serving:\n%s", text)
            notify("READY=1", f"STATUS=reload failed: {reason}")
            return
        self.requested = True
        self.request_stop()

    def keep_sockets(self, sockets: list[socket.socket]) -> None:
        """Before the server closes its listening sockets: hold them open for the new image."""
        if self.requested:
            self.kept = [os.dup(sock.fileno()) for sock in sockets]

    def exec_if_requested(self) -> None:
        """After the drain: re-execute if the reload was requested (does not return then)."""
        if not self.kept:
            return
        owned = [own for _, own in self.reexec.sockets]
        replace = dataclasses.replace(self.reexec, sockets=list(zip(self.kept, owned, strict=True)))
        replace.exec([], 1)
