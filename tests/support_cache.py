"""Helpers for the cache's tests (a helper module, not a test module): a real origin
server whose answers each test sets, counting what reaches it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: an answer: status, fields, body
Answer = tuple[int, list[tuple[str, str]], bytes]


class Origin:
    """A threaded HTTP/1.1 origin on 127.0.0.1: ``answers[path]`` is what a path gets
    (a callable of the request's fields gives it per request); ``hits[path]`` counts the
    requests that reached it; ``gate`` (when set) holds every answer until it is opened."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer | Callable[[dict[str, str]], Answer]] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fields = {k.lower(): v for k, v in self.headers.items()}
                with origin.lock:
                    origin.hits[self.path] = origin.hits.get(self.path, 0) + 1
                    origin.requests.append((self.command, self.path, fields))
                gate = origin.gate
                if gate is not None:
                    gate.wait(30)
                answer = origin.answers.get(self.path, (404, [], b"no such path\n"))
                status, headers, body = answer(fields) if callable(answer) else answer
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                if status not in (204, 304):
                    self.send_header("Content-Length", str(len(body)))
                # one request a connection: a stopped origin leaves no kept one answering
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                if self.command != "HEAD" and status not in (204, 304):
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, path: str) -> int:
        """Requests for ``path`` that reached the origin."""
        with self.lock:
            return self.hits.get(path, 0)


def cache_config(
    origin_port: int,
    cache_path: str,
    zone: str = "",
    workers: int = 1,
    front: str = "",
    upstream: str = "",
) -> str:
    """A front (FRONT_PORT) whose "/" proxies to the origin through the cache zone "pages";
    ``zone`` adds keys to the zone's table, ``front`` to [front], ``upstream`` to the
    origin's upstream table (its protocol)."""
    return f"""[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = {workers}
{front}

[front.upstream.app]
{upstream}
servers = [{{ address = "127.0.0.1:{origin_port}" }}]

[front.cache.pages]
path = "{cache_path}"
purge_allow = ["127.0.0.1/32"]
{zone}

[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
cache = "pages"
"""
