"""The fields every response head of either role ends with: ``Server`` and ``Date``."""

from __future__ import annotations

import time
from email.utils import formatdate

__all__ = ["HeadDefaults"]


class HeadDefaults:
    """Fields every response gets (``Server``, ``Date``), refreshed at most once a second."""

    __slots__ = ("server", "date_line", "lines", "second")

    def __init__(self, server: str = "gantry") -> None:
        self.server = f"Server: {server}\r\n"
        #: the epoch second the Date line shows (what Expires is counted from)
        self.second = -1
        self.date_line = ""
        #: ``Server`` and ``Date`` lines and the blank line ending the head
        self.lines = b""
        self.refresh(time.time())

    def refresh(self, now: float) -> None:
        """Recompute the ``Date`` line if the second changed (``now`` from time.time())."""
        second = int(now)
        if second != self.second:
            self.second = second
            self.date_line = f"Date: {formatdate(second, usegmt=True)}\r\n"
            self.lines = (self.server + self.date_line + "\r\n").encode("latin-1")
