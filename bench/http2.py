"""Benchmark HTTP/2 at the front against nginx, one worker each, pinned to CPU 0 (the
client on CPU 1): `h2load -c 50 -m 10` for a 1 KiB static file over TLS (issue 18's
goals: >= 0.5x nginx, and >= 1.0x Gantry's own HTTPS/1.1 figure).

Each round measures, one right after the other: gantry h2, nginx h2, gantry HTTPS/1.1
and nginx HTTPS/1.1 (wrk -c50 keep-alive, as bench/front.py's "https 1 KiB", on the
same listeners: ALPN gives HTTP/1.1 to a client that does not offer h2). The figures
are req/s; the ratios are paired within a round, then the median of the rounds. The
front's own CPU time per request is printed too (it moves less with the machine's
other load than req/s does).

    python bench/http2.py --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from front import make_certificate, wrk  # noqa: E402 - sibling modules, imported as scripts
from fronts import (  # noqa: E402
    free_pair,
    gantry_front_command,
    make_site,
    nginx_command,
    start_server,
    this_tree_first,
    tree_cpu,
)
from run import ServerProcess, machine_info  # noqa: E402

#: what is measured: (label, front, protocol)
LOADS = [
    ("gantry h2", "gantry", "h2"),
    ("nginx h2", "nginx", "h2"),
    ("gantry https/1.1", "gantry", "h1"),
    ("nginx https/1.1", "nginx", "h1"),
]


def nginx_conf(work: Path, port: int, site: Path) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
daemon off; master_process on; worker_processes 1; user root;
error_log {work}/nginx-error.log warn; pid {work}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  http2_max_requests 1000000;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  ssl_certificate {work}/bench.crt; ssl_certificate_key {work}/bench.key;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    location /static/ {{ root {site}; }}
  }}
}}
"""
    )
    return conf


def gantry_conf(work: Path, port: int, site: Path) -> Path:
    conf = work / "front.toml"
    conf.write_text(
        f"""
[front]
listen = ["127.0.0.1:{port} ssl h2"]
workers = 1
keepalive_requests = 1000000
[[front.server]]
ssl_certificate = "{work}/bench.crt"
ssl_certificate_key = "{work}/bench.key"
[[front.server.location]]
path = "/static/"
root = "{site}"
"""
    )
    return conf


def h2load(port: int, requests: int) -> tuple[float, int, int]:
    """h2load -c 50 -m 10 over TLS for ``requests`` requests, pinned to CPU 1: (req/s,
    requests succeeded, failed). By count, not -D: with -D, h2load 1.52 against
    gantry on uvloop's TLS often never began its measured period (its clients kept
    going until killed; asyncio's loop, nginx and -n did not show it)."""
    done = subprocess.run(
        ["taskset", "-c", "1", "h2load", "-c", "50", "-m", "10", "-t", "1", "-n", str(requests),
         f"https://127.0.0.1:{port}/static/one.bin"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", done.stdout)
    counts = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
    )
    if rate is None or counts is None:
        raise RuntimeError(f"h2load said: {done.stdout}\n{done.stderr}")
    succeeded = int(counts.group(2))
    return float(rate.group(1)), succeeded, int(counts.group(1)) - succeeded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    this_tree_first()
    print(f"machine: {machine_info()}; load average {os.getloadavg()}", flush=True)
    rps: dict[tuple[str, int], float] = {}
    cpu_us: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="gh2-") as tmp:
        work = Path(tmp)
        for name in ("body", "proxy"):
            (work / name).mkdir()
        site = make_site(work, "static")
        make_certificate(work)
        for round_no in range(1, args.rounds + 1):
            servers: dict[str, tuple[ServerProcess, int]] = {}
            try:
                for name in ("nginx", "gantry"):
                    port = free_pair()
                    if name == "nginx":
                        command = nginx_command(work, nginx_conf(work, port, site))
                    else:
                        command = gantry_front_command(gantry_conf(work, port, site))
                    servers[name] = (start_server(command, 0, work / f"{name}.log", port), port)
                loads = LOADS if round_no % 2 else [LOADS[1], LOADS[0], LOADS[3], LOADS[2]]
                for label, name, protocol in loads:
                    server, port = servers[name]
                    assert server.proc is not None
                    if protocol == "h2":
                        # the warm-up's rate sizes the measured run to about --duration
                        warm, *_ = h2load(port, 2000)
                        count = max(2000, int(warm * args.duration))
                        before = tree_cpu(server.proc.pid)
                        rate, requests, failed = h2load(port, count)
                    else:
                        wrk(port, "/static/one.bin", 2, 1, tls=True)
                        before = tree_cpu(server.proc.pid)
                        result = wrk(port, "/static/one.bin", args.duration, 1, tls=True)
                        rate, requests, failed = result.rps, result.requests, result.errors
                    per = (tree_cpu(server.proc.pid) - before) * 1e6 / max(requests, 1)
                    rps[label, round_no] = rate
                    cpu_us[label, round_no] = per
                    print(f"  round {round_no} {label:17} {rate:9.0f} req/s {per:6.0f} us "
                          f"CPU/request ({failed} failed)", flush=True)  # fmt: skip
            finally:
                for server, _ in servers.values():
                    server.stop()
    rounds = range(1, args.rounds + 1)

    def median_ratio(a: str, b: str) -> float:
        ratios = [rps[a, r] / rps[b, r] for r in rounds if rps.get((b, r))]
        listed = ", ".join(f"{value:.2f}" for value in ratios)
        median = statistics.median(ratios)
        print(f"{a} / {b}: paired rounds {listed}; median {median:.2f}x")
        return median

    print("\nload               median req/s   median us CPU/request")
    for label, *_ in LOADS:
        print(f"{label:18} {statistics.median(rps[label, r] for r in rounds):12.0f}"
              f" {statistics.median(cpu_us[label, r] for r in rounds):12.0f}")  # fmt: skip
    versus_nginx = median_ratio("gantry h2", "nginx h2")
    versus_h1 = median_ratio("gantry h2", "gantry https/1.1")
    median_ratio("gantry https/1.1", "nginx https/1.1")
    median_ratio("nginx h2", "nginx https/1.1")
    for what, value, goal in (("nginx h2", versus_nginx, 0.5), ("own HTTPS/1.1", versus_h1, 1.0)):
        print(f"goal: gantry h2 / {what} >= {goal}x: {value:.2f}x, "
              f"{'met' if value >= goal else 'NOT met'}")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
