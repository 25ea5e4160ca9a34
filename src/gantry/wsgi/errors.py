"""``wsgi.errors``: a text stream to the error log."""

from __future__ import annotations

from typing import IO


class ErrorStream:
    """Thin text stream over the error log's file, as PEP 3333 asks (write, writelines, flush)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        """Write text to the error log."""
        self._stream.write(text)

    def writelines(self, lines: list[str]) -> None:
        """Write several strings."""
        self._stream.writelines(lines)

    def flush(self) -> None:
        """Flush the error log."""
        self._stream.flush()
