"""``gantry up``: one supervisor over the front and the application pools.

The supervisor binds every listening socket itself (the front's and each pool's
uwsgi unix socket) and hands them down as LISTEN_FDS, so a part that dies and
comes back finds its queue still open: the front never sees a refused pool and
clients never see a refused front. Each part is a ``gantry`` process with its
own master (``gantry front``'s, ``gantry serve``'s), which respawns its workers;
the supervisor respawns the masters. Signal handlers only queue the signal; the
loop forwards it (SIGHUP, SIGUSR1), stops the parts (SIGTERM, SIGINT) and reaps.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from gantry.config import ListenAddress, parse_address
from gantry.process.master import APP_LOAD_FAILED
from gantry.process.parent import stop_with_parent
from gantry.process.runtime import signal_process, wait_readable
from gantry.process.sockets import bind
from gantry.process.systemd import SD_LISTEN_FDS_START, notify
from gantry.stack.config import StackPlan

__all__ = ["Part", "Supervisor", "EXIT_APP_LOAD_FAILED"]

log = logging.getLogger("gantry.stack")

EXIT_APP_LOAD_FAILED = APP_LOAD_FAILED
# A part that dies is restarted after 0.1 s, 0.2 s, ... up to this many seconds.
MAX_BACKOFF = 5.0
# A part that ran this long before dying starts again at the shortest backoff.
HEALTHY_RUN = 10.0
STATE_FILE = "stack.json"


@dataclass
class Part:
    """One process the supervisor runs: the front, or an application pool."""

    name: str  # "front" or the pool's name
    kind: str  # "front" or "app"
    sockets: list[tuple[ListenAddress, socket.socket]]
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    last_exit: str = ""


@dataclass
class Supervisor:
    """Runs a validated :class:`StackPlan` until told to stop; ``run`` returns the exit code."""

    plan: StackPlan
    own_runtime_dir: bool = False
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.signals: deque[int] = deque()
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.started = time.time()
        self._wakeup_r = -1
        self._wakeup_w = -1
        self.listeners: list[tuple[socket.socket, str]] = []
        self.state_path = os.path.join(self.plan.runtime_dir, STATE_FILE)
        #: every socket bound and the state written: the runtime files are this stack's
        self.prepared = False

    # setting up -------------------------------------------------------------

    def prepare(self) -> None:
        """Write the state file and bind every socket, before any part starts."""
        os.makedirs(self.plan.runtime_dir, mode=0o700, exist_ok=True)
        front = self.plan.front_config()
        sockets = []
        for spec in front.listen:
            address = parse_address(spec, "http", f"{self.plan.source}: front.listen")
            sockets.append((address, bind(address, None, 2048)))
        self.parts.append(Part("front", "front", sockets))
        for app in self.plan.settings.app:
            address = parse_address(self.plan.pool_socket(app.name), "uwsgi", "app")
            sock = bind(address, 0o600, app.backlog)
            self.parts.append(Part(app.name, "app", [(address, sock)]))
        stack = self.plan.settings.stack
        for wanted, kind in ((stack.stats, "stats"), (stack.metrics, "metrics")):
            if wanted:
                address = parse_address(wanted, kind, f"stack.{kind}")
                self.listeners.append((bind(address, 0o600 if address.path else None, 64), kind))
        # Last: a bind that fails (another stack on the same runtime_dir or port) must
        # leave that stack's state file alone.
        with open(self.state_path, "w", encoding="utf-8") as handle:
            json.dump(self.plan.to_json(), handle)
        self.prepared = True

    def run(self) -> int:
        """Start every part, then supervise until stopped."""
        self._install_signals()
        self._set_scheduling()
        self._write_pidfile()
        try:
            for part in self.parts:
                self._start(part)
            notify("READY=1", f"STATUS=gantry up: {len(self.parts)} parts")
            log.info(
                "gantry up %d: %s", os.getpid(), ", ".join(self._describe(p) for p in self.parts)
            )
            while True:
                self._wait()
                self._handle_signals()
                self._reap()
                if self.stopping:
                    if self._stop_progress():
                        break
                    continue
                self._restart_due()
        finally:
            self.cleanup()
        log.info("gantry up %d stopped (exit %d)", os.getpid(), self.exit_code)
        return self.exit_code

    def _describe(self, part: Part) -> str:
        where = ", ".join(str(address) for address, _ in part.sockets)
        return f"{part.name} (pid {part.pid}) on {where}"

    # the parts --------------------------------------------------------------

    def _start(self, part: Part) -> None:
        argv = [sys.executable, "-m", "gantry", "_part", self.state_path, part.kind, part.name]
        fds = [sock.fileno() for _, sock in part.sockets]
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the part: hand the sockets down as fds 3, 4, ... and exec
            try:
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                               signal.SIGUSR1, signal.SIGCHLD):  # fmt: skip
                    signal.signal(signum, signal.SIG_DFL)
                stop_with_parent(parent)
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
                for i, fd in enumerate(high):
                    os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
                env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()))
                env.pop("LISTEN_FDNAMES", None)
                env.pop("NOTIFY_SOCKET", None)  # systemd hears from the supervisor only
                os.execve(sys.executable, argv, env)
            except BaseException:
                os._exit(127)
        part.pid = pid
        part.started = time.monotonic()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            part = next((p for p in self.parts if p.pid == pid), None)
            if part is None:
                continue
            part.pid = None
            part.last_exit = _describe_status(status)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                log.info("%s stopped (%s)", part.name, part.last_exit)
                continue
            if part.kind == "app" and code == APP_LOAD_FAILED:
                log.error(
                    "app %r: its application cannot be loaded (see above); stopping the stack",
                    part.name,
                )
                self.exit_code = EXIT_APP_LOAD_FAILED
                self._begin_stop("graceful")
                continue
            ran = time.monotonic() - part.started
            part.failures = 1 if ran >= HEALTHY_RUN else part.failures + 1
            delay = min(MAX_BACKOFF, 0.1 * 2 ** (part.failures - 1))
            part.next_start = time.monotonic() + delay
            log.warning("%s %s; starting it again in %.1f s", part.name, part.last_exit, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for part in self.parts:
            if part.pid is None and now >= part.next_start:
                part.restarts += 1
                self._start(part)
                log.info("%s started again (pid %d)", part.name, part.pid)

    # signals ----------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        for fd in (self._wakeup_r, self._wakeup_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                       signal.SIGUSR1, signal.SIGCHLD):  # fmt: skip
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading every part with zero downtime")
                notify("RELOADING=1")
                self._signal_parts(signal.SIGHUP)
                notify("READY=1")
            elif signum == signal.SIGUSR1:
                self._signal_parts(signal.SIGUSR1)
            elif signum == signal.SIGTERM:
                self._begin_stop("graceful")
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self._begin_stop("fast")

    def _signal_parts(self, signum: int) -> None:
        for part in self.parts:
            if part.pid is not None:
                signal_process(part.pid, signum)

    # stopping ---------------------------------------------------------------

    def _begin_stop(self, how: str) -> None:
        if self.stopping == "fast" or self.stopping == how:
            return
        self.stopping = how
        notify("STOPPING=1")
        timeout = self.plan.settings.stack.graceful_timeout + 5.0 if how == "graceful" else 5.0
        self.stop_deadline = time.monotonic() + timeout
        log.info("%s stop of every part", how)
        self._signal_parts(signal.SIGTERM if how == "graceful" else signal.SIGINT)

    def _stop_progress(self) -> bool:
        if all(part.pid is None for part in self.parts):
            return True
        if time.monotonic() >= self.stop_deadline:
            for part in self.parts:
                if part.pid is not None:
                    log.warning("%s did not stop in time: killing it", part.name)
                    signal_process(part.pid, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5.0
        return False

    def _wait(self) -> None:
        ready = wait_readable(self._wakeup_r, [sock for sock, _ in self.listeners], 0.25)
        for item in ready:
            for sock, kind in self.listeners:
                if sock is item:
                    self._answer(sock, kind)

    def _answer(self, listener: socket.socket, kind: str) -> None:
        from gantry.stack.stats import answer_metrics, answer_stats

        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(2.0)
            try:
                if kind == "stats":
                    answer_stats(conn, self)
                else:
                    answer_metrics(conn, self)
            except OSError:
                pass
            except Exception:
                log.exception("answering %s failed", kind)

    def _set_scheduling(self) -> None:
        # Inherited by every part (fork and exec keep the policy).
        if self.plan.settings.stack.scheduling != "batch" or not hasattr(os, "SCHED_BATCH"):
            return
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError as exc:
            log.warning("cannot set SCHED_BATCH: %s; the parts run with the default policy", exc)

    def _write_pidfile(self) -> None:
        path = self.plan.settings.stack.pidfile
        if path:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(f"{os.getpid()}\n")

    def cleanup(self) -> None:
        """Close and remove what prepare() made (sockets, state, the runtime directory)
        and the stats sockets the parts' masters bound where gantry up told them to."""
        user_stats = {app.name: app.stats for app in self.plan.settings.app}
        for part in self.parts:
            for address, sock in part.sockets:
                sock.close()
                if address.path is not None:
                    _unlink(address.path)
            # A pool's own `stats` setting is the user's: only the runtime-dir default goes
            # (and only when this stack ran: the files may be another stack's otherwise).
            if self.prepared and (part.kind == "front" or not user_stats.get(part.name)):
                _unlink(self.plan.part_stats(part.name))
        for sock, _ in self.listeners:
            name = sock.getsockname()
            sock.close()
            if isinstance(name, str) and name:
                _unlink(name)
        if self.plan.settings.stack.pidfile:
            _unlink(self.plan.settings.stack.pidfile)
        if self.prepared:
            _unlink(self.state_path)
        if self.own_runtime_dir:
            shutil.rmtree(self.plan.runtime_dir, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
