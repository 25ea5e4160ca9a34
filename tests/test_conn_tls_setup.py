"""A TLS connection's set-up at the front (front.tls_accept): the handshakes under way are
timed out by their listener's one sweep, not a timer each, and the sweep stops while no
handshake is under way."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import uvloop

from gantry.front.tls_accept import TLSListener
from tests.support_tls import TestCA


class Hello(asyncio.Protocol):
    """Answers each read with "hello" and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"hello")  # type: ignore[attr-defined]
        self.transport.close()


def _client(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"hi")
            received = b""
            while chunk := sock.recv(100):
                received += chunk
            return received


def test_handshakes_are_timed_out_by_the_listeners_sweep(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.certificate, pair.key)
    loop = uvloop.new_event_loop()
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    try:
        listener = TLSListener(loop, listening, context, Hello, 0.4)
        loop.run_until_complete(listener.start())

        async def scenario() -> tuple[list[bytes], list[float], int, bool]:
            # three silent clients and three served ones, at the same time
            silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            for sock in silent:
                sock.setblocking(False)
            started = time.monotonic()
            served = await asyncio.gather(
                *(loop.run_in_executor(None, _client, port, ca.client_context()) for _ in range(3))
            )
            waiting = len(listener.handshaking)
            closed_after: list[float] = []
            for sock in silent:
                while True:
                    try:
                        if sock.recv(10) == b"":
                            break
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
                    except ConnectionResetError:
                        break
                    assert time.monotonic() - started < 5, "a silent client was never closed"
                closed_after.append(time.monotonic() - started)
                sock.close()
            for _ in range(100):  # the sweep runs on after the last timeout, then stops
                if listener.sweeper is None:
                    break
                await asyncio.sleep(0.05)
            return served, closed_after, waiting, listener.sweeper is None

        served, closed_after, waiting, stopped = loop.run_until_complete(scenario())
        assert served == [b"hello"] * 3
        assert waiting == 3  # only the silent ones: a finished handshake leaves the set
        assert all(0.35 < after < 2.0 for after in closed_after), closed_after
        assert not listener.handshaking
        assert stopped  # nothing under way: no timer left to wake the loop
        listener.close()
    finally:
        listening.close()
        loop.close()
