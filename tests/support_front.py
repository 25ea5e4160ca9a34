"""Helpers for the front's own tests (a helper module, not a test module): a real
`gantry front` process, real uWSGI behind it, a raw upstream that records what it
receives, and /proc readers."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.process import REPO, Front, Launcher, recv_until


def start_front(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> Front:
    """A started front whose [front] table listens on FRONT_PORT, then ``body``."""
    front = Front('[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\n' + body, tmp_path, env)
    front.start()
    return front


def start_uwsgi(launch: Launcher, app: str) -> Path:
    """Real uWSGI (one process under its master) serving the WSGI app ``app`` (module:name,
    from the repository) on a unix socket; the socket's path."""
    uwsgi = Path(sys.executable).parent / "uwsgi"
    if not uwsgi.exists():
        pytest.fail("uWSGI is not installed in the test environment (pip install uwsgi)")
    sock = launch.workdir / "u.sock"
    launch.program(
        [str(uwsgi), "--socket", str(sock), "--chmod-socket=666", "--wsgi", app,
         "--chdir", str(REPO), "--master", "--processes", "1", "--die-on-term",
         "--disable-logging", "--need-app"],
        sock, "uwsgi",
    )  # fmt: skip
    return sock


def proxied_site(address: str, upstream: str = "", location: str = "", name: str = "app") -> str:
    """The tables after [front] of a front proxying every path to the one upstream
    ``name`` at ``address`` (``unix:/path`` or host:port); ``upstream`` and ``location``:
    keys added to its upstream's table and to its location's."""
    return f"""[[front.server]]
[[front.server.location]]
path = "/"
proxy = "{name}"
{location}
[front.upstream.{name}]
{upstream}
servers = [{{ address = "{address}" }}]
"""


def uwsgi_front_config(address: str, extra: str = "", workers: int | None = None) -> str:
    """A front on FRONT_PORT proxying every path to the uwsgi upstream at ``address``
    (``unix:/path`` or host:port), then ``extra``."""
    count = "" if workers is None else f"workers = {workers}\n"
    return f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
{count}{proxied_site(address, upstream='protocol = "uwsgi"')}
{extra}
"""


def limit_req_zone(
    key: str = "$binary_remote_addr", rate: str = "10r/s", size: str = "", name: str = "perip"
) -> str:
    """A ``[front.limit_req_zone.NAME]`` table (``size``: the default where empty)."""
    size_line = f'size = "{size}"\n' if size else ""
    return f'[front.limit_req_zone.{name}]\nkey = "{key}"\nrate = "{rate}"\n{size_line}'


def autoban_rule(when: str, count: int, within: str = "1m", ban_for: str = "1h") -> str:
    """A ``[[front.autoban]]`` rule: ``count`` requests answered ``when`` within ``within``
    ban their client for ``ban_for``."""
    return (
        f'[[front.autoban]]\nwhen = "{when}"\ncount = {count}\nwithin = "{within}"\n'
        f'ban_for = "{ban_for}"\n'
    )


def shared_redis(sock: Path | str) -> str:
    """A ``[front.shared]`` table: limits and bans kept in the Redis at unix ``sock``."""
    return f'[front.shared]\nredis = "unix://{sock}?db=0"\n'


def limited_site(
    root: Path | str,
    limit_req: str = '{ zone = "perip" }',
    *,
    zones: str | None = None,
    path: str = "/",
    unlimited: str = "",
    workers: int | None = None,
    listen: str = "127.0.0.1:FRONT_PORT",
    front: str = "",
    tables: str = "",
) -> str:
    """A front with one server whose location ``path`` serves ``root`` under
    ``limit_req`` (the list's entries), and ``unlimited`` (a path) the same folder without
    a limit. ``zones``: the limit_req_zone tables (``limit_req_zone()`` by default);
    ``front``: keys added to [front]; ``tables``: more tables (shared, autoban)."""
    count = "" if workers is None else f"workers = {workers}\n"
    free = (
        f'[[front.server.location]]\npath = "{unlimited}"\nroot = "{root}"\n' if unlimited else ""
    )
    return f"""[front]
listen = ["{listen}"]
{count}{front}
{limit_req_zone() if zones is None else zones}
{tables}
[[front.server]]
[[front.server.location]]
path = "{path}"
root = "{root}"
limit_req = [{limit_req}]
{free}"""


class RawUpstream:
    """A real listening socket that records each request head and answers it with
    ``respond`` (bytes, or a function of the head giving them), each connection on its
    own thread; connections close after each answer.

    ``wait_for`` bytes (at least the head) are read before the answer, so a test sees
    what arrived before the client finished sending. With ``hold``, requests are held
    (``held`` counts them) until ``release()``.
    """

    def __init__(
        self,
        respond: bytes | Callable[[bytes], bytes],
        wait_for: int = 0,
        hold: bool = False,
    ) -> None:
        self.respond = respond
        self.wait_for = wait_for
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.held = 0
        self.lock = threading.Lock()
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stopping and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            data = b""
            try:
                while b"\r\n\r\n" not in data or len(data) < self.wait_for:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    data += piece
                with self.lock:
                    self.received.append(data)
                    self.held += 1
                self.go.wait(30)
                respond = self.respond
                conn.sendall(respond if isinstance(respond, bytes) else respond(data))
            except OSError:
                pass

    def release(self) -> None:
        """Answer every held request, and any later one at once."""
        self.go.set()

    def close(self) -> None:
        """Stop accepting (held requests are answered)."""
        self.stopping = True
        self.go.set()
        self.thread.join(timeout=5)
        self.listener.close()


def fields_of(head: bytes) -> list[tuple[str, str]]:
    """The (lower-case name, value) fields of a raw HTTP head."""
    out = []
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out.append((name.strip().lower(), value.strip()))
    return out


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length body from ``sock``: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise EOFError(data)
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for name, value in fields_of(head + b"\r\n\r\n"):
        if name == "content-length":
            length = int(value)
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            raise EOFError(head)
        body += piece
    assert len(body) == length, "more than one response's bytes"
    return head, body


def wait_until(condition: Callable[[], bool], limit: float, what: str) -> None:
    """Poll ``condition`` until true; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


#: the one-file site's request and body of the connection-ceiling tests
CEILING_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n"
CEILING_BODY = b"hello\n"


def answered_once(sock: socket.socket, limit: float = 5.0) -> bool:
    """CEILING_REQUEST on ``sock`` gets its 200 (False: closed, reset or no answer)."""
    try:
        sock.sendall(CEILING_REQUEST)
        data = recv_until(sock, lambda d: d.endswith(CEILING_BODY), limit)
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200")


def hold_connections(port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` new connections, each asked once: those answered (held open), and how
    many were refused (closed or reset at their first request)."""
    held, refused = [], 0
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if answered_once(sock):
            held.append(sock)
        else:
            refused += 1
            sock.close()
    return held, refused
