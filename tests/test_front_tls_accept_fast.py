"""A TLS listener's accept: a client whose ClientHello is already in when it is accepted
goes to the handshake at once, without a reader and a timer for its first byte (the
common case under load); a silent client still waits for its first byte. Real sockets,
a real uvloop loop, a real TLS client (Python's ssl) and the listener of the front."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

import uvloop

from gantry.front.tls_accept import TLSListener
from tests.support_tls import TestCA


class _Hello(asyncio.Protocol):
    """Answers each piece it reads with b"hello " + the piece."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"hello " + data)  # type: ignore[attr-defined]


def _pump(raw: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
          outgoing: ssl.MemoryBIO) -> bytes:  # fmt: skip
    """Finish the client's handshake over ``raw``, send b"ping", read the answer."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            data = raw.recv(65536)
            assert data, "the server closed during the handshake"
            incoming.write(data)
    tls.write(b"ping")
    raw.sendall(outgoing.read())
    while True:
        try:
            return tls.read(1024)
        except ssl.SSLWantReadError:
            data = raw.recv(65536)
            assert data, "the server closed before answering"
            incoming.write(data)


def test_hello_already_in_goes_to_the_handshake_at_once(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("site.test")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pair.certificate, pair.key)
    loop = uvloop.new_event_loop()
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    tasks: set[asyncio.Task[None]] = set()
    listener = TLSListener(loop, listening, server_context, _Hello, 5.0, tasks)
    listening.setblocking(False)
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        # the client's ClientHello is sent before the server accepts (loopback delivers
        # it to the accepted socket's queue before sendall returns)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ca.client_context().wrap_bio(incoming, outgoing, server_hostname="site.test")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        raw.sendall(outgoing.read())
        listener._accept()
        # the silent one waits for its first byte; the other is in its handshake already
        assert len(listener.waiting) == 1
        assert len(tasks) == 1
        answer: list[bytes] = []
        client = threading.Thread(
            target=lambda: answer.append(_pump(raw, tls, incoming, outgoing)), daemon=True
        )
        client.start()

        async def until_answered() -> None:
            for _ in range(500):  # bounded: 5 s
                if answer or not client.is_alive():
                    return
                await asyncio.sleep(0.01)

        loop.run_until_complete(until_answered())
        client.join(5)
        assert answer == [b"hello ping"]
    finally:
        listener.close()
        raw.close()
        silent.close()
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        listening.close()
