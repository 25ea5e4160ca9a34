"""``wsgi.input``: the request body, held in memory or spooled to a temporary file."""

from __future__ import annotations

from gantry.http.body import DEFAULT_SPOOL_THRESHOLD, BodyBuffer

# BodyBuffer lives in gantry.http (the front buffers bodies too); it is named here as well
# for the code and tests that know it as part of wsgi.input.
__all__ = ["BodyBuffer", "DEFAULT_SPOOL_THRESHOLD", "EMPTY_INPUT", "EmptyInput"]


class EmptyInput:
    """The input stream of a request without a body; stateless, so one object serves all."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        """Return no bytes."""
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        """Return no bytes."""
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Return no lines."""
        return []

    def __iter__(self) -> EmptyInput:
        return self

    def __next__(self) -> bytes:
        raise StopIteration

    def close(self) -> None:
        """Nothing to release."""


EMPTY_INPUT = EmptyInput()
