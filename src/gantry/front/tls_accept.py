"""The front's TLS listeners, accepted by the worker itself so that each connection's
first byte is seen before any handshake, as nginx does.

A TLS client opens with a handshake record (first byte 0x16): its socket goes to the
loop's TLS transport (``connect_accepted_socket``), then to the listener's protocol, as
``create_server(ssl=...)`` would. Anything else is plain HTTP sent to the HTTPS port: it
gets nginx's answer, 400 "The plain HTTP request was sent to HTTPS port", and the close,
where the loop's transport would have failed the handshake and closed without a word.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Final, cast

__all__ = ["PLAIN_HTTP_ANSWER", "TLSListener"]

log: Final = logging.getLogger("gantry.front")

#: the first byte of a TLS record that carries a handshake: every ClientHello opens with it
TLS_HANDSHAKE: Final = 0x16
#: the connections one readiness of the listening socket accepts at most (the loop's
#: other work goes on between batches)
ACCEPT_BATCH: Final = 64
#: bytes of a plain-HTTP head read before the answer (the rest is not waited for)
PLAIN_HEAD_LIMIT: Final = 16 * 1024
#: accept errors that say the process or host is out of something: accepting pauses a
#: second instead of spinning on a socket that stays readable
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_MESSAGE: Final = b"400 The plain HTTP request was sent to HTTPS port\n"
#: nginx's status and words; the connection closes after it
PLAIN_HTTP_ANSWER: Final = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_MESSAGE)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _MESSAGE
)


class PlainHTTPAnswer(asyncio.Protocol):
    """A plain-HTTP client on a TLS listener: its head is read (bounded, within the
    timeout), then it gets PLAIN_HTTP_ANSWER and the close. Reading the head first keeps
    the close from resetting the connection before the client has read the answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, address: str) -> None:
        self.loop = loop
        self.timeout = timeout
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        # a client that sends no whole head is answered when the time is up
        self.timer = self.loop.call_later(self.timeout, self.answer)

    def data_received(self, data: bytes) -> None:
        start = max(0, len(self.head) - 3)
        self.head += data[: PLAIN_HEAD_LIMIT - len(self.head)]
        if b"\r\n\r\n" in self.head[start:] or len(self.head) >= PLAIN_HEAD_LIMIT:
            self.answer()

    def answer(self) -> None:
        """Say 400 once and close (the loop sends what is written first)."""
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        log.info("client %s sent a plain HTTP request to an HTTPS port", self.address)
        transport.write(PLAIN_HTTP_ANSWER)
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class TLSListener:
    """One listening socket of an ssl listener: accepts, peeks at each connection's first
    byte (waiting ``timeout`` for it, client_header_timeout), and hands the connection to
    the TLS handshake and ``factory``'s protocol, or to PlainHTTPAnswer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext,
        factory: Callable[[], asyncio.Protocol],
        timeout: float,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.context = context
        self.factory = factory
        self.timeout = timeout
        #: the worker's task set: a handshake's task is kept referenced until done
        self.tasks = tasks
        #: accepted sockets whose first byte has not come yet, with their deadline timer
        self.waiting: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self.closed = False
        self._resume: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Accept from now on."""
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections still silent are closed (handshakes under way and
        connections made go on, as with the loop's own server)."""
        if self.closed:
            return
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        for fd, (conn, timer) in list(self.waiting.items()):
            self.loop.remove_reader(fd)
            timer.cancel()
            conn.close()
        self.waiting.clear()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    log.warning("accepting paused for a second: %s", exc)
                    self.loop.remove_reader(self.sock.fileno())
                    self._resume = self.loop.call_later(1.0, self._resume_accepting)
                    return
                continue  # the client gave up meanwhile (ECONNABORTED): the next one
            conn.setblocking(False)
            # a client's first bytes are most often in by the time it is accepted: the
            # peek is tried at once, and only a silent client costs a reader and a timer
            try:
                first = conn.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                fd = conn.fileno()
                timer = self.loop.call_later(self.timeout, self._drop, fd)
                self.waiting[fd] = (conn, timer)
                self.loop.add_reader(fd, self._first_byte, fd)
                continue
            except OSError:
                first = b""
            self._start(conn, first)

    def _resume_accepting(self) -> None:
        self._resume = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _drop(self, fd: int) -> None:
        """Nothing came within the timeout: closed, as a handshake that did not finish."""
        entry = self.waiting.pop(fd, None)
        if entry is not None:
            self.loop.remove_reader(fd)
            entry[0].close()

    def _first_byte(self, fd: int) -> None:
        entry = self.waiting.get(fd)
        if entry is None:
            return
        conn, timer = entry
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: the reader stays
        except OSError:
            first = b""
        del self.waiting[fd]
        self.loop.remove_reader(fd)
        timer.cancel()
        self._start(conn, first)

    def _start(self, conn: socket.socket, first: bytes) -> None:
        """The connection's first byte has come (``first``, empty if the client left
        first): a TLS handshake, or the answer to plain HTTP."""
        if not first:  # closed or reset before a byte: nothing to answer
            conn.close()
            return
        if first[0] == TLS_HANDSHAKE:
            task = self.loop.create_task(self._handshake(conn))
        else:
            task = self.loop.create_task(self._plain(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.factory, conn, ssl=self.context, ssl_handshake_timeout=self.timeout
            )
        except OSError:
            # a failed or timed-out handshake (ssl.SSLError is an OSError): as the loop's
            # own server does, the connection just ends
            conn.close()

    async def _plain(self, conn: socket.socket) -> None:
        try:
            peer = conn.getpeername()
        except OSError:
            peer = None
        address = str(peer[0]) if isinstance(peer, tuple) else "unix:"
        try:
            await self.loop.connect_accepted_socket(
                lambda: PlainHTTPAnswer(self.loop, self.timeout, address), conn
            )
        except OSError:
            conn.close()
