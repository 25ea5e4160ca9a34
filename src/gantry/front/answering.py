"""What every client side of the front does alike to answer a request, whatever carries
it (an HTTP/1 connection, an HTTP/2 stream): the request's Host, the HSTS line, a small
file read whole, and the accounting once a request ends (counters, autoban, access log)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Final

from gantry.front.addresses import canonical_address
from gantry.front.exchange import FilePiece
from gantry.front.worker import FrontWorker
from gantry.protocol.http1 import FieldBlockMemo, RequestHead

__all__ = [
    "SMALL_FILE",
    "admit_address",
    "at_ceiling",
    "error_page",
    "hsts_line",
    "peer_addresses",
    "record_request",
    "release_address",
    "request_host",
    "small_file",
]

#: under TLS (and on HTTP/2), a file body up to this size is read at once and sent with
#: its head
SMALL_FILE = 64 * 1024

# bound once: compiled, ``time.monotonic()`` looks ``monotonic`` up by name at each call
_monotonic: Final = time.monotonic


def peer_addresses(
    transport: asyncio.BaseTransport, server_port: str | None = None
) -> tuple[str, tuple[str, str]]:
    """A new connection's client address ("" for a unix socket) and (client's port,
    listener's port); ``server_port`` when the listener's is known already (every
    connection of a listening socket has its port: one getsockname fewer)."""
    address = client_port = ""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        # a dual-stack socket names IPv4 clients "::ffff:a.b.c.d": one client, one name
        address = canonical_address(str(peer[0]))
        client_port = str(peer[1])
    if server_port is None:
        server_port = ""
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            server_port = str(sockname[1])
    return address, (client_port, server_port)


def at_ceiling(worker: FrontWorker) -> bool:
    """worker_connections: past the ceiling, the open connections are served and a new
    one is closed at once (True: refuse it; the refusal is counted and logged). Near the
    ceiling, a worker leaves new clients to the others a while (ceiling_reached)."""
    count = len(worker.connections)
    if count >= worker.worker_connections:
        worker.refuse_connection("worker_connections")
        worker.ceiling_reached()
        return True
    if count + 1 >= worker.accept_limit:  # near the ceiling with this one
        worker.ceiling_reached()
    return False


def admit_address(worker: FrontWorker, address: str) -> str | None:
    """max_connections_per_address: count a new connection of ``address`` (returned: the
    address to release when it closes, "" when none is counted), or refuse it (None)."""
    if not worker.max_per_address:
        return ""
    count = worker.per_address.get(address, 0)
    if count >= worker.max_per_address:
        worker.refuse_connection("max_connections_per_address", address)
        return None
    worker.per_address[address] = count + 1
    return address


def release_address(worker: FrontWorker, address: str) -> None:
    """A connection counted by admit_address closed."""
    per_address = worker.per_address
    left = per_address.get(address, 1) - 1
    if left > 0:
        per_address[address] = left
    else:
        per_address.pop(address, None)


def error_page(
    worker: FrontWorker, status: int, extra: list[tuple[bytes, bytes]] | None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The fields and body of an error response of the front's own (its error page),
    with the ``extra`` fields."""
    content_type, body = worker.error_pages.page(status)
    fields = [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())]
    if extra:
        fields += extra
    return fields, body


def request_host(head: RequestHead, memo: FieldBlockMemo) -> str | None:
    """The request's Host field (an HTTP/2 request's :authority is put there); ``memo``,
    the worker's parser memo, gives the text of the Host its parser read last: most
    requests to a worker name the same host, and the same str keeps its hash for the
    route lookup."""
    for key, value in head.headers:
        if len(key) == 4 and key.lower() == b"host":
            if value == memo.host:
                return memo.host_text
            return value.decode("latin-1")
    return None


def hsts_line(hsts: str | None) -> bytes:
    """The Strict-Transport-Security field of a server's https responses, CRLF-ended."""
    return b"Strict-Transport-Security: " + hsts.encode() + b"\r\n" if hsts else b""


def small_file(fd: int, pieces: list[FilePiece]) -> bytes | None:
    """The whole body of a file response of at most SMALL_FILE bytes, read now; None for
    a larger one, or for a file that shrank under us (the stream says so by closing)."""
    size = 0
    for piece in pieces:
        size += len(piece) if isinstance(piece, bytes) else piece[1] + 1 - piece[0]
    if size > SMALL_FILE:
        return None
    parts = []
    for piece in pieces:
        if isinstance(piece, bytes):
            parts.append(piece)
            continue
        want = piece[1] + 1 - piece[0]
        data = os.pread(fd, want, piece[0])
        if len(data) != want:
            return None
        parts.append(data)
    return b"".join(parts)


def record_request(
    worker: FrontWorker,
    remote_addr: str,
    logged: RequestHead | None,
    status: int,
    sent: int,
    started: float,
    upstream_log: list[tuple[str, float]] | None,
    limit_status: str,
    cache_status: str,
    tunnel_received: int = -1,
    remote_port: str = "",
) -> float:
    """A request ended: autoban sees its status, the worker's counters and the access log
    count it (``logged``: the head to log, None for an answer to no request). Returns
    the time.monotonic() it ended at."""
    now = _monotonic()
    if worker.autoban is not None:
        # counted at the response's end, as before, by the clock read the request's time
        # is taken from (no read of its own)
        worker.autoban.response(remote_addr, status, int(now * 1000))
    counters = worker.counters
    counters.requests += 1
    counters.tx += sent
    counters.status_counts[status // 100 if 100 <= status < 600 else 5] += 1
    counters.rt_total += now - started
    access_log = worker.access_log
    if access_log is not None:
        access_log.write(
            remote_addr, logged, status, sent, upstream_log, now - started, limit_status,
            cache_status, tunnel_received, remote_port,
        )  # fmt: skip
    return now
