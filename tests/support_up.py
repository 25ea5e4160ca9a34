"""For the tests of ``gantry up``: the small demo stack's config, and client threads sending
GETs while the stack changes."""

from __future__ import annotations

import http.client
import threading
import time

# One front passing everything to one gantry.demo:app pool: the stack most tests of
# ``gantry up`` start. FRONT_PORT stays for GantryUp / Launcher.up to fill; the named
# placeholders take a test's extra lines.
DEMO_STACK = """
[stack]
graceful_timeout = 5
{stack}
[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 1
{front}
[[front.server]]
default = true

[[front.server.location]]
path = "/"
proxy = "hello"

[[app]]
name = "hello"
module = "gantry.demo:app"
workers = {workers}
graceful_timeout = 5
{app}"""


def demo_stack(*, workers: int = 1, stack: str = "", front: str = "", app: str = "") -> str:
    """``DEMO_STACK`` with ``workers`` in the pool and extra lines (``key = value``, one a
    line) for the ``[stack]``, ``[front]`` and ``[[app]]`` tables."""
    return DEMO_STACK.format(
        workers=workers, stack=_lines(stack), front=_lines(front), app=_lines(app)
    )


def _lines(extra: str) -> str:
    return "".join(f"{line.strip()}\n" for line in extra.strip().splitlines())


class LoadLoop:
    """Client threads sending GETs (fresh and keep-alive connections) until stopped;
    bounded by ``limit`` seconds and ``max_requests`` each."""

    def __init__(self, port: int, threads: int = 3, limit: float = 30.0) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0, limit), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> LoadLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _run(self, keep_alive: bool, limit: float) -> None:
        deadline = time.monotonic() + limit
        conn: http.client.HTTPConnection | None = None
        for _ in range(20_000):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/hello")
                response = conn.getresponse()
                body = response.read()
                if (response.status, body) != (200, b"Hello World!"):
                    raise RuntimeError(f"{response.status} {body[:80]!r}")
                with self.lock:
                    self.ok += 1
            except Exception as exc:  # every failure is counted and reported
                with self.lock:
                    self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
                continue
            if not keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
