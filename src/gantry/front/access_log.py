"""The front's access log: nginx's combined format plus the upstream attempts, the same
fields as one JSON object a line, or a template of nginx's log_format variables."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from gantry.config.front import split_log_format
from gantry.protocol.http1 import RequestHead

__all__ = ["AccessLog", "escape", "header"]

#: paths that name a standard stream rather than a file
_STREAMS = {"-": "stdout", "stdout": "stdout", "stderr": "stderr"}


class AccessLog:
    """One line per response: to a line-buffered file, standard output ('-') or
    'stderr'; ``format`` "combined" (nginx's, plus the upstream attempts), "json", or a
    template with nginx's $variables (see config.front.LOG_VARIABLES)."""

    def __init__(self, path: str, format: str = "combined") -> None:
        self.path = path
        self.json = format == "json"
        #: a template's text and variable names in turn; None for combined and json
        self.template = None if format in ("combined", "json") else split_log_format(format)
        self.stream: TextIO = self._open()

    def _open(self) -> TextIO:
        stream = _STREAMS.get(self.path)
        if stream is not None:
            return sys.stdout if stream == "stdout" else sys.stderr
        return open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the same path."""
        if self.path in _STREAMS:
            return
        old, self.stream = self.stream, self._open()
        old.close()

    def write(
        self,
        remote_addr: str,
        head: RequestHead | None,
        status: int,
        sent: int,
        upstreams: list[tuple[str, float]] | None,
        elapsed: float,
        limit_status: str = "",
        cache_status: str = "-",
        received: int = -1,
        remote_port: str = "",
    ) -> None:
        """One line: upstream_addr and upstream_response_time list each attempt of a
        retried request (", " between them in the combined format; "-" for none).
        ``limit_status`` is nginx's $limit_req_status: the last field of a combined line
        where a limit_req applied ("limit_req_status", null when none, in JSON);
        ``cache_status`` is $upstream_cache_status (HIT, MISS...; "-": no cache).
        ``received``: the bytes a WebSocket tunnel carried from the client ($bytes_received;
        -1 for a plain request: "-", null in JSON). ``remote_port``: the client's port
        ($remote_port; "" for a unix socket: "-", null in JSON): the requests of one
        connection share it."""
        referer = agent = None
        line = "-"
        if head is not None:
            referer = header(head, b"referer")
            agent = header(head, b"user-agent")
            line = f"{head.method} {head.target.decode('latin-1')} HTTP/{head.version}"
        attempts = upstreams or []
        if self.template is not None:
            values = {
                "remote_addr": remote_addr, "request": line, "status": str(status),
                "body_bytes_sent": str(sent), "http_referer": referer or "-",
                "http_user_agent": agent or "-", "request_time": f"{elapsed:.3f}",
                "upstream_cache_status": cache_status,
                "limit_req_status": limit_status or "-",
                "upstream_addr": ", ".join(address for address, _ in attempts) or "-",
                "upstream_response_time": ", ".join(f"{t:.3f}" for _, t in attempts) or "-",
                "bytes_received": str(received) if received >= 0 else "-",
                "remote_port": remote_port or "-",
            }  # fmt: skip
            text = self._fill(self.template, values, head)
        elif self.json:
            text = json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "remote_addr": remote_addr,
                    "remote_port": int(remote_port) if remote_port else None,
                    "request": line,
                    "method": head.method if head is not None else None,
                    "uri": head.target.decode("latin-1") if head is not None else None,
                    "protocol": f"HTTP/{head.version}" if head is not None else None,
                    "status": status,
                    "body_bytes_sent": sent,
                    "http_referer": referer,
                    "http_user_agent": agent,
                    "upstream_addr": [address for address, _ in attempts],
                    "upstream_response_time": [round(seconds, 3) for _, seconds in attempts],
                    "request_time": round(elapsed, 3),
                    "limit_req_status": limit_status or None,
                    "upstream_cache_status": None if cache_status == "-" else cache_status,
                    "bytes_received": received if received >= 0 else None,
                },
                ensure_ascii=True,
            )
        else:
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
            addresses = ", ".join(address for address, _ in attempts) or "-"
            times = ", ".join(f"{seconds:.3f}" for _, seconds in attempts) or "-"
            text = (
                f'{remote_addr} - - [{stamp}] "{escape(line)}" {status} {sent} '
                f'"{escape(referer or "-")}" "{escape(agent or "-")}" "{addresses}" "{times}" '
                f"{elapsed:.3f}"
            )
            if limit_status:
                text += f' "{limit_status}"'
        self.stream.write(text + "\n")
        if self.path in _STREAMS:
            self.stream.flush()  # a pipe is block-buffered: a line must not wait

    @staticmethod
    def _fill(template: list[str], values: dict[str, str], head: RequestHead | None) -> str:
        """The template's line: each variable's value, escaped as nginx escapes them."""
        pieces: list[str] = []
        for index, part in enumerate(template):
            if index % 2 == 0:
                pieces.append(part)
                continue
            value = values.get(part)
            if value is None:
                value = _variable(part, head)
            pieces.append(escape(value))
        return "".join(pieces)

    def close(self) -> None:
        """Close the file (a standard stream stays open)."""
        if self.path not in _STREAMS:
            self.stream.close()


def _variable(name: str, head: RequestHead | None) -> str:
    """A variable that depends on the clock or the request alone ("-" when unset)."""
    now = time.time()
    if name == "time_local":
        return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
    if name == "time_iso8601":
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
    if name == "msec":
        return f"{now:.3f}"
    if head is None:
        return "-"
    if name == "request_method":
        return head.method
    if name == "request_uri":
        return head.target.decode("latin-1")
    if name == "server_protocol":
        return f"HTTP/{head.version}"
    if name.startswith("http_"):
        return header(head, name[5:].lower().replace("_", "-").encode()) or "-"
    return "-"  # remote_user: no authentication here


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
