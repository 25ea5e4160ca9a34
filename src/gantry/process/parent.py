"""Tie a child process's life to its parent's."""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["stop_with_parent"]

_PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux).

    A worker whose master was killed (kill -9, OOM) must not keep serving on its
    own: the replacement master starts a fresh set. Survives exec.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signum)
