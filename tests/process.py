"""Real processes for tests: ``gantry serve``, ``gantry front``, ``gantry up``; waits on conditions.

Every process is started with its output in a file, waited for until its socket
accepts (``wait_until_listening``, the one such loop of the suite) and stopped
by its PID. ``tests/conftest.py`` wraps them in fixtures that stop what they
started even when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from tests.e2e.nginx import Nginx

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def source_readable_by_others() -> bool:
    """Whether a worker running as nobody can import the rest of Gantry's modules (a
    front's workers import some after they switch user): every folder above the package
    passable by others. A clone in a private folder (mktemp -d is 0700) is not."""
    package = REPO / "src" / "gantry"
    return all(os.stat(folder).st_mode & 0o001 for folder in (package, *package.parents))


#: for the tests whose workers run as nobody
needs_readable_source = pytest.mark.skipif(
    not source_readable_by_others(),
    reason="the checkout is in a folder nobody cannot pass through: nobody cannot import Gantry",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_program(name: str, package: str | None = None) -> str:
    """Path of a system program; skip loudly without it, or fail when CI=true."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    message = (
        f"{name} is not installed: run `make test` as root (it apt-get installs it) "
        f"or `apt-get install {package or name}`"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def poll(condition: Callable[[], T], limit: float = 15.0, interval: float = 0.05) -> T | None:
    """Call ``condition`` until it returns a true value and return that value; None once
    ``limit`` seconds pass (it is called once more at the end)."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_for(predicate: Callable[[], object], limit: float = 15.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``limit`` seconds pass (False)."""
    return poll(predicate, limit, interval) is not None


def accepts(target: tuple[str, int] | str | Path) -> bool:
    """Whether a TCP (host, port) or unix socket path accepts a connection right now."""
    family = socket.AF_INET if isinstance(target, tuple) else socket.AF_UNIX
    address = target if isinstance(target, tuple) else str(target)
    with socket.socket(family) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def wait_until_listening(
    target: tuple[str, int] | str | Path,
    process: subprocess.Popen[bytes] | None = None,
    *,
    limit: float = 15.0,
    what: str = "the server",
    log: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``target`` accepts; raise (with the log's tail) if ``process`` exits first
    or ``limit`` seconds pass. The caller stops the process."""

    def ready() -> bool:
        if process is not None and process.poll() is not None:
            code = process.returncode
            raise RuntimeError(f"{what} exited with {code}:\n{log()[-3000:]}")
        return accepts(target)

    if not wait_for(ready, limit):
        raise RuntimeError(
            f"{what} did not listen on {target} within {limit:g} s:\n{log()[-3000:]}"
        )


@dataclass(frozen=True)
class TCPSocket:
    """One TCP socket of this host as /proc/net/tcp{,6} shows it."""

    local_port: int
    remote_port: int
    #: the kernel's state, in hex ("01": established, "0A": listening)
    state: str
    send_queue: int
    receive_queue: int
    inode: int


def tcp_sockets() -> Iterator[TCPSocket]:
    """Every TCP socket of this host (IPv4 and IPv6), read from /proc."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            send, receive = (int(value, 16) for value in fields[4].split(":"))
            yield TCPSocket(
                int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                fields[3], send, receive, int(fields[9]),
            )  # fmt: skip


def tcp_socket(local_port: int, remote_port: int) -> TCPSocket | None:
    """The loopback TCP socket with these ports, if there is one."""
    for found in tcp_sockets():
        if (found.local_port, found.remote_port) == (local_port, remote_port):
            return found
    return None


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds (empty when it is gone)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(send queue, receive queue) of the loopback TCP socket with these ports."""
    found = tcp_socket(local_port, remote_port)
    return None if found is None else (found.send_queue, found.receive_queue)


def server_has_read(sock: socket.socket) -> bool:
    """Whether the server end of this client's TCP connection has read all that was sent
    (nothing left in flight or in its receive queue): the request is in the server's hands."""
    client_port, server_port = sock.getsockname()[1], sock.getpeername()[1]
    ours, theirs = _tcp_queues(client_port, server_port), _tcp_queues(server_port, client_port)
    return ours is not None and theirs is not None and ours[0] == 0 and theirs[1] == 0


def servers_have_read(socks: Sequence[socket.socket]) -> bool:
    """``server_has_read`` for each of these clients' connections, from one reading of the
    host's TCP table (one reading per socket took seconds on a host with many sockets)."""
    queues = {(found.local_port, found.remote_port): found for found in tcp_sockets()}
    for sock in socks:
        client, server = sock.getsockname()[1], sock.getpeername()[1]
        ours, theirs = queues.get((client, server)), queues.get((server, client))
        if ours is None or theirs is None or ours.send_queue or theirs.receive_queue:
            return False
    return True


def wait_until_read(sock: socket.socket, limit: float = 5.0) -> None:
    """Wait until the server has read what this client sent (instead of a guessed sleep)."""
    assert wait_for(lambda: server_has_read(sock), limit, interval=0.01), "request not read"


def unix_accept_queue(path: str | Path) -> int:
    """Connections waiting in a listening unix socket's accept queue (``ss`` reads it from
    the kernel; /proc does not show it)."""
    ss = require_program("ss", package="iproute2")
    out = subprocess.run(
        [ss, "-xlH", "src", str(path)], capture_output=True, text=True, timeout=5, check=True
    ).stdout.split()
    assert len(out) >= 3 and out[1] == "LISTEN", f"{path} is not listening: {out}"
    return int(out[2])


def wait_until_accepted(path: str | Path, limit: float = 5.0) -> None:
    """Wait until the server has accepted every connection made to its unix socket."""
    assert wait_for(lambda: unix_accept_queue(path) == 0, limit, interval=0.01), "not accepted"


def recv_until(sock: socket.socket, done: Callable[[bytes], bool], limit: float = 5.0) -> bytes:
    """Receive until ``done(data)`` holds, the peer closes or ``limit`` seconds pass."""
    data = b""
    deadline = time.monotonic() + limit
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def http_get(
    port: int,
    path: str = "/",
    method: str = "GET",
    host: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection to 127.0.0.1: (status, body)."""
    fields = dict(headers or {})
    if host:
        fields["Host"] = host
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=fields)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def try_get(port: int, path: str = "/", **kwargs: Any) -> tuple[int, bytes]:
    """``http_get``, but (0, b"") when the connection fails: for polling a server that may
    still be starting, restarting or gone."""
    try:
        return http_get(port, path, **kwargs)
    except OSError:
        return 0, b""


def child_pids(pid: int) -> set[int]:
    """The PIDs of a process's direct children (a master's workers), from /proc."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # gone (FileNotFoundError) or reaped while read (ESRCH)
        return set()
    return {int(child) for child in children}


def descendant_pids(pid: int) -> set[int]:
    """The PIDs of a process's children, their children and so on (a stack's masters and
    their workers), from /proc."""
    found: set[int] = set()
    for child in child_pids(pid):
        found |= {child} | descendant_pids(child)
    return found


def ready_workers(master_pid: int, count: int, limit: float = 10.0) -> set[int]:
    """Wait until a master has ``count`` workers; their PIDs."""
    assert wait_for(lambda: len(child_pids(master_pid)) == count, limit), child_pids(master_pid)
    return child_pids(master_pid)


def gantry_env(**extra: str) -> dict[str, str]:
    """The environment for a ``gantry`` command started by hand: this repository (and the
    caller's PYTHONPATH, so a checkout tests its own code) importable, no inherited
    systemd variables."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        if name not in extra:
            env.pop(name, None)
    return env


def start_gantry(args: Sequence[str], log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m gantry ARGS`` started by hand in the repository with ``gantry_env(**env)``,
    its output appended to ``log_path``; the caller waits for it and stops it by PID."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gantry", *args],
            cwd=REPO, env=gantry_env(**env), stdout=log, stderr=log,
        )  # fmt: skip


def stop_process(
    process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Signal a process by its PID and wait; SIGKILL if it outlives ``timeout``."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


class GantryServer:
    """A ``gantry serve`` process with its stderr in a file; use as a context manager."""

    def __init__(
        self,
        app: str,
        *args: str,
        log_path: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        http: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        listen = ["--http", f"127.0.0.1:{self.port}"] if http else []
        self.command = [sys.executable, "-m", "gantry", "serve", app, *listen, *args]
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), (env or {}).get("PYTHONPATH"), os.environ.get("PYTHONPATH")])
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GantryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait_for: tuple[str, int] | str | None = None) -> None:
        """Start the process and wait (15 s at most) until its socket accepts."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        log.close()
        target = wait_for or ("127.0.0.1", self.port)
        try:
            wait_until_listening(
                target, self.process, what=" ".join(self.command[2:4]), log=self.log_text
            )
        except RuntimeError:
            self.stop()
            raise

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the process by its PID and wait; SIGKILL if it outlives ``timeout``."""
        return stop_process(self.process, signum, timeout)

    @property
    def pid(self) -> int:
        """The server's PID."""
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        """Everything the server wrote to stderr/stdout so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A new client connection to the HTTP socket."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


@dataclass
class Exchange:
    """What came back on one connection: the bytes, whether the server closed it, and how
    long that took."""

    data: bytes
    closed: bool
    elapsed: float

    @property
    def statuses(self) -> list[int]:
        """The status of every response, walking Content-Length and chunked framing."""
        return [status for status, _ in responses(self.data)]

    @property
    def status(self) -> int:
        """The status of the first response."""
        statuses = self.statuses
        assert statuses, "no response before the close"
        return statuses[0]


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """Every (status, body) in ``data``; a response without framing takes the rest."""
    found = []
    pos, end = 0, len(data)
    while pos < end:
        head_end = data.find(b"\r\n\r\n", pos)
        assert head_end >= 0, f"incomplete response head: {data[pos : pos + 200]!r}"
        status_line, *fields = data[pos:head_end].split(b"\r\n")
        pos = head_end + 4
        assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), status_line
        status = int(status_line.split(b" ", 2)[1])
        lowered = [f.lower() for f in fields]
        lengths = [f.split(b":", 1)[1] for f in lowered if f.startswith(b"content-length:")]
        if lengths:
            size = int(lengths[0])
            found.append((status, data[pos : pos + size]))
            pos += size
        elif b"transfer-encoding: chunked" in lowered:
            body = bytearray()
            while True:
                line_end = data.find(b"\r\n", pos)
                assert line_end >= 0, "chunked body cut short"
                size = int(data[pos:line_end], 16)
                pos = line_end + 2
                if size == 0:
                    assert data.startswith(b"\r\n", pos), "chunked body cut short"
                    pos += 2
                    break
                body += data[pos : pos + size]
                pos += size + 2
            found.append((status, bytes(body)))
        else:
            found.append((status, data[pos:]))
            break
    return found


def read_until_closed(sock: socket.socket, wait: float) -> Exchange:
    """Read until the server closes the connection or ``wait`` seconds pass."""
    started = time.monotonic()
    deadline = started + wait
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Exchange(bytes(data), False, time.monotonic() - started)
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""  # a reset (an abort) is a close too; what arrived before it is kept
        if not chunk:
            return Exchange(bytes(data), True, time.monotonic() - started)
        data += chunk


def read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Read until the peer closes or ``limit`` seconds pass."""
    return read_until_closed(sock, limit).data


class ClientLoad:
    """Client threads sending GETs to 127.0.0.1:``port`` until stopped, bounded by ``limit``
    seconds and ``max_requests`` in all; every failure is recorded, and the bodies seen.

    With ``keep_alive`` every other thread keeps its connection open and the others open a
    new one (``Connection: close``) for each request; otherwise every request has its own.
    A response that is not 200 (or whose body is not ``expect``, when given) is a failure.
    """

    def __init__(
        self,
        port: int,
        path: str = "/",
        threads: int = 3,
        *,
        keep_alive: bool = False,
        expect: bytes | None = None,
        limit: float = 60.0,
        max_requests: int = 200_000,
    ) -> None:
        self.port = port
        self.path = path
        self.threads = threads
        self.expect = expect
        self.max_requests = max_requests
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: set[bytes] = set()
        self.last_body = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._limit = limit
        self._workers = [
            threading.Thread(target=self._run, args=(keep_alive and i % 2 == 0,), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> ClientLoad:
        self._deadline = time.monotonic() + self._limit
        for thread in self._workers:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=15)

    def _run(self, keep: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self.ok + len(self.failures) >= self.max_requests:
                    break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", self.path, headers={} if keep else {"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or (self.expect is not None and body != self.expect):
                    raise RuntimeError(f"{response.status} {body[:200]!r}")
                with self._lock:
                    self.ok += 1
                    self.bodies.add(body)
                    self.last_body = body
                if not keep or response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and reported
                with self._lock:
                    self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)  # a server that is down is not hammered
        if conn is not None:
            conn.close()

    def count(self) -> int:
        """Requests answered so far."""
        with self._lock:
            return self.ok

    def wait_for(self, requests: int, limit: float = 10.0) -> None:
        """Block until ``requests`` more requests were answered, or ``limit`` seconds pass."""
        target = self.count() + requests
        wait_for(lambda: self.count() >= target, limit, interval=0.02)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class GantryUp(GantryServer):
    """A ``gantry up`` supervisor: the demo on a free port, or a config file whose
    ``FRONT_PORT`` placeholder is replaced by the port."""

    def __init__(self, workdir: Path, config: str | None = None, **kwargs: object) -> None:
        super().__init__("", log_path=workdir / "up.log", **kwargs)  # type: ignore[arg-type]
        if config is None:
            args = ["--listen", f"127.0.0.1:{self.port}"]
        else:
            self.config_path = workdir / "gantry.toml"
            self.config_path.write_text(config.replace("FRONT_PORT", str(self.port)))
            args = ["-c", str(self.config_path)]
        self.command = [sys.executable, "-m", "gantry", "up", *args]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        """Stop the supervisor by its PID; it stops its parts (graceful timeout + 5 s)."""
        return super().stop(signum, timeout)


class Front(GantryServer):
    """A ``gantry front -c FILE`` process; ``FRONT_PORT`` in the config becomes its port.
    ``path`` is the config file, ``log`` the file its output goes to."""

    def __init__(self, config: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__("", log_path=workdir / "front.log", env=env)
        self.path = workdir / "front.toml"
        self.path.write_text(config.replace("FRONT_PORT", str(self.port)))
        self.log = self.log_path
        self.command = [sys.executable, "-m", "gantry", "front", "-c", str(self.path)]

    def __enter__(self) -> Front:
        self.start()
        return self

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """One request on a fresh connection: the response and its body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()


@contextlib.contextmanager
def short_tempdir() -> Iterator[Path]:
    """A new folder with a short path (unix socket paths hold 107 bytes), removed after."""
    path = Path(tempfile.mkdtemp(prefix="g"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Launcher:
    """Starts the processes of one test (or module) in ``workdir`` and, on exit, stops every
    one of them by its PID, newest first, whether the test passed, failed or never started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stops = contextlib.ExitStack()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stops.close()

    def _folder(self, name: str) -> Path:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        return folder

    def serve(self, app: str, *args: str, name: str = "app", **kwargs: Any) -> GantryServer:
        """A started ``gantry serve``; ``wait_for`` (a unix path) when it has no HTTP socket."""
        wait = kwargs.pop("wait_for", None)
        server = GantryServer(app, *args, log_path=self.workdir / f"{name}.log", **kwargs)
        self._stops.callback(server.stop)
        server.start(wait_for=wait)
        return server

    def front(self, config: str, name: str = "front", env: dict[str, str] | None = None) -> Front:
        """A started ``gantry front`` (its files in ``workdir/name``)."""
        front = Front(config, self._folder(name), env)
        self._stops.callback(front.stop)
        front.start()
        return front

    def up(self, config: str | None = None, name: str = "up", **kwargs: Any) -> GantryUp:
        """A started ``gantry up`` supervisor (its files in ``workdir/name``)."""
        up = GantryUp(self._folder(name), config, **kwargs)
        self._stops.callback(up.stop)
        up.start()
        return up

    def nginx(self, upstream_socket: str, name: str = "nginx") -> Nginx:
        """A started nginx passing everything to a uwsgi unix socket (skips without nginx)."""
        from tests.e2e.nginx import Nginx

        binary = require_program("nginx")
        # nginx's workers run as nobody when started by root: they must traverse to the socket
        os.chmod(Path(upstream_socket).parent, 0o755)
        nginx = Nginx(binary, self._folder(name), free_port(), upstream_socket)
        self._stops.callback(nginx.stop)
        nginx.start()
        return nginx

    def program(
        self,
        argv: Sequence[str],
        ready: tuple[str, int] | str | Path,
        name: str,
        limit: float = 20.0,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        """Another server (uWSGI, gunicorn, a ``gantry`` command), started in ``cwd`` (the
        repository), once ``ready`` accepts; its output in ``workdir/name.log``; SIGTERM then
        SIGKILL on exit."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._stops.callback(stop_process, process)
        wait_until_listening(
            ready,
            process,
            limit=limit,
            what=name,
            log=lambda: log_path.read_text(errors="replace"),
        )
        return process
