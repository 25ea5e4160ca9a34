"""Work a master hands to a forked child, so that its loop never waits on it.

A control command may walk a cache of a million files; the loop that reaps and
respawns workers must go on turning meanwhile. The work runs in a child forked
from the master (no thread: the master forks workers, and a fork taken while
another thread holds a lock leaves that lock held for good in the worker). The
child writes its result to a socket pair and exits; the loop reads it as it
comes, with a deadline past which the child is killed. The master's own reaping
(``waitpid(-1)``) collects the child: only the socket says when it is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable

from gantry.process.loop import ProcessLoop
from gantry.process.parent import stop_with_parent

__all__ = ["ChildWork", "OffloadError"]

log = logging.getLogger("gantry.master")

#: bytes of result read at most from one child (the answer of a command is small)
RESULT_LIMIT = 1024 * 1024


class OffloadError(Exception):
    """The work could not run, or did not finish in time; its message says which."""


class ChildWork:
    """``work()`` run in a forked child (``prepare()`` first, there: drop privileges);
    ``done(result)`` called from the loop with the bytes it returned, or
    ``failed(message)`` when it crashed, said nothing or outran ``timeout`` seconds."""

    def __init__(
        self,
        loop: ProcessLoop,
        work: Callable[[], bytes],
        done: Callable[[bytes], None],
        failed: Callable[[str], None],
        timeout: float,
        prepare: Callable[[], None] = lambda: None,
    ) -> None:
        self.loop = loop
        self.done = done
        self.failed = failed
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        ours, theirs = socket.socketpair()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                ours.close()
                loop.in_child()  # none of the master's handlers or served sockets
                stop_with_parent(parent, signal.SIGKILL)  # its work is the master's
                prepare()
                result = work()
                theirs.sendall(result)
                code = 0
            except BaseException:  # noqa: BLE001 - reported to the master as a failure
                log.exception("offloaded work failed in pid %d", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        self.pid = pid
        # a pidfd names this child even once it is reaped and its pid reused
        self.pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(pid)
        self.sock = ours
        ours.setblocking(False)
        loop.watch(ours, selectors.EVENT_READ, self._read)
        loop.on_turn.append(self._expire)

    def _read(self) -> None:
        # Drain all that is there at once: a child that exited left its whole result
        # and the end of file in the socket, so the end is seen in this same turn.
        while not self.finished:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._finish(None, f"reading the result failed: {exc.strerror}")
                return
            if not data:
                result = b"".join(self.chunks)
                if result:
                    self._finish(result, "")
                else:
                    self._finish(None, "the work failed (see the error log)")
                return
            self.size += len(data)
            if self.size > RESULT_LIMIT:
                self._kill()
                self._finish(None, f"the result passed {RESULT_LIMIT} bytes")
                return
            self.chunks.append(data)

    def _expire(self) -> None:
        if not self.finished and time.monotonic() >= self.deadline:
            self._kill()
            self._finish(None, f"not done after {self.timeout:g} s: stopped")

    def _kill(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        else:  # no pidfd: the child has not been reaped, since its socket is still open
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def cancel(self) -> None:
        """Stop the child now (the master is stopping); nothing is called back."""
        if not self.finished:
            self._kill()
            self.finished = True
            self._release()

    def _finish(self, result: bytes | None, error: str) -> None:
        if self.finished:
            return
        self.finished = True
        self._release()
        if result is None:
            self.failed(error)
        else:
            self.done(result)

    def _release(self) -> None:
        self.loop.unwatch(self.sock)
        self.sock.close()
        if self._expire in self.loop.on_turn:
            self.loop.on_turn.remove(self._expire)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
