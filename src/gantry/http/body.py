"""A request body held in memory or spooled to a temporary file past a threshold."""

from __future__ import annotations

import io
import tempfile
from typing import IO

__all__ = ["DEFAULT_SPOOL_THRESHOLD", "BodyBuffer"]

#: bodies up to this size stay in memory; larger ones go to a temporary file
DEFAULT_SPOOL_THRESHOLD = 1024 * 1024


class BodyBuffer:
    """Collects body pieces; spills to a temporary file past ``spool_threshold`` bytes."""

    __slots__ = ("_memory", "_file", "_threshold", "size")

    def __init__(self, spool_threshold: int = DEFAULT_SPOOL_THRESHOLD) -> None:
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._threshold = spool_threshold
        self.size = 0

    def append(self, data: bytes) -> None:
        """Add one piece of the body."""
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._memory += data
        if len(self._memory) > self._threshold:
            self._file = tempfile.TemporaryFile(prefix="gantry-body-")
            self._file.write(self._memory)
            self._memory = bytearray()

    def to_input(self) -> IO[bytes]:
        """The finished body as a readable stream positioned at its start."""
        if self._file is not None:
            self._file.seek(0)
            return self._file
        return io.BytesIO(bytes(self._memory))

    def discard(self) -> None:
        """Drop the body (the temporary file, if any, is deleted on close)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = bytearray()
