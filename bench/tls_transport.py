"""Which TLS termination the front uses: uvloop's own TLS transport
(``create_server(ssl=...)``) or a memory BIO (``ssl.MemoryBIO`` + ``SSLObject``) driven
by the protocol itself. Both answer a fixed 1 KiB response to each request on one
pinned uvloop process; wrk measures keep-alive req/s and handshakes/s.

Run: `python bench/tls_transport.py [--duration 5]` (needs openssl, wrk, taskset).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from front import make_certificate, wrk  # noqa: E402
from fronts import free_pair, wait_port  # noqa: E402

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: application/octet-stream\r\n\r\n"
    + bytes(range(256)) * 4
)
CLOSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


def _answers(buffer: bytearray) -> list[bool]:
    """Complete request heads taken off ``buffer``: True for each asking to close."""
    out = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        head = bytes(buffer[:end]).lower()
        del buffer[: end + 4]
        out.append(b"connection: close" in head)
    return out


class TransportTLS(asyncio.Protocol):
    """Plain bytes: the loop's TLS transport does the encryption."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for close in _answers(self.buffer):
            self.transport.write(CLOSE if close else RESPONSE)
            if close:
                self.transport.close()
                return


class MemoryBioTLS(asyncio.Protocol):
    """The protocol encrypts itself through an SSLObject over two memory BIOs."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.shaken = False
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def _flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.shaken:
            try:
                self.tls.do_handshake()
                self.shaken = True
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError:
                self.transport.abort()
                return
            self._flush()
        while True:
            try:
                # a record's plaintext is at most 16 KiB: a bigger buffer only costs
                chunk = self.tls.read(16384)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            except ssl.SSLError:
                self.transport.abort()
                return
            if not chunk:
                break
            self.buffer += chunk
            # no ciphertext left: another read would only raise SSLWantReadError, an
            # exception a request (front.tls_accept.TLSStream reads the same way)
            if not self.incoming.pending:
                break
        for close in _answers(self.buffer):
            self.tls.write(CLOSE if close else RESPONSE)
            if close:
                try:
                    self.tls.unwrap()
                except ssl.SSLError:
                    pass
                self._flush()
                self.transport.close()
                return
        self._flush()


def serve(kind: str, port: int, cert: Path, key: Path) -> None:
    """Run one server until SIGTERM."""
    import uvloop

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    loop = uvloop.new_event_loop()
    if kind == "transport":
        factory = loop.create_server(TransportTLS, "127.0.0.1", port, ssl=context, backlog=2048)
    else:
        factory = loop.create_server(lambda: MemoryBioTLS(context), "127.0.0.1", port, backlog=2048)
    loop.run_until_complete(factory)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()


def main() -> int:
    """Both servers, keep-alive then a handshake per request, pinned on CPU 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--serve", nargs=4, metavar=("KIND", "PORT", "CERT", "KEY"))
    args = parser.parse_args()
    if args.serve:
        kind, port, cert, key = args.serve
        serve(kind, int(port), Path(cert), Path(key))
        return 0
    with tempfile.TemporaryDirectory(prefix="gtls-") as tmp:
        cert, key = make_certificate(Path(tmp))
        results: dict[tuple[str, str], float] = {}
        for kind in ("transport", "memory-bio"):
            port = free_pair()
            proc = subprocess.Popen(
                ["taskset", "-c", "0", sys.executable, __file__, "--serve", kind, str(port),
                 str(cert), str(key)]
            )  # fmt: skip
            try:
                wait_port(port)
                for load, close in (("keep-alive", False), ("handshakes", True)):
                    wrk(port, "/", 1, 1, tls=True, close=close)
                    result = wrk(port, "/", args.duration, 1, tls=True, close=close)
                    results[kind, load] = result.rps
                    print(f"{kind:10} {load:10} {result.rps:9.0f} req/s", flush=True)
            finally:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(10)
            time.sleep(0.2)
        for load in ("keep-alive", "handshakes"):
            ratio = results["memory-bio", load] / results["transport", load]
            print(f"{load}: memory BIO / uvloop transport = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
