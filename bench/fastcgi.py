"""hello.php through Gantry's front and through nginx's fastcgi_pass, to one php-fpm
pool (one child), each front pinned to CPU 1, php-fpm and wrk to CPU 0 (issue 20).

Usage: python -m bench.fastcgi [--duration 5] [--rounds 3] [--requests N] [--baseline TREE]

Each round: requests/s under wrk, then the CPU time of each front's worker per request
(utime + stime from /proc over h2load -n N), which the other load on a shared
machine changes much less than requests/s.
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


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids``, from /proc (in seconds)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_per_request(port: int, workers: list[int], requests: int) -> tuple[float, float]:
    """(µs of the front's workers' CPU per request, req/s) over ``requests`` requests sent
    by h2load: a figure the other load on a shared machine does not change much."""
    before = _cpu_seconds(workers)
    command = ["taskset", "-c", "0", "h2load", "--h1", "-n", str(requests), "-c", "16",
               "-t", "1", f"http://127.0.0.1:{port}/hello.php"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    used = _cpu_seconds(workers) - before
    if f"{requests} succeeded" not in done.stdout:
        raise RuntimeError(f"h2load on port {port}: {done.stdout[-500:]}")
    rate = float(done.stdout.split("finished in ")[1].split(",")[1].split()[0])
    return used / requests * 1e6, rate


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print requests/s of each front and Gantry's ratio to nginx."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, default=20000, help="requests of each CPU-time measure"
    )
    parser.add_argument(
        "--baseline", help="another source tree whose gantry front is measured beside this one"
    )
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
    nginx_port = free_port()
    (work / "nginx.conf").write_text(
        f"worker_processes 1;\ndaemon off;\npid {work}/nginx.pid;\nerror_log {work}/nginx.err;\n"
        "events { worker_connections 1024; }\nhttp {\n access_log off;\n server {\n"
        f"  listen 127.0.0.1:{nginx_port};\n  root {site};\n  location ~ \\.php$ {{\n"
        f"   try_files $uri =404;\n   fastcgi_pass unix:{sock};\n"
        "   include /etc/nginx/fastcgi_params;\n"
        "   fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n  }\n }\n}\n"
    )
    os.environ.setdefault("GANTRY_ALLOW_ROOT", "1")
    fpm = ServerProcess([FPM, "-F", "-n", "-y", str(work / "fpm.conf"), "-p", str(work)], 0,
                        work / "fpm.out")  # fmt: skip
    nginx = ServerProcess(["nginx", "-c", str(work / "nginx.conf")], 1, work / "nginx.out")
    # this tree's gantry, and another tree's (--baseline) measured in the same rounds
    trees = [("gantry", str(Path(__file__).resolve().parent.parent / "src"))]
    if args.baseline:
        trees.append(("baseline", str(Path(args.baseline) / "src")))
    fronts: list[tuple[str, int, ServerProcess]] = []
    for name, src in trees:
        port = free_port()
        (work / f"{name}.toml").write_text(
            f'[front]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\n[front.upstream.php]\n'
            f'protocol = "fastcgi"\nservers = [ {{ address = "unix:{sock}" }} ]\n'
            f'[[front.server]]\n[[front.server.location]]\nmodifier = "~"\npath = "\\\\.php$"\n'
            f'root = "{site}"\ntry_files = ["$uri", "=404"]\nproxy = "php"\n'
        )
        command = ["env", f"PYTHONPATH={src}", sys.executable, "-m", "gantry", "front", "-c",
                   str(work / f"{name}.toml")]  # fmt: skip
        fronts.append((name, port, ServerProcess(command, 1, work / f"{name}.out")))
    try:
        fpm.start()
        nginx.start()
        for _, _, front in fronts:
            front.start()
        _ready(nginx_port)
        for _, port, _ in fronts:
            _ready(port)
        assert nginx.proc is not None
        # taskset execs the server: its pid is the master's, the workers its children
        # (gantry front with workers = 1 is one process, serving itself)
        nginx_workers = _children(nginx.proc.pid)
        for round_no in range(1, args.rounds + 1):
            # the fronts in turn, so all see the same machine in each round
            theirs = _wrk(nginx_port, args.duration)
            line = [f"round {round_no}: wrk nginx {theirs:.0f} req/s"]
            for name, port, _ in fronts:
                ours = _wrk(port, args.duration)
                line.append(f"{name} {ours:.0f} req/s ({ours / theirs:.2f}x)")
            print(", ".join(line))
            their_cpu, their_rate = _cpu_per_request(nginx_port, nginx_workers, args.requests)
            line = [f"  h2load -n {args.requests}: nginx {their_rate:.0f} req/s, "
                    f"{their_cpu:.0f} us CPU a request"]  # fmt: skip
            for name, port, front in fronts:
                assert front.proc is not None
                workers = _children(front.proc.pid) or [front.proc.pid]
                our_cpu, our_rate = _cpu_per_request(port, workers, args.requests)
                line.append(
                    f"{name} {our_rate:.0f} req/s ({our_rate / their_rate:.2f}x), "
                    f"{our_cpu:.0f} us CPU ({our_cpu / their_cpu:.2f}x)"
                )
            print("; ".join(line))
    finally:
        for _, _, front in fronts:
            front.stop()
        nginx.stop()
        fpm.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
