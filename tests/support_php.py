"""A real php-fpm for tests: a pool of its own on a unix socket in a temp folder."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from tests.process import Launcher, require_program


def pool_config(folder: Path, socket: Path, children: int = 2) -> Path:
    """Write a php-fpm config with one static pool listening on ``socket``."""
    conf = folder / "php-fpm.conf"
    root = os.getuid() == 0
    owner = "user = nobody\ngroup = nogroup\n" if root else ""
    conf.write_text(
        f"""[global]
error_log = {folder / "php-fpm.log"}
daemonize = no
pid = {folder / "php-fpm.pid"}

[test]
{owner}listen = {socket}
listen.mode = 0666
pm = static
pm.max_children = {children}
catch_workers_output = yes
php_admin_value[post_max_size] = 64M
php_admin_value[upload_max_filesize] = 64M
php_admin_value[memory_limit] = 256M
php_admin_value[output_buffering] = 0
php_admin_flag[log_errors] = on
php_admin_value[display_errors] = off
"""
    )
    return conf


def start_php_fpm(
    launch: Launcher, folder: Path, socket: Path, name: str = "php-fpm", children: int = 2
) -> subprocess.Popen[bytes]:
    """A started php-fpm (-F, its own config and prefix), stopped by the launcher."""
    binary = require_program("php-fpm8.2", "php8.2-fpm")
    conf = pool_config(folder, socket, children)
    # -n: no php.ini of the system (its settings would differ between machines)
    return launch.program(
        [binary, "-F", "-n", "-y", str(conf), "-p", str(folder)], str(socket), name, cwd=folder
    )


def php_pool(
    launch: Launcher, base: Path, children: int = 2, name: str = "php-fpm"
) -> tuple[Path, Path]:
    """php-fpm with its files in ``base``/fpm (made, or reused by a restart): that folder
    and the pool's socket."""
    fpm = base / "fpm"
    fpm.mkdir(exist_ok=True)
    os.chmod(fpm, 0o755)  # the pool's children may be nobody
    sock = fpm / "php.sock"
    start_php_fpm(launch, fpm, sock, name, children)
    return fpm, sock


def fastcgi_front(sock: Path, locations: str, **upstream: int) -> str:
    """A front config: one listener (FRONT_PORT), the FastCGI upstream "php" on ``sock``
    with the keys given (read_timeout = 10, ...), then one server with ``locations``
    (TOML [[front.server.location]] tables)."""
    keys = "".join(f"{key} = {value}\n" for key, value in upstream.items())
    return f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]

[front.upstream.php]
protocol = "fastcgi"
servers = [ {{ address = "unix:{sock}" }} ]
{keys}
[[front.server]]
{locations}"""


class ScriptedPeer:
    """A FastCGI server of the test's own on a unix socket (a thread): each connection
    goes to ``serve``, which a subclass writes to answer as the case needs. A subclass
    sets its own attributes before calling this ``__init__``, which starts the thread."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        """Answer one connection (and close it, or keep it)."""
        conn.close()

    def close(self) -> None:
        """Stop accepting; the thread ends within a turn of its accept timeout."""
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
