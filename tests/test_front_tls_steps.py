"""front.tls_steps: the handshake's "wants more" answered as a value by interpreted code
(a caught exception costs more inside the compiled front.tls_accept), with the behaviour
of the ssl call it wraps, and TLSStream's close_notify sent without the exception of
"the client's has not come": a real client SSLObject over memory BIOs, and a real client
over a socket through a TLSListener."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import cast

import pytest
import uvloop

from gantry import compiled
from gantry.front import tls_accept
from gantry.front.tls_accept import TLSListener
from gantry.front.tls_steps import (
    HANDSHAKE_DONE,
    HANDSHAKE_WANTS_MORE,
    TLSConnection,
    handshake_step,
    ssl_object,
)
from tests.support_tls import TestCA


def _server_context(tmp_path: Path) -> tuple[TestCA, ssl.SSLContext]:
    ca = TestCA(tmp_path)
    pair = ca.issue("localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.certificate, pair.key)
    return ca, context


def _pair(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[
    TLSConnection, ssl.MemoryBIO, ssl.MemoryBIO, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO
]:
    """The server's end as a TLSListener makes it (and with its context's options)."""
    listening = socket.socket()
    listener = TLSListener(uvloop.new_event_loop(), listening, server, asyncio.Protocol, 5.0)
    listening.close()
    listener.loop.close()
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    return (
        listener.wrap_bio(s_in, s_out, True, None),
        s_in,
        s_out,
        client.wrap_bio(c_in, c_out, server_hostname="localhost"),
        c_in,
        c_out,
    )


def test_a_handshake_step_by_step(tmp_path: Path) -> None:
    ca, context = _server_context(tmp_path)
    server, s_in, s_out, client, c_in, c_out = _pair(context, ca.client_context())
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    # nothing from the client yet: more is wanted, nothing is sent
    assert handshake_step(server) is HANDSHAKE_WANTS_MORE
    assert not s_out.pending
    s_in.write(c_out.read())  # the ClientHello
    assert handshake_step(server) is HANDSHAKE_WANTS_MORE
    flight = s_out.read()
    assert flight[0] == 0x16  # our ServerHello and the rest, a handshake record first
    c_in.write(flight)
    client.do_handshake()  # the client is done: its Finished goes with a request
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    s_in.write(c_out.read())
    assert handshake_step(server) is HANDSHAKE_DONE
    assert server.read(1024) == b"GET / HTTP/1.1\r\n\r\n"
    server.write(b"answer")
    c_in.write(s_out.read())
    assert client.read(1024) == b"answer"


class _Recording:
    """A TLSConnection's shutdown, with the exception it raised, if any."""

    def __init__(self, tls: TLSConnection) -> None:
        self.tls = tls
        self.raised: BaseException | None = None

    def shutdown(self) -> object:
        try:
            return self.tls.shutdown()
        except BaseException as exc:
            self.raised = exc
            raise


def test_the_ssl_object_view_is_the_same_connection(tmp_path: Path) -> None:
    ca, context = _server_context(tmp_path)
    server, s_in, s_out, client, c_in, c_out = _pair(context, ca.client_context())
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    s_in.write(c_out.read())
    handshake_step(server)
    c_in.write(s_out.read())
    client.do_handshake()
    s_in.write(c_out.read())
    assert handshake_step(server) is HANDSHAKE_DONE
    view = ssl_object(server)
    assert isinstance(view, ssl.SSLObject)
    assert view.server_side and view.context is context
    assert view.version() == client.version() and view.cipher() == client.cipher()


def test_a_client_we_do_not_speak_with_still_raises(tmp_path: Path) -> None:
    ca, context = _server_context(tmp_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    old = ca.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    server, s_in, s_out, client, c_in, c_out = _pair(context, old)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    s_in.write(c_out.read())
    with pytest.raises(ssl.SSLError) as failed:
        handshake_step(server)
    assert not isinstance(failed.value, ssl.SSLWantReadError)
    assert s_out.pending  # our alert, for the caller to send before it closes


def test_the_steps_stay_interpreted_and_the_listener_uses_them() -> None:
    # compiled, they would pay what they exist to avoid
    assert "gantry.front.tls_steps" not in compiled.MODULES
    assert tls_accept.handshake_step is handshake_step


class _Answer(asyncio.Protocol):
    """Answers the first read and closes, as a response with Connection: close does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"answer:" + data)  # type: ignore[attr-defined]
        # the close's shutdown, watched (TLSStream.tls is the connection)
        stream = self.transport
        assert isinstance(stream, tls_accept.TLSStream) and stream.tls is not None
        recording = _Recording(stream.tls)
        _shutdowns.append(recording)
        stream.tls = cast(TLSConnection, recording)
        self.transport.close()


#: the shutdowns of _Answer's closes
_shutdowns: list[_Recording] = []


def _fetch(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # a TCP close without our close_notify would raise SSLEOFError here
        with context.wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        ) as sock:
            sock.sendall(b"hi")
            received = b""
            while True:
                try:
                    chunk = sock.recv(100)
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                received += chunk
            return received


def test_connections_through_a_listener_end_with_close_notify(tmp_path: Path) -> None:
    ca, context = _server_context(tmp_path)
    loop = uvloop.new_event_loop()
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    try:
        listener = TLSListener(loop, listening, context, _Answer, 5.0)
        loop.run_until_complete(listener.start())

        async def clients() -> list[bytes]:
            return await asyncio.gather(
                *(loop.run_in_executor(None, _fetch, port, ca.client_context()) for _ in range(4))
            )

        _shutdowns.clear()
        assert loop.run_until_complete(asyncio.wait_for(clients(), 30)) == [b"answer:hi"] * 4
        assert not listener.handshaking
        # close_notify went (the clients' reads above) without an exception made and
        # caught for the client's, which had not come
        assert len(_shutdowns) == 4
        assert [recording.raised for recording in _shutdowns] == [None] * 4
        listener.close()
    finally:
        listening.close()
        loop.close()
