"""Sockets a master answers itself (stats, metrics), served from its loop without blocking.

Each accepted connection is a small state machine (read the request, wait for the
answer, write it, close) driven by the loop's selector, with a deadline and a bound on
how many are open: a client that connects and says nothing costs one descriptor for
``DEADLINE`` seconds, never a turn of the loop that reaps and respawns workers.
"""

from __future__ import annotations

import errno
import json
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from gantry.process.loop import ProcessLoop

__all__ = ["AnswerServer", "DocumentFetch", "Respond"]

log = logging.getLogger("gantry.master")

#: seconds a connection may take from accept to its last byte written
DEADLINE = 2.0
#: open connections per server; beyond it the oldest is closed (a flood of silent
#: clients cannot take every descriptor)
MAX_CONNECTIONS = 32
#: bytes of request read at most (a metrics scrape's head is a few hundred)
REQUEST_LIMIT = 8192

#: ``respond(request, deliver)``: call ``deliver(answer)`` now or later from the loop
Respond = Callable[[bytes, Callable[[bytes], None]], None]


class _Exchange:
    """One accepted connection: its buffers, its state and its deadline."""

    __slots__ = ("sock", "deadline", "request", "answer", "state")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = b""
        self.answer = b""
        self.state = "reading"  # then "waiting" (for the answer), "writing", "closed"


class AnswerServer:
    """Accepts on ``listener``; each connection gets ``respond``'s answer, then the close.

    ``reads_request``: read a request first, up to ``terminator`` (an HTTP head for
    metrics, a line for the control socket) or ``request_limit`` bytes; else answer at
    once on accept, as uWSGI's stats server does. A connection has ``deadline`` seconds
    from accept to its answer; ``answer_timeout`` (when given) gives an answer that is
    computed off the loop that long from the moment the request is in.
    """

    def __init__(
        self,
        loop: ProcessLoop,
        listener: socket.socket,
        respond: Respond,
        reads_request: bool,
        *,
        terminator: bytes = b"\r\n\r\n",
        request_limit: int = REQUEST_LIMIT,
        deadline: float = DEADLINE,
        answer_timeout: float | None = None,
        name: str = "stats/metrics",
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.respond = respond
        self.reads_request = reads_request
        self.terminator = terminator
        self.request_limit = request_limit
        self.deadline = deadline
        self.answer_timeout = answer_timeout
        self.name = name
        self.open: list[_Exchange] = []
        listener.setblocking(False)
        loop.watch(listener, selectors.EVENT_READ, self._accept)
        loop.on_turn.append(self._expire)

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):  # bounded: the loop has other work this turn
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s: cannot accept: %s", self.name, exc.strerror)
                    return
                raise
            conn.setblocking(False)
            if len(self.open) >= MAX_CONNECTIONS:
                # the oldest still reading goes first: a flood of silent clients must not
                # cut off an answer being computed for a client that did speak
                reading = [e for e in self.open if e.state == "reading"]
                self._close((reading or self.open)[0])
            exchange = _Exchange(conn, time.monotonic() + self.deadline)
            self.open.append(exchange)
            if self.reads_request:
                self.loop.watch(conn, selectors.EVENT_READ, self._reader(exchange))
            else:
                self._ask(exchange)

    def _reader(self, exchange: _Exchange) -> Callable[[], None]:
        return lambda: self._read(exchange)

    def _read(self, exchange: _Exchange) -> None:
        try:
            data = exchange.sock.recv(self.request_limit)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(exchange)
            return
        if not data:
            self._close(exchange)
            return
        exchange.request += data
        if self.terminator in exchange.request or len(exchange.request) >= self.request_limit:
            self._ask(exchange)

    def _ask(self, exchange: _Exchange) -> None:
        exchange.state = "waiting"
        self.loop.unwatch(exchange.sock)
        if self.answer_timeout is not None:
            exchange.deadline = time.monotonic() + self.answer_timeout

        def deliver(answer: bytes) -> None:
            if exchange.state != "waiting":
                return  # closed meanwhile (deadline, or pushed out by a newer one)
            exchange.answer = answer
            exchange.state = "writing"
            self._write(exchange)

        try:
            self.respond(exchange.request, deliver)
        except Exception:
            log.exception("answering on %s failed", self.listener.getsockname())
            self._close(exchange)

    def _write(self, exchange: _Exchange) -> None:
        try:
            sent = exchange.sock.send(exchange.answer)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(exchange)
            return
        exchange.answer = exchange.answer[sent:]
        if not exchange.answer:
            self._close(exchange)
        else:
            self.loop.watch(exchange.sock, selectors.EVENT_WRITE, lambda: self._write(exchange))

    def _close(self, exchange: _Exchange) -> None:
        exchange.state = "closed"
        self.loop.unwatch(exchange.sock)
        exchange.sock.close()
        if exchange in self.open:
            self.open.remove(exchange)

    def _expire(self) -> None:
        now = time.monotonic()
        for exchange in [e for e in self.open if now >= e.deadline]:
            self._close(exchange)

    def close(self) -> None:
        """Close every connection and stop watching the listener (the listener is the
        caller's to close)."""
        for exchange in list(self.open):
            self._close(exchange)
        self.loop.unwatch(self.listener)
        if self._expire in self.loop.on_turn:
            self.loop.on_turn.remove(self._expire)


class DocumentFetch:
    """Read one JSON stats document from another master's stats socket, from the loop:
    ``done(document)`` is called once, with ``{}`` when it cannot be read in time."""

    #: a stats document is a few KiB a worker; more than this is not one
    LIMIT = 16 * 1024 * 1024

    def __init__(
        self,
        loop: ProcessLoop,
        address: str,
        timeout: float,
        done: Callable[[dict[str, Any]], None],
        request: bytes = b"",
        parse: Callable[[bytes], dict[str, Any]] | None = None,
    ) -> None:
        self.loop = loop
        self.done = done
        #: what the answer is read with ({} when it cannot be); default: JSON
        self.parse = parse
        self.deadline = time.monotonic() + timeout
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        self.sock: socket.socket | None = None
        try:
            self.sock = _connect(address)
        except (OSError, ValueError):
            self._finish({})
            return
        if request:
            # a server that answers a request (php-fpm's status page over FastCGI): a
            # unix connect is complete at once, and a few hundred bytes fit its buffer
            try:
                if self.sock.send(request) != len(request):
                    raise BlockingIOError
            except OSError:
                self._finish({})
                return
        loop.watch(self.sock, selectors.EVENT_READ, self._read)
        loop.on_turn.append(self._expire)

    def _read(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish({})
            return
        if data:
            self.chunks.append(data)
            self.size += len(data)
            if self.size > self.LIMIT:
                self._finish({})
            return
        try:
            data = b"".join(self.chunks)
            document = self.parse(data) if self.parse is not None else json.loads(data)
        except ValueError:
            document = {}
        self._finish(document if isinstance(document, dict) else {})

    def _expire(self) -> None:
        if time.monotonic() >= self.deadline:
            self._finish({})

    def _finish(self, document: dict[str, Any]) -> None:
        if self.finished:
            return
        self.finished = True
        if self.sock is not None:
            self.loop.unwatch(self.sock)
            self.sock.close()
            self.sock = None
        if self._expire in self.loop.on_turn:
            self.loop.on_turn.remove(self._expire)
        self.done(document)


def _connect(address: str) -> socket.socket:
    """A non-blocking connection under way to HOST:PORT or a unix socket path."""
    sock: socket.socket
    if ":" in address and not address.startswith("/"):
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target: str | tuple[str, int] = (host, int(port))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address
    sock.setblocking(False)
    try:
        sock.connect(target)
    except (BlockingIOError, InterruptedError):
        pass  # a TCP connect under way: readable once it fails or the document comes
    except BaseException:
        sock.close()
        raise
    return sock
