"""An upstream's interim response (103 Early Hints) before its final one, on a kept
connection: the front passes it on to an HTTP/1.1 client and waits for the final answer.
It took the 103 for the answer, gave the connection back to its pool, and the next
request sent on it got the final answer meant for the first client (the cache-tests
suite lost tests to it at 50 in flight). The 103 is never stored."""

from __future__ import annotations

import http.client
import socket
import threading
from pathlib import Path

from tests.process import Launcher
from tests.support_cache import cache_config


class InterimOrigin:
    """A raw HTTP/1.1 origin on 127.0.0.1 keeping its connections: ``/interim`` gets a
    103, then its final answer once another request reached the origin (at most 10 s
    later); any other path gets its own path as the body."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hinted = threading.Event()  # the 103 went out
        self.other_asked = threading.Event()  # a request after /interim reached us
        self.seen: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                path = head.split(b" ")[1]
                self.seen.append(path)
                if path == b"/interim":
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                    self.hinted.set()
                    self.other_asked.wait(10)
                    body = b"interim"
                else:
                    if self.hinted.is_set():
                        self.other_asked.set()
                    body = path
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    def close(self) -> None:
        self.other_asked.set()
        self.listener.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_raw(port: int, path: str, version: str = "1.1") -> bytes:
    """What the front sends for one request, up to the end of a final answer with a
    Content-Length (any interim heads before it included)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/{version}\r\nHost: a\r\n\r\n".encode())
        data = b""
        while True:
            final = data.find(b"HTTP/1.1 200 ")
            end = data.find(b"\r\n\r\n", final) if final >= 0 else -1
            if end >= 0:
                length = int(data.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
                if len(data) >= end + 4 + length:
                    return data
            piece = sock.recv(65536)
            assert piece, f"closed early: {data!r}"
            data += piece


def test_a_request_never_gets_the_final_answer_after_anothers_103(
    launch: Launcher, short_tmp: Path
) -> None:
    origin = InterimOrigin()
    try:
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        assert get(front.port, "/warm") == (200, b"/warm")  # a kept upstream connection
        first: list[bytes] = []
        waiting = threading.Thread(target=lambda: first.append(get_raw(front.port, "/interim")))
        waiting.start()
        assert origin.hinted.wait(30)
        # the 103 is in: the kept connection is still /interim's, not the pool's
        second = get(front.port, "/second")
        waiting.join(30)
        assert second == (200, b"/second")
        # the 103 went on to the client, then its own final answer
        assert first[0].startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n")
        interim, _, final = first[0].partition(b"\r\n\r\n")
        assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b"\r\n\r\ninterim")
        assert get(front.port, "/second") == (200, b"/second")  # and that is what was stored
        # the stored answer is the final one: a hit, with no 103 before it
        assert get_raw(front.port, "/interim").startswith(b"HTTP/1.1 200 OK\r\n")
        assert origin.seen.count(b"/interim") == 1
    finally:
        origin.close()


def test_an_http10_client_gets_no_interim_response(launch: Launcher, short_tmp: Path) -> None:
    origin = InterimOrigin()
    try:
        front = launch.front(cache_config(origin.port, str(short_tmp / "c")))
        first: list[bytes] = []
        waiting = threading.Thread(
            target=lambda: first.append(get_raw(front.port, "/interim", version="1.0"))
        )
        waiting.start()
        assert origin.hinted.wait(30)
        assert get(front.port, "/other") == (200, b"/other")  # the origin's final answer goes
        waiting.join(30)
        # RFC 9110 15.2: no 1xx to an HTTP/1.0 client; its final answer alone
        assert first[0].startswith(b"HTTP/1.1 200 OK\r\n") and first[0].endswith(b"interim")
    finally:
        origin.close()
