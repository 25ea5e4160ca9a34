"""The fill locks of a zone: one request (of any worker of the host) fills a missing key.

A key's lock is one byte of the zone's lock file (``PATH/locks/fill``, at an offset made
from the key's digest), taken with an open-file-description lock (``F_OFD_SETLK``, Linux):
the kernel lets it go when the holder's descriptor closes, so a worker that dies holds
nothing; and, unlike a POSIX record lock, it belongs to the descriptor, not the process,
so two stores of one process (tests) exclude each other too. A miss costs two ``fcntl``
calls on a descriptor opened once, where a lock file per key cost a file made per new key
(an inode and a directory entry: most of a miss's kernel time, and a folder that only
grew). Requests of the same worker share its descriptor, which the kernel sees as one
holder: they are told apart by the set of offsets the worker holds.

Where the system has no such locks, each key gets a file of its own, locked with flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from typing import Final

__all__ = ["FillLocks", "KeyLock"]

#: ``struct flock`` on Linux: l_type, l_whence, l_start, l_len, l_pid (and padding)
_FLOCK: Final = struct.Struct("hhqqixxxx")
#: the lock file's offsets are the digest's first 15 hex digits: below 2^60, so that
#: offset + 1 never overflows an off_t
_OFFSET_DIGITS: Final = 15
_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", 0)


class KeyLock:
    """The fill lock of one key, held until ``release`` (once; a second call does nothing)."""

    def __init__(self, locks: FillLocks, offset: int, fd: int = -1) -> None:
        self.locks = locks
        self.offset = offset
        #: the key's own lock file (flock), where the system has no OFD locks
        self.fd = fd

    def release(self) -> None:
        """Let the next request fill the key (from any thread)."""
        offset, self.offset = self.offset, -1
        if offset >= 0:
            self.locks.unlock(offset)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class FillLocks:
    """A worker's view of a zone's fill locks (see the module's docstring)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, "fill")
        self.fd = -1
        #: the process the descriptor was opened in: a forked child opens its own (a
        #: shared description would make every worker one holder)
        self.pid = 0
        #: offsets this worker holds (its requests are one holder to the kernel)
        self.held: set[int] = set()
        #: a take and a release are each one step (the writer thread that also released
        #: locks is gone; the purge walk on an executor thread takes none)
        self.mutex = threading.Lock()

    def try_lock(self, digest: str) -> KeyLock | None:
        """The lock of the key of SHA-256 ``digest`` (hex), if no request holds it."""
        if not _OFD_SETLK:
            return self._try_file(digest)
        offset = int(digest[:_OFFSET_DIGITS], 16)
        with self.mutex:
            if offset in self.held:
                return None
            fd = self._descriptor()
            try:
                fcntl.fcntl(fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
            except OSError:
                return None  # another worker holds it
            self.held.add(offset)
        return KeyLock(self, offset)

    def unlock(self, offset: int) -> None:
        """Let go of the lock at ``offset`` (the kernel's first: until then this worker's
        other requests still see it held)."""
        with self.mutex:
            if offset not in self.held:
                return
            with contextlib.suppress(OSError):
                fcntl.fcntl(
                    self.fd, _OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0)
                )
            self.held.discard(offset)

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self.fd < 0 or self.pid != pid:
            # a parent's descriptor is left open to the parent (closing it here would
            # not free the parent's locks, and it is not ours to close)
            os.makedirs(self.folder, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self.pid = pid
            self.held.clear()
        return self.fd

    def _try_file(self, digest: str) -> KeyLock | None:
        path = os.path.join(self.folder, digest[:16])
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return KeyLock(self, -1, fd)

    def close(self) -> None:
        """Close the lock file: every lock this worker holds goes with it."""
        with self.mutex:
            if self.fd >= 0 and self.pid == os.getpid():
                os.close(self.fd)
            self.fd = -1
            self.held.clear()
