"""What the front benches share (front.py, idle_many.py, front_defences.py, http2.py,
websocket.py): this tree's gantry ahead of the bench venv's, the commands that start nginx
and a gantry front, starting one and waiting for its port, the 1 KiB static file and the
clients the blocklist loads name, and a server's CPU time and memory read from /proc.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import REPO_ROOT, VENV_BIN, ServerProcess, free_port  # noqa: E402

#: the static file the loads ask for
STATIC = bytes(range(256)) * 4  # 1 KiB
#: the client the blocklist refuses, and one it lets through (named by X-Forwarded-For)
BLOCKED_CLIENT = "192.0.2.1"
PASSING_CLIENT = "198.51.100.1"


def this_tree_first() -> None:
    """Servers started from now on import this tree's gantry (its src, and its compiled
    build if any), not the one .venv-bench has installed (editable, another tree)."""
    src = str(REPO_ROOT / "src")
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if src not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, *paths]))


def nginx_command(work: Path, conf: Path) -> list[str]:
    """nginx in the foreground of ``conf``, its prefix ``work``."""
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(work), "-c", str(conf)]


def gantry_front_command(conf: Path) -> list[str]:
    """``gantry front`` of ``conf`` (the bench venv's entry point, else this Python's)."""
    this_tree_first()
    gantry = VENV_BIN / "gantry"
    program = [str(gantry)] if gantry.exists() else [sys.executable, "-m", "gantry"]
    return [*program, "front", "-c", str(conf)]


def wait_port(port: int, limit: float = 20.0, pid: int | None = None) -> None:
    """Until something accepts on 127.0.0.1:``port``; raise after ``limit`` seconds, or
    as soon as process ``pid`` (the server) is gone."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if pid is not None and not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_server(
    command: list[str], cpus: int | str, log: Path, port: int, limit: float = 20.0
) -> ServerProcess:
    """``command`` started pinned to ``cpus`` (its output in ``log``), once it accepts on
    ``port``; stopped again if it never does."""
    server = ServerProcess(command, cpus, log)
    server.start()
    assert server.proc is not None
    try:
        wait_port(port, limit, server.proc.pid)
    except BaseException:
        server.stop()
        raise
    return server


def free_pair() -> int:
    """A free port whose next one is free too (HTTP, then HTTPS)."""
    for _ in range(100):
        port = free_port()
        try:
            socket.create_server(("127.0.0.1", port + 1)).close()
        except OSError:
            continue
        return port
    raise RuntimeError("no two free ports in a row")


def make_site(work: Path, *folders: str) -> Path:
    """``work``/site with STATIC as ``one.bin`` in each of ``folders``."""
    site = work / "site"
    for folder in folders:
        (site / folder).mkdir(parents=True, exist_ok=True)
        (site / folder / "one.bin").write_bytes(STATIC)
    return site


def children(pid: int) -> list[int]:
    """Child PIDs (a master's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) used so far by ``pid`` and its children
    (a front's master and workers)."""
    total = 0.0
    for member in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def status_kb(pid: int, field: str) -> int:
    """A process's ``VmRSS`` (from its status) or ``Pss`` (from smaps_rollup), in KiB."""
    try:
        text = Path(f"/proc/{pid}/{'status' if field == 'VmRSS' else 'smaps_rollup'}").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    return status_kb(pid, "VmRSS") / 1024
