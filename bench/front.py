"""Benchmark `gantry front` against nginx, one worker each, pinned like bench/run.py.

Five measurements, each printed as req/s (or MB) and a ratio to nginx:

1. a 1 KiB static file;
2. proxying to the same uWSGI backend over the uwsgi protocol (unix socket);
3. the 1 KiB file over HTTPS, keep-alive (TLS 1.3, the same ECDSA P-256 certificate);
4. the 1 KiB file over HTTPS with a new TLS connection per request (wrk sends
   Connection: close): handshakes per second, X25519 key exchange on both sides;
5. one front worker holding 10,000 idle keep-alive connections: its RSS, and
   whether it still answers.

Run: `python bench/front.py [--duration 10] [--rounds 2]` (after `python bench/run.py`
has created .venv-bench with uWSGI).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402 - the sibling module, imported as a script
    REPO_ROOT,
    VENV_BIN,
    RoundResult,
    ServerProcess,
    WrkResult,
    app_report,
    free_port,
    machine_info,
    parse_wrk,
    summarize,
    write_report,
)

STATIC = bytes(range(256)) * 4  # 1 KiB
#: load name -> (short key in the JSON report, path, over TLS, a connection per request)
LOADS = {
    "static 1 KiB": ("static", "/static/one.bin", False, False),
    "proxy to uWSGI": ("proxy", "/hello", False, False),
    "https 1 KiB": ("https_static", "/static/one.bin", True, False),
    "https handshakes": ("https_handshakes", "/static/one.bin", True, True),
}
IDLE_CONNECTIONS = 10_000


def wrk(
    port: int, path: str, duration: int, cpu: int, tls: bool = False, close: bool = False
) -> WrkResult:
    """wrk -t1 -c50 pinned to ``cpu`` against ``path`` (https with ``tls``; a new
    connection per request with ``close``)."""
    scheme = "https" if tls else "http"
    command = [
        "taskset", "-c", str(cpu), "wrk", "-t1", "-c50", f"-d{duration}s", "--latency",
        *(["-H", "Connection: close"] if close else []),
        f"{scheme}://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(done.stdout)


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


def wait_port(port: int, limit: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:``port``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def make_certificate(work: Path) -> tuple[Path, Path]:
    """One self-signed ECDSA P-256 certificate both fronts serve (openssl)."""
    cert, key = work / "bench.crt", work / "bench.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=bench.test", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def nginx_conf(work: Path, port: int, site: Path, sock: Path) -> Path:
    """One worker, sendfile on, the same two locations as the gantry config."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
daemon off; master_process on; worker_processes 1; user root;
error_log {work}/nginx-error.log warn; pid {work}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  include /etc/nginx/mime.types;
  ssl_certificate {work}/bench.crt; ssl_certificate_key {work}/bench.key;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
  server {{
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{port + 1} ssl;
    location /static/ {{ root {site}; }}
    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass unix:{sock}; }}
  }}
}}
"""
    )
    return conf


def gantry_conf(work: Path, port: int, site: Path, sock: Path) -> Path:
    """The same as nginx_conf, for `gantry front`."""
    conf = work / "front.toml"
    conf.write_text(
        f"""
[front]
listen = ["127.0.0.1:{port}", "127.0.0.1:{port + 1} ssl"]
workers = 1
[[front.server]]
default = true
ssl_certificate = "{work}/bench.crt"
ssl_certificate_key = "{work}/bench.key"
[[front.server.location]]
path = "/static/"
root = "{site}"
[[front.server.location]]
path = "/"
proxy = "app"
[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
"""
    )
    return conf


def idle_connections(port: int, pid: int, count: int) -> tuple[float, bool]:
    """Open ``count`` keep-alive connections, one request each; the worker's RSS in MB, then
    whether a new request is still answered."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 1000, count + 1000))
    sockets = []
    request = b"GET /static/one.bin HTTP/1.1\r\nHost: b\r\n\r\n"
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            sockets.append(sock)
        for sock in sockets:
            sock.recv(65536)
        rss = 0.0
        for child in [pid, *children(pid)]:
            rss = max(rss, rss_mb(child))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
            probe.sendall(request)
            answered = probe.recv(100).startswith(b"HTTP/1.1 200")
        return rss, answered
    finally:
        for sock in sockets:
            sock.close()


def children(pid: int) -> list[int]:
    """Child PIDs (a master's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    """Run both fronts on both loads, interleaved, and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(VENV_BIN / "uwsgi").exists():
        print("run `python bench/run.py` first: it builds .venv-bench with uWSGI", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gfront-") as tmp:
        work = Path(tmp)
        site = work / "site"
        (site / "static").mkdir(parents=True)
        (site / "static" / "one.bin").write_bytes(STATIC)
        sock = work / "app.sock"
        make_certificate(work)
        backend = ServerProcess(
            [str(VENV_BIN / "uwsgi"), "--socket", str(sock), "--chmod-socket=666", "--wsgi",
             "bench.apps:hello", "--chdir", str(REPO_ROOT), "--processes", "1", "--master",
             "--disable-logging", "--die-on-term"],
            0, work / "uwsgi.log",
        )  # fmt: skip
        backend.start()
        time.sleep(1.5)
        best: dict[tuple[str, str], float] = {}
        rounds: list[RoundResult] = []
        idle: dict[str, tuple[float, bool]] = {}
        #: (load, round, front) -> req/s
        paired: dict[tuple[str, int, str], float] = {}
        try:
            for round_no in range(1, args.rounds + 1):
                # Both fronts run through the round (the idle one costs nothing), and each
                # load goes to one right after the other, the first alternating by round:
                # the pair is measured minutes closer than one front's loads then the
                # other's, and this machine's speed drifts within minutes.
                servers: dict[str, tuple[ServerProcess, int]] = {}
                try:
                    for name in ("nginx", "gantry"):
                        port = free_pair()  # port: HTTP, port + 1: HTTPS
                        if name == "nginx":
                            command = [nginx, "-p", str(work), "-c",
                                       str(nginx_conf(work, port, site, sock))]  # fmt: skip
                        else:
                            command = [str(VENV_BIN / "gantry"), "front", "-c",
                                       str(gantry_conf(work, port, site, sock))]  # fmt: skip
                        server = ServerProcess(command, 0, work / f"{name}.log")
                        servers[name] = (server, port)
                        server.start()
                        wait_port(port)
                    order = ("nginx", "gantry") if round_no % 2 else ("gantry", "nginx")
                    for load, (_, path, tls, close) in LOADS.items():
                        for name in order:
                            port = servers[name][1] + (1 if tls else 0)
                            wrk(port, path, 2, 1, tls, close)
                            result = wrk(port, path, args.duration, 1, tls, close)
                            print(f"  round {round_no} {name:6} {load:15} {result.rps:9.0f} req/s"
                                  f" ({result.errors} errors)", flush=True)  # fmt: skip
                            best[name, load] = max(best.get((name, load), 0.0), result.rps)
                            paired[load, round_no, name] = result.rps
                            rounds.append(RoundResult(name, load, round_no, True, wrk=result))
                    if round_no == 1:
                        for name, (server, port) in servers.items():
                            assert server.proc is not None
                            idle[name] = idle_connections(port, server.proc.pid, IDLE_CONNECTIONS)
                finally:
                    for server, _ in servers.values():
                        server.stop()
        finally:
            backend.stop()
    print("\nload              nginx req/s  gantry req/s  gantry/nginx")
    for load in LOADS:
        n, g = best["nginx", load], best["gantry", load]
        print(f"{load:16} {n:12.0f} {g:13.0f} {g / n:12.2f}x")
    for load in LOADS:
        ratios = [
            paired[load, r, "gantry"] / paired[load, r, "nginx"]
            for r in range(1, args.rounds + 1)
            if paired.get((load, r, "nginx"))
        ]
        listed = ", ".join(f"{value:.2f}" for value in ratios)
        print(f"{load}: paired rounds {listed}; median {statistics.median(ratios):.2f}x")
    for name, (rss, answered) in idle.items():
        print(f"{IDLE_CONNECTIONS} idle keep-alive connections, {name}: worker RSS {rss:.0f} MB, "
              f"still answering: {answered}")  # fmt: skip
    report: dict[str, Any] = {
        "bench": "front",
        "baseline": "nginx",
        "machine": machine_info(),
        "settings": {"duration": args.duration, "rounds": args.rounds, "connections": 50},
        "apps": {},
        "idle": {name: {"rss_mb": rss, "answering": ok} for name, (rss, ok) in idle.items()},
    }
    for load, (key, path, _, _) in LOADS.items():
        of_load = [r for r in rounds if r.app == load]
        summaries = [summarize(of_load, name, "best") for name in ("nginx", "gantry")]
        report["apps"][key] = app_report(path, summaries)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
