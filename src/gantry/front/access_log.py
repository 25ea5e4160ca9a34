"""The front's access log: nginx's combined format plus the upstream attempts."""

from __future__ import annotations

import time
from typing import TextIO

from gantry.protocol.http1 import RequestHead

__all__ = ["AccessLog", "escape", "header"]


class AccessLog:
    """One line per response, written through a line-buffered file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the same path."""
        old, self.stream = self.stream, open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        old.close()

    def write(
        self,
        remote_addr: str,
        head: RequestHead | None,
        status: int,
        sent: int,
        upstreams: list[tuple[str, float]] | None,
        elapsed: float,
    ) -> None:
        """nginx's combined format, then upstream_addr, upstream_response_time and
        request_time (", " between the attempts of a retried request; "-" for none)."""
        referer = agent = "-"
        line = "-"
        if head is not None:
            referer = escape(header(head, b"referer") or "-")
            agent = escape(header(head, b"user-agent") or "-")
            line = f"{head.method} {head.target.decode('latin-1')} HTTP/{head.version}"
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        attempts = upstreams or []
        addresses = ", ".join(address for address, _ in attempts) or "-"
        times = ", ".join(f"{seconds:.3f}" for _, seconds in attempts) or "-"
        self.stream.write(
            f'{remote_addr} - - [{stamp}] "{escape(line)}" {status} '
            f'{sent} "{referer}" "{agent}" "{addresses}" "{times}" {elapsed:.3f}\n'
        )

    def close(self) -> None:
        """Close the file."""
        self.stream.close()


def escape(text: str) -> str:
    """As nginx escapes log variables: '"', '\\' and non-printable bytes become \\xHH."""
    if text.isprintable() and text.isascii() and '"' not in text and "\\" not in text:
        return text
    return "".join(
        f"\\x{byte:02X}" if byte < 0x20 or byte > 0x7E or byte in (0x22, 0x5C) else chr(byte)
        for byte in text.encode("latin-1", "replace")
    )


def header(head: RequestHead, name: bytes) -> str | None:
    """The first field ``name`` (lower case) of ``head``, as text."""
    for key, value in head.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
