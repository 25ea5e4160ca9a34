"""Helpers for the HTTP/2 tests (a helper module, not a test module): a raw HTTP/2 client
on the ``h2`` package over a blocking socket, which can behave as a client should or,
for the defence tests, as an attacker (frames written by hand)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Answer:
    """What came back on one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers).get(b":status", b"0"))


class RawH2:
    """An HTTP/2 client connection to 127.0.0.1:``port`` (TLS with ALPN h2 when
    ``context`` is given); ``window``: the receive window it announces per stream."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext | None = None,
        server_name: str = "localhost",
        window: int = 65535,
        auto_ack: bool = True,
        timeout: float = 10.0,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if context is not None:
            context.set_alpn_protocols(["h2"])
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname=server_name)
        else:
            self.sock = raw
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        #: open the windows again as data comes (False: the test decides)
        self.auto_ack = auto_ack
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        """Bytes written as they are (frames the state machine would refuse to make)."""
        self.sock.sendall(data)

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        authority: str = "localhost",
    ) -> int:
        """Send a request; its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (":method", method),
            (":path", path),
            (":scheme", "https"),
            (":authority", authority),
            *(headers or []),
        ]
        if body is not None:
            fields.append(("content-length", str(len(body))))
        self.conn.send_headers(stream_id, fields, end_stream=body is None)
        self.answers[stream_id] = Answer()
        self.flush()
        if body is not None:
            self.send_body(stream_id, body)
        return stream_id

    def send_body(self, stream_id: int, body: bytes) -> None:
        """The whole body, as the server's windows allow."""
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.read_some()
                continue
            self.conn.send_data(stream_id, bytes(view[:window]), end_stream=len(view) <= window)
            view = view[window:]
            self.flush()

    def read_some(self) -> bool:
        """Read once and handle the events; False when the server closed."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()
        return True

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.answers.setdefault(event.stream_id, Answer()).headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            answer = self.answers.setdefault(event.stream_id, Answer())
            answer.body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.answers.setdefault(event.stream_id, Answer()).ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.answers.setdefault(event.stream_id, Answer()).reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, stream_id: int, limit: float = 20.0) -> Answer:
        """Read until ``stream_id`` ended or was reset."""
        deadline = time.monotonic() + limit
        answer = self.answers[stream_id]
        while not answer.ended and answer.reset is None:
            assert time.monotonic() < deadline, f"stream {stream_id} unanswered"
            if not self.read_some():
                break
            answer = self.answers[stream_id]
        return answer

    def wait_goaway(self, limit: float = 20.0) -> h2.events.ConnectionTerminated | None:
        """Read until a GOAWAY (returned) or the close (None if no GOAWAY came first)."""
        deadline = time.monotonic() + limit
        while self.goaway is None and time.monotonic() < deadline:
            try:
                if not self.read_some():
                    break
            except h2.exceptions.ProtocolError:
                break
            except TimeoutError:
                continue
        return self.goaway

    def close(self) -> None:
        self.sock.close()


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame as bytes (RFC 9113 4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )
