"""hello.php through Gantry's front and through nginx's fastcgi_pass, to one php-fpm
pool (one child), each front pinned to CPU 1, php-fpm and wrk to CPU 0 (issue 20).

Usage: python -m bench.fastcgi [--duration 5] [--rounds 3]
Neither side keeps its connections to php-fpm: with one child a kept connection would
hold it (nginx's fastcgi_keep_conn needs as many children as kept connections)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import ServerProcess, free_port, parse_wrk

FPM = "/usr/sbin/php-fpm8.2"


def _ready(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["curl", "-s", "-m", "2", f"http://127.0.0.1:{port}/hello.php"],
            capture_output=True,
            check=False,
        )
        if done.stdout == b"hello\n":
            return
        time.sleep(0.1)
    raise RuntimeError(f"no hello on port {port} within {timeout:.0f} s")


def _wrk(port: int, duration: int) -> float:
    command = ["taskset", "-c", "0", "wrk", "-t1", "-c16", f"-d{duration}s", "--latency",
               f"http://127.0.0.1:{port}/hello.php"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    result = parse_wrk(done.stdout)
    if result.errors:
        raise RuntimeError(f"wrk saw {result.errors} errors on port {port}")
    return result.rps


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print requests/s of each front and Gantry's ratio to nginx."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not (os.access(FPM, os.X_OK) and shutil.which("nginx") and shutil.which("wrk")):
        print("needs php-fpm8.2, nginx and wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gfcgi"))
    os.chmod(work, 0o755)
    site = work / "site"
    site.mkdir(mode=0o755)
    (site / "hello.php").write_text('<?php echo "hello\\n";\n')
    sock = work / "php.sock"
    owner = "user = nobody\ngroup = nogroup\n" if os.getuid() == 0 else ""
    (work / "fpm.conf").write_text(
        f"[global]\nerror_log = {work}/fpm.log\ndaemonize = no\n[b]\n{owner}"
        f"listen = {sock}\nlisten.mode = 0666\npm = static\npm.max_children = 1\n"
    )
    nginx_port, front_port = free_port(), free_port()
    (work / "nginx.conf").write_text(
        f"worker_processes 1;\ndaemon off;\npid {work}/nginx.pid;\nerror_log {work}/nginx.err;\n"
        "events { worker_connections 1024; }\nhttp {\n access_log off;\n server {\n"
        f"  listen 127.0.0.1:{nginx_port};\n  root {site};\n  location ~ \\.php$ {{\n"
        f"   try_files $uri =404;\n   fastcgi_pass unix:{sock};\n"
        "   include /etc/nginx/fastcgi_params;\n"
        "   fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n  }\n }\n}\n"
    )
    (work / "front.toml").write_text(
        f'[front]\nlisten = ["127.0.0.1:{front_port}"]\nworkers = 1\n'
        f'[front.upstream.php]\nprotocol = "fastcgi"\nservers = [ {{ address = "unix:{sock}" }} ]\n'
        f'[[front.server]]\n[[front.server.location]]\nmodifier = "~"\npath = "\\\\.php$"\n'
        f'root = "{site}"\ntry_files = ["$uri", "=404"]\nproxy = "php"\n'
    )
    os.environ.setdefault("GANTRY_ALLOW_ROOT", "1")
    fpm = ServerProcess([FPM, "-F", "-n", "-y", str(work / "fpm.conf"), "-p", str(work)], 0,
                        work / "fpm.out")  # fmt: skip
    nginx = ServerProcess(["nginx", "-c", str(work / "nginx.conf")], 1, work / "nginx.out")
    front = ServerProcess(
        [sys.executable, "-m", "gantry", "front", "-c", str(work / "front.toml")],
        1,
        work / "front.out",
    )
    try:
        fpm.start()
        nginx.start()
        front.start()
        _ready(nginx_port)
        _ready(front_port)
        for round_no in range(1, args.rounds + 1):
            # the two fronts in turn, so both see the same machine in each round
            theirs = _wrk(nginx_port, args.duration)
            ours = _wrk(front_port, args.duration)
            print(
                f"round {round_no}: nginx {theirs:.0f} req/s, gantry {ours:.0f} req/s, "
                f"gantry/nginx {ours / theirs:.2f}x"
            )
    finally:
        for process in (front, nginx, fpm):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
