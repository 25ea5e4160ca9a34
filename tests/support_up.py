"""For the tests of ``gantry up``: the small demo stack's config, and client load on its
/hello while the stack changes."""

from __future__ import annotations

from tests.process import ClientLoad

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


def hello_load(port: int, threads: int = 3, limit: float = 30.0) -> ClientLoad:
    """Client threads sending GET /hello (half on kept connections) that must each get the
    demo's 200 Hello World!, for ``limit`` seconds at most."""
    return ClientLoad(port, "/hello", threads, keep_alive=True, expect=b"Hello World!", limit=limit)
