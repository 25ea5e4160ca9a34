"""The one process loop every master runs: ``gantry serve``'s and ``gantry front``'s
masters over their workers, and ``gantry up``'s supervisor over its parts.

gunicorn's Arbiter is the model: signal handlers only queue the signal and wake the
loop through a pipe (``signal.set_wakeup_fd``); the loop then does the work. What every
master does alike lives here: the signal queue, the wait (on the wakeup pipe and on the
sockets the master serves itself, without ever blocking on one of them), reaping
children, kill deadlines, start-up backoff and the pidfile. What a master does with a
signal or a dead child is its own.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gantry.process.reexec import release_held_signals
from gantry.process.runtime import signal_process

__all__ = ["Backoff", "ProcessLoop", "describe_exit"]

log = logging.getLogger("gantry.master")

#: how often the loop turns with nothing to wake it (deadlines, readiness in shared memory)
TICK = 0.25

Callback = Callable[[], None]


@dataclass
class Backoff:
    """Restart delays after failures: 0.1 s, 0.2 s, 0.4 s ... up to ``limit`` seconds, so a
    process that dies at start-up does not fork-bomb the machine."""

    limit: float = 5.0
    failures: int = 0
    next_start: float = 0.0

    def failed(self, now: float) -> float:
        """Count one failure; returns the delay before the next start."""
        self.failures += 1
        delay = min(self.limit, 0.1 * 2.0 ** (self.failures - 1))
        self.next_start = now + delay
        return delay

    def reset(self) -> None:
        """A start succeeded: the next failure waits the shortest delay again."""
        self.failures = 0
        self.next_start = 0.0

    def due(self, now: float) -> bool:
        """Whether a start may happen now."""
        return now >= self.next_start


class ProcessLoop:
    """Signals queued by handlers, a wait that serves sockets without blocking, reaping,
    kill deadlines and the pidfile: the parts every master loop shares."""

    def __init__(self, handled: tuple[int, ...]) -> None:
        #: the signals this loop takes over (SIGCHLD only wakes it)
        self.handled = handled
        self.signals: deque[int] = deque()
        self.selector = selectors.DefaultSelector()
        self._wakeup_r = -1
        self._wakeup_w = -1
        #: pid -> monotonic time after which it is killed with SIGKILL
        self.kill_deadlines: dict[int, float] = {}
        #: callbacks run once per turn (connection deadlines of the served sockets)
        self.on_turn: list[Callback] = []

    # signals ------------------------------------------------------------------

    def install_signals(self) -> None:
        """Route the handled signals (and SIGCHLD) to the queue and the wakeup pipe."""
        self._wakeup_r, self._wakeup_w = os.pipe()
        for fd in (self._wakeup_r, self._wakeup_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._drain_wakeup)
        for signum in (*self.handled, signal.SIGCHLD):
            signal.signal(signum, self._queue_signal)
        release_held_signals()  # a SIGHUP sent during a re-exec is taken now

    def _queue_signal(self, signum: int, frame: object) -> None:
        # Only queue: a handler may run between any two bytecodes of the loop.
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def take_signals(self) -> list[int]:
        """The signals queued since the last call, in order."""
        taken = []
        while self.signals:
            taken.append(self.signals.popleft())
        return taken

    def in_child(self, ignored: tuple[int, ...] = ()) -> None:
        """In a freshly forked child: default handlers again (``ignored`` ones ignored), and
        none of the master's descriptors (wakeup pipe, served sockets) kept open."""
        signal.set_wakeup_fd(-1)
        for signum in (*self.handled, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
        for key in list(self.selector.get_map().values()):
            fileobj = key.fileobj
            if isinstance(fileobj, socket.socket):
                fileobj.close()
            else:
                try:
                    os.close(key.fd)
                except OSError:
                    pass
        self.selector.close()
        if self._wakeup_w >= 0:
            try:
                os.close(self._wakeup_w)
            except OSError:
                pass

    # waiting ------------------------------------------------------------------

    def watch(self, sock: socket.socket, events: int, callback: Callback) -> None:
        """Call ``callback()`` from the loop when ``sock`` is ready for ``events``
        (``selectors.EVENT_READ`` / ``EVENT_WRITE``); watching it again replaces both."""
        try:
            self.selector.modify(sock, events, callback)
        except KeyError:
            self.selector.register(sock, events, callback)

    def unwatch(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (before closing it)."""
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def wait(self, timeout: float = TICK) -> None:
        """Until a signal arrives, a watched socket is ready or ``timeout`` passes; runs the
        ready sockets' callbacks and the per-turn checks. Never blocks on one socket."""
        try:
            ready = self.selector.select(timeout)
        except InterruptedError:
            ready = []
        for key, _ in ready:
            callback: Callback = key.data
            try:
                callback()
            except Exception:
                log.exception("serving %s failed", key.fileobj)
        for check in list(self.on_turn):
            try:
                check()
            except Exception:
                log.exception("a periodic check failed")

    # children -----------------------------------------------------------------

    def reap(self) -> list[tuple[int, int]]:
        """Every child that exited since the last call, as (pid, wait status)."""
        reaped = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.kill_deadlines.pop(pid, None)
            reaped.append((pid, status))
        return reaped

    def reap_blocking(self, pids: set[int], timeout: float) -> None:
        """Wait (up to ``timeout``) for ``pids`` to exit, after they were sent SIGKILL."""
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            pids.discard(pid)
            self.kill_deadlines.pop(pid, None)

    def kill_after(self, pid: int, seconds: float) -> None:
        """Kill ``pid`` with SIGKILL if it is still running ``seconds`` from now."""
        self.kill_deadlines[pid] = time.monotonic() + seconds

    def cancel_kill(self, pid: int) -> None:
        """``pid`` has no kill deadline any more."""
        self.kill_deadlines.pop(pid, None)

    def kill_overdue(self) -> list[int]:
        """SIGKILL every child past its deadline; returns their pids (for the log)."""
        now = time.monotonic()
        late = [pid for pid, at in self.kill_deadlines.items() if now >= at]
        for pid in late:
            del self.kill_deadlines[pid]
            signal_process(pid, signal.SIGKILL)
        return late

    # pidfile --------------------------------------------------------------------

    @staticmethod
    def write_pidfile(path: str | None) -> None:
        """Write this process's pid to ``path`` (if set)."""
        if path:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(f"{os.getpid()}\n")

    @staticmethod
    def remove_pidfile(path: str | None) -> None:
        """Remove ``path`` if it still names this process (a new master may own it now)."""
        if not path:
            return
        try:
            with open(path, encoding="ascii") as handle:
                if handle.read().strip() != str(os.getpid()):
                    return
            os.unlink(path)
        except OSError:
            pass

    def close(self) -> None:
        """Close the wakeup pipe and the selector (the served sockets are their owners')."""
        if self._wakeup_r >= 0:
            signal.set_wakeup_fd(-1)
            self.unwatch_fd(self._wakeup_r)
            for fd in (self._wakeup_r, self._wakeup_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wakeup_r = self._wakeup_w = -1
        self.selector.close()

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching a raw descriptor."""
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass


def describe_exit(status: int) -> str:
    """A child's wait status in words: 'exit 3', 'killed by SIGKILL'."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
