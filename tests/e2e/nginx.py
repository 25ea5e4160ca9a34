"""Running a real nginx for a test, in front of a unix uwsgi socket, stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.process import require_program, stop_process, wait_until_listening

__all__ = ["Nginx", "require_program"]


UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")


class Nginx:
    """nginx with one server block passing everything to a uwsgi unix socket."""

    def __init__(self, binary: str, workdir: Path, port: int, upstream_socket: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.conf = workdir / "nginx.conf"
        # When started as root, nginx's workers run as nobody: that user must be
        # able to reach the socket, so the directory is traversable and the
        # socket world-writable (--uwsgi-socket-mode 666 on the gantry side).
        os.chmod(workdir, 0o755)
        if not UWSGI_PARAMS.exists():
            pytest.fail(f"{UWSGI_PARAMS} missing: nginx's own uwsgi_params are needed")
        temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        self.conf.write_text(
            f"""
daemon off;
master_process on;
worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_max_body_size 64m;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen 127.0.0.1:{port};
        server_name example.test;
        location / {{
            include {UWSGI_PARAMS};
            uwsgi_pass unix:{upstream_socket};
        }}
    }}
}}
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start nginx and wait (10 s at most) until it accepts connections."""
        log = (self.workdir / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.conf)], stdout=log, stderr=log
        )
        log.close()
        try:
            wait_until_listening(
                ("127.0.0.1", self.port), self.process, limit=10, what="nginx", log=self.log_text
            )
        except RuntimeError:
            self.stop()
            raise

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Graceful stop by PID (SIGQUIT), SIGKILL after 10 s."""
        stop_process(self.process, signal.SIGQUIT)

    def log_text(self) -> str:
        """nginx's stderr and error log."""
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)
