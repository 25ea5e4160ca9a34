"""Running a real ``gantry serve`` for a test: start, wait until it listens, stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"gantry serve exited with {code}:\n{self.log_text()[-3000:]}")
            try:
                family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
                with socket.socket(family) as probe:
                    probe.settimeout(0.2)
                    probe.connect(target)
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gantry serve did not listen within 15 s:\n{self.log_text()[-3000:]}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the process by its PID and wait; SIGKILL if it outlives ``timeout``."""
        process = self.process
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


def read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Read until the peer closes or ``limit`` seconds pass."""
    sock.settimeout(limit)
    chunks = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break  # an abort (RST) is a close too
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


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
