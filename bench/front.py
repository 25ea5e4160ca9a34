"""Benchmark `gantry front` against nginx, one worker each, pinned like bench/run.py.

The measurements, each printed as req/s (or MB) and a ratio to nginx:

1. a 1 KiB static file;
2. proxying to the same uWSGI backend over the uwsgi protocol (unix socket);
3. the HTTP cache: hits of one cached 1 KiB proxied response; misses (every request a
   URL never asked before, so each is fetched and stored), against the same requests
   to a location without a cache (each front against itself);
4. one front worker holding 10,000 idle keep-alive connections: its RSS, and
   whether it still answers;
5. the same 1 KiB file through a location with a limit_req zone whose rate it never
   reaches (issue 16): each front's cost of a limit that passes, as a ratio to its own
   figure for (1);
6. gzip on the fly (issue 17): a 100 KiB HTML file at gzip_comp_level 1, asked with
   Accept-Encoding: gzip (gzip only on both sides);
7. the 1 KiB file over HTTPS, keep-alive (TLS 1.3, the same ECDSA P-256 certificate);
8. the 1 KiB file over HTTPS with a new TLS connection per request (wrk sends
   Connection: close): handshakes per second, X25519 key exchange on both sides;
9. the 1 KiB file over plain HTTP with a new connection per request (static_close): the
   cost of a connection's set-up and tear-down without TLS's, beside (8).

Run: `python bench/front.py [--duration 10] [--rounds 2] [--loads cache_hit,...]
[--no-idle]` (after `python bench/run.py` has created .venv-bench with uWSGI): one entry
point, and --loads names what runs. Besides the loads above (all of them by default),
three loads bring their own servers and rounds and run only when named:

- `blocklist` (no uWSGI needed): requests the blocklist refuses (403) against nginx's
  `deny` (both behind realip, the client named by X-Forwarded-For), and a static file
  through a 100,000-entry blocklist against an empty one;
- `slow_clients`: a static file's throughput while 1,000 connections each send a request
  head one byte a second (reconnecting when cut), against the same without them, for
  gantry and nginx side by side;
- `idle_many`: `--idle-connections N` (100,000) idle keep-alive connections (from
  127.0.0.2, 127.0.0.3, ... for enough source ports; the file limit raised, as root) on
  a 2-worker gantry front and a 2-worker nginx, one after the other: each one's total RSS,
  its bytes per connection and the projection to 100,000 (base + per connection x
  100,000), and whether it still answers. Where the file limit cannot be raised (a
  container: 20,000 a process), the clients are spread over processes and each worker
  holds what its limit allows (`--idle-connections 36000` on 2 workers); the report says
  plainly that 100,000 was not held.

Each run writes one JSON report (--json): the loads' figures as before, and each of
those three under its own key.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fronts import (  # noqa: E402 - sibling modules, imported as scripts
    BLOCKED_CLIENT,
    PASSING_CLIENT,
    children,
    free_pair,
    gantry_front_command,
    make_site,
    nginx_command,
    rss_mb,
    start_server,
    this_tree_first,
    tree_cpu,
)
from idle_many import idle_bench  # noqa: E402
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

#: load name -> (short key in the JSON report, path, every request a new URL under it,
#: over TLS, a connection per request)
LOADS = {
    "static 1 KiB": ("static", "/static/one.bin", False, False, False),
    # the plain-HTTP part of a new connection per request, without TLS's
    "static, close": ("static_close", "/static/one.bin", False, False, True),
    "proxy to uWSGI": ("proxy", "/hello", False, False, False),
    "cache hit 1 KiB": ("cache_hit", "/cached/hit", False, False, False),
    "cache miss 1 KiB": ("cache_miss", "/cached/", True, False, False),
    "cache off 1 KiB": ("cache_off", "/uncached/", True, False, False),
    "static, limit_req": ("limited", "/limited/one.bin", False, False, False),
    "gzip 100 KiB": ("gzip", "/gzip/page.html", False, False, False),
    "https 1 KiB": ("https_static", "/static/one.bin", False, True, False),
    "https handshakes": ("https_handshakes", "/static/one.bin", False, True, True),
}
#: load -> the request field wrk sends with it
LOAD_FIELDS = {"gzip 100 KiB": "Accept-Encoding: gzip"}
#: (load, its baseline load): the same front's figures compared with each other
SELF_RATIOS = [("cache miss 1 KiB", "cache off 1 KiB"), ("static, limit_req", "static 1 KiB")]
#: the goals of issue 15: (load, compared with "nginx" or a baseline load, at least)
GOALS = [
    ("cache hit 1 KiB", "nginx", 1.5),
    ("cache miss 1 KiB", "cache off 1 KiB", 0.9),
    ("gzip 100 KiB", "nginx", 0.9),  # issue 17
]
IDLE_CONNECTIONS = 10_000

# wrk's request() hook: each request asks for PREFIX<n>, n counting up, so that no URL
# is asked twice (a new prefix per run). Each call costs wrk a little Lua; the cache-off
# load uses the same script, so the pair stays comparable.
UNIQUE_URLS_LUA = """
local prefix, n = "/", 0
function init(args) prefix = args[1] end
function request()
  n = n + 1
  return wrk.format("GET", prefix .. n)
end
"""


def html_page(size: int) -> bytes:
    """``size`` bytes of an HTML page as sites send them: markup and varied text, which
    level 1 compresses to about a third (not a repeated line, which it makes nothing of)."""
    words = "gantry front server worker proxy cache static upstream request response".split()
    out: list[str] = ["<!doctype html><html><head><title>bench</title></head><body>\n"]
    state, size_so_far = 7, 0
    while size_so_far < size:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        line = (
            f'<p class="c{state % 13}">{words[state % 10]} {state % 100003} '
            + " ".join(words[(state >> k) % 10] for k in range(3, 15, 3))
            + "</p>\n"
        )
        out.append(line)
        size_so_far += len(line)
    return "".join(out).encode()[:size]


def wrk(
    port: int,
    path: str,
    duration: int,
    cpu: int,
    script: Path | None = None,
    tag: str = "",
    client: str = "",
    field: str = "",
    tls: bool = False,
    close: bool = False,
) -> WrkResult:
    """wrk -t1 -c50 pinned to ``cpu`` against ``path``; with ``script`` (the unique-URL
    one), against ``path`` + ``tag`` + a counter; as ``client`` (by X-Forwarded-For);
    with the request ``field`` ("Name: value"); https with ``tls``; a new connection per
    request with ``close``."""
    header = ["-H", f"X-Forwarded-For: {client}"] if client else []
    if field:
        header += ["-H", field]
    scheme = "https" if tls else "http"
    command = [
        "taskset", "-c", str(cpu), "wrk", "-t1", "-c50", f"-d{duration}s", "--latency",
        *header, *(["-H", "Connection: close"] if close else []),
        f"{scheme}://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    if script is not None:
        command[-1:-1] = ["-s", str(script)]
        command += ["--", f"{path}{tag}-"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(done.stdout)


def cache_status(port: int, path: str) -> str:
    """How the front says it answered ``path`` (its Cache-Status or X-Cache field)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() in (b"cache-status", b"x-cache"):
            return value.strip().decode("latin-1")
    return "(none)"


def check_caching(port: int, name: str) -> None:
    """A new URL is a miss and then a hit: the cache loads measure what they claim."""
    path = f"/cached/probe-{name}-{time.monotonic_ns()}"
    first, second = cache_status(port, path), cache_status(port, path)
    miss = "MISS" in first or "fwd=" in first
    hit = "HIT" in second or ("hit" in second and "fwd=" not in second)
    if not (miss and hit):
        raise RuntimeError(f"{name}: a new URL gave {first!r}, then {second!r}")


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


def nginx_conf(work: Path, port: int, site: Path, sock: Path, kib_sock: Path, zones: Path) -> Path:
    """One worker, sendfile on, the same locations as the gantry config. The cache is
    nginx's proxy_cache for the uwsgi protocol (uwsgi_cache: the same module); its key is
    Gantry's default, and X-Cache says hit or miss (for the check before the loads)."""
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
  limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;
  uwsgi_cache_path {zones}/ncache levels=1:2 keys_zone=pages:64m max_size=2g inactive=10m
                   use_temp_path=off;
  ssl_certificate {work}/bench.crt; ssl_certificate_key {work}/bench.key;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
  server {{
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{port + 1} ssl;
    location /static/ {{ root {site}; }}
    location /limited/ {{ root {site}; limit_req zone=perip burst=1000 nodelay; }}
    location /gzip/ {{ root {site}; gzip on; gzip_comp_level 1; gzip_min_length 256; }}
    location /cached/ {{
      include /etc/nginx/uwsgi_params; uwsgi_pass unix:{kib_sock};
      uwsgi_cache pages; uwsgi_cache_key $scheme$host$request_uri;
      add_header X-Cache $upstream_cache_status;
    }}
    location /uncached/ {{ include /etc/nginx/uwsgi_params; uwsgi_pass unix:{kib_sock}; }}
    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass unix:{sock}; }}
  }}
}}
"""
    )
    return conf


def gantry_conf(work: Path, port: int, site: Path, sock: Path, kib_sock: Path, zones: Path) -> Path:
    """The same as nginx_conf, for `gantry front`."""
    conf = work / "front.toml"
    conf.write_text(
        f"""
[front]
listen = ["127.0.0.1:{port}", "127.0.0.1:{port + 1} ssl"]
workers = 1
# as nginx's worker_connections above: the idle step holds 10,000 and then asks once more
# (at the default of 10,000 the probe was refused, as configured: connection reset)
worker_connections = 16384
[[front.server]]
default = true
ssl_certificate = "{work}/bench.crt"
ssl_certificate_key = "{work}/bench.key"
[[front.server.location]]
path = "/static/"
root = "{site}"
[[front.server.location]]
path = "/limited/"
root = "{site}"
limit_req = [{{ zone = "perip", burst = 1000, nodelay = true }}]
[[front.server.location]]
path = "/gzip/"
root = "{site}"
gzip = true
gzip_comp_level = 1
compress = ["gzip"]
[[front.server.location]]
path = "/cached/"
proxy = "kib"
cache = "pages"
[[front.server.location]]
path = "/uncached/"
proxy = "kib"
[[front.server.location]]
path = "/"
proxy = "app"
[front.limit_req_zone.perip]
key = "$binary_remote_addr"
rate = "1000000r/s"
size = "10m"
[front.upstream.app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
[front.upstream.kib]
protocol = "uwsgi"
servers = [{{ address = "unix:{kib_sock}" }}]
[front.cache.pages]
path = "{zones}/gcache"
max_size = "2g"
memory = "64m"
inactive = "10m"
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


BLOCKLIST_SIZE = 100_000


def blocklist_entries(count: int) -> str:
    """``count`` distinct entries (IPv4 hosts, /24s, IPv6 /64s), none holding
    PASSING_CLIENT, then BLOCKED_CLIENT."""
    lines = []
    for n in range(count - 1):
        if n % 20 == 0:
            lines.append(f"2001:db8:{n >> 16:x}:{n & 0xFFFF:x}::/64")
        elif n % 20 == 1:
            lines.append(f"10.{(n >> 8) & 255}.{n & 255}.0/24")
        else:
            lines.append(f"172.{16 + (n >> 16) % 16}.{(n >> 8) & 255}.{n & 255}")
    lines.append(BLOCKED_CLIENT)
    return "# bench entries\n" + "\n".join(lines) + "\n"


def blocklist_confs(work: Path, site: Path, ports: dict[str, int]) -> dict[str, list[str]]:
    """The commands of nginx (realip + deny) and of two gantry fronts (real_ip + a blocklist
    of BLOCKLIST_SIZE entries, or an empty one), each serving ``site``."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir(exist_ok=True)
    nginx = work / "nginx-deny.conf"
    nginx.write_text(
        f"""
daemon off; master_process on; worker_processes 1; user root;
error_log {work}/nginx-error.log warn; pid {work}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  include /etc/nginx/mime.types;
  set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For;
  server {{
    listen 127.0.0.1:{ports["nginx"]};
    deny {BLOCKED_CLIENT};
    location /static/ {{ root {site}; }}
  }}
}}
"""
    )
    (work / "blocked-full.txt").write_text(blocklist_entries(BLOCKLIST_SIZE))
    (work / "blocked-empty.txt").write_text("# nothing\n")
    commands = {"nginx": nginx_command(work, nginx)}
    for name, listed in (
        ("gantry-100k", "blocked-full.txt"),
        ("gantry-empty", "blocked-empty.txt"),
    ):
        conf = work / f"{name}.toml"
        conf.write_text(
            f"""
[front]
listen = ["127.0.0.1:{ports[name]}"]
workers = 1
keepalive_requests = 100000
[front.real_ip]
from = ["127.0.0.1"]
[front.blocklist]
files = ["{work / listed}"]
[[front.server]]
[[front.server.location]]
path = "/static/"
root = "{site}"
"""
        )
        commands[name] = gantry_front_command(conf)
    return commands


def blocklist_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Refused requests (403) against nginx's deny; a 100,000-entry blocklist against an
    empty one; paired rounds, the first front alternating."""
    this_tree_first()
    loads = {
        "refused 403": (("nginx", "gantry-100k"), BLOCKED_CLIENT),
        "static 1 KiB": (("gantry-empty", "gantry-100k", "nginx"), PASSING_CLIENT),
    }
    paired: dict[tuple[str, int, str], float] = {}
    #: (load, round, front) -> the front's CPU time (master and worker) per request, us
    cpu_us: dict[tuple[str, int, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="gblock-") as tmp:
        work = Path(tmp)
        site = make_site(work, "static")
        ports = {name: free_port() for name in ("nginx", "gantry-100k", "gantry-empty")}
        commands = blocklist_confs(work, site, ports)
        for round_no in range(1, args.rounds + 1):
            servers = {}
            try:
                for name, command in commands.items():
                    servers[name] = start_server(command, 0, work / f"{name}.log", ports[name])
                for load, (names, client) in loads.items():
                    order = names if round_no % 2 else tuple(reversed(names))
                    for name in order:
                        wrk(ports[name], "/static/one.bin", 2, 1, client=client)
                        proc = servers[name].proc
                        assert proc is not None
                        cpu = tree_cpu(proc.pid)
                        result = wrk(
                            ports[name], "/static/one.bin", args.duration, 1, client=client
                        )
                        cpu = tree_cpu(proc.pid) - cpu
                        per = cpu_us[load, round_no, name] = cpu * 1e6 / max(result.requests, 1)
                        print(f"  round {round_no} {name:12} {load:13} {result.rps:9.0f} req/s"
                              f" {per:5.1f} us CPU/request (non-2xx {result.non_2xx})",
                              flush=True)  # fmt: skip
                        paired[load, round_no, name] = result.rps
            finally:
                for server in servers.values():
                    server.stop()
    rounds = range(1, args.rounds + 1)
    figures: dict[str, Any] = {}
    for load, a, b in (
        ("refused 403", "gantry-100k", "nginx"),
        ("static 1 KiB", "gantry-100k", "gantry-empty"),
        ("static 1 KiB", "gantry-empty", "nginx"),
    ):
        ratios = [paired[load, r, a] / paired[load, r, b] for r in rounds if paired[load, r, b]]
        listed = ", ".join(f"{value:.2f}" for value in ratios)
        print(f"{load}: {a} / {b}: paired rounds {listed}; median "
              f"{statistics.median(ratios):.2f}x")  # fmt: skip
        figures[f"{load}: {a} / {b}"] = statistics.median(ratios)
        # CPU time per request: the figure a machine others load moves least
        cpu_ratios = [cpu_us[load, r, b] / cpu_us[load, r, a] for r in rounds if cpu_us[load, r, a]]
        listed = ", ".join(f"{value:.2f}" for value in cpu_ratios)
        print(f"{load}: CPU per request, {b} / {a} (above 1: {a} spends less): paired rounds "
              f"{listed}; median {statistics.median(cpu_ratios):.2f}x")  # fmt: skip
        figures[f"{load}: CPU {b} / {a}"] = statistics.median(cpu_ratios)
    return {
        "ratios": figures,
        "rps": {" ".join(map(str, k)): v for k, v in paired.items()},
        "cpu_us": {" ".join(map(str, k)): v for k, v in cpu_us.items()},
    }


SLOW_CLIENTS = 1000

#: run in its own process: ``count`` connections to ``port`` dripping a head, a byte a
#: second each, reconnecting any that is cut, until killed
SLOW_DRIVER = """
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
head = b"GET /static/one.bin HTTP/1.1\\r\\nHost: t\\r\\nX-Slow: " + b"x" * 4000 + b"\\r\\n\\r\\n"
def connect():
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return [sock, 0]
conns = [connect() for _ in range(count)]
print("ready", flush=True)
while True:
    started = time.monotonic()
    for entry in conns:
        try:
            entry[0].send(head[entry[1] : entry[1] + 1])
            entry[1] += 1
        except OSError:
            entry[0].close()
            entry[:] = connect()
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
"""


def slow_clients_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Throughput of a static file with SLOW_CLIENTS dripping connections open against
    without them, gantry and nginx each; paired rounds."""
    this_tree_first()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    results: dict[tuple[str, int, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="gslow-") as tmp:
        work = Path(tmp)
        site = make_site(work, "static")
        ports = {name: free_port() for name in ("nginx", "gantry")}
        # the blocklist bench's nginx and its gantry with an empty list (real_ip on both)
        every = {"nginx": ports["nginx"], "gantry-empty": ports["gantry"]}
        every["gantry-100k"] = free_port()
        made = blocklist_confs(work, site, every)
        commands = {"nginx": made["nginx"], "gantry": made["gantry-empty"]}
        for round_no in range(1, args.rounds + 1):
            for name in ("nginx", "gantry") if round_no % 2 else ("gantry", "nginx"):
                server = start_server(commands[name], 0, work / f"{name}.log", ports[name])
                driver = None
                try:
                    wrk(ports[name], "/static/one.bin", 1, 1)
                    alone = wrk(ports[name], "/static/one.bin", args.duration, 1).rps
                    driver = subprocess.Popen(
                        ["taskset", "-c", "1", sys.executable, "-c", SLOW_DRIVER,
                         str(ports[name]), str(SLOW_CLIENTS)],
                        stdout=subprocess.PIPE,
                    )  # fmt: skip
                    assert driver.stdout is not None
                    driver.stdout.readline()  # "ready": all connected
                    time.sleep(2)
                    crowded = wrk(ports[name], "/static/one.bin", args.duration, 1).rps
                finally:
                    if driver is not None:
                        driver.kill()
                        driver.wait()
                    server.stop()
                results[name, round_no, "alone"] = alone
                results[name, round_no, "crowded"] = crowded
                print(f"  round {round_no} {name:6} alone {alone:8.0f} req/s, with "
                      f"{SLOW_CLIENTS} slow clients {crowded:8.0f} req/s", flush=True)  # fmt: skip
    figures = {}
    for name in ("nginx", "gantry"):
        ratios = [
            results[name, r, "crowded"] / results[name, r, "alone"]
            for r in range(1, args.rounds + 1)
        ]
        listed = ", ".join(f"{value:.2f}" for value in ratios)
        print(f"{name}: with / without slow clients: rounds {listed}; median "
              f"{statistics.median(ratios):.2f}x")  # fmt: skip
        figures[name] = statistics.median(ratios)
    return {"clients": SLOW_CLIENTS, "ratios": figures}


#: loads that bring their own servers and rounds (not run unless named in --loads):
#: JSON key -> (the function, what it measures)
SUITES: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], str]] = {
    "blocklist": (blocklist_bench, "refused requests and a 100,000-entry blocklist"),
    "slow_clients": (slow_clients_bench, f"a static file with {SLOW_CLIENTS} slow clients"),
    "idle_many": (idle_bench, "--idle-connections idle connections, 2 workers and enough: RSS"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the loads named by --loads (both fronts, interleaved rounds), print the
    ratios, and write one JSON report."""
    keys = [key for key, *_ in LOADS.values()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--loads",
        default=",".join(keys),
        help=f"the loads to run, by their JSON key (default: all of {', '.join(keys)}); "
        + "; ".join(f"also {key}: {what}" for key, (_, what) in SUITES.items()),
    )
    parser.add_argument("--no-idle", action="store_true", help="skip the idle connections")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where both fronts keep their cache zones (default: the bench's temporary folder)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=100_000,
        metavar="N",
        help="the idle keep-alive connections of the idle_many load",
    )
    parser.add_argument(
        "--idle-workers",
        default="",
        metavar="LIST",
        help="the idle_many load's worker counts, e.g. 2,6 (default: 2 workers holding what "
        "the file limit allows, then enough workers to hold --idle-connections)",
    )
    args = parser.parse_args(argv)
    wanted = args.loads.split(",")
    unknown = set(wanted) - set(keys) - set(SUITES)
    if unknown or not wanted:
        print(f"unknown loads: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    loads = {name: load for name, load in LOADS.items() if load[0] in wanted}
    report: dict[str, Any] = {"bench": "front", "baseline": "nginx", "machine": machine_info()}
    if loads:
        figures = wrk_loads(args, loads)
        if figures is None:
            return 2
        report.update(figures)
    for key in wanted:
        if key in SUITES:
            print(f"\n{key}: {SUITES[key][1]}", flush=True)
            report[key] = SUITES[key][0](args)
    write_report(args.json, report)
    return 0


def wrk_loads(
    args: argparse.Namespace, loads: dict[str, tuple[str, str, bool, bool, bool]]
) -> dict[str, Any] | None:
    """Both fronts on every load of LOADS chosen, interleaved: the figures and ratios
    printed and returned for the report (None: uWSGI is missing)."""
    if not Path(VENV_BIN / "uwsgi").exists():
        print("run `python bench/run.py` first: it builds .venv-bench with uWSGI", file=sys.stderr)
        return None
    this_tree_first()
    with tempfile.TemporaryDirectory(prefix="gfront-") as tmp:
        work = Path(tmp)
        site = make_site(work, "static", "limited")
        (site / "gzip").mkdir()
        (site / "gzip" / "page.html").write_bytes(html_page(100 * 1024))
        zones = Path(tempfile.mkdtemp(prefix="gfront-zones-", dir=args.cache_dir or work))
        script = work / "unique.lua"
        script.write_text(UNIQUE_URLS_LUA)
        sock, kib_sock = work / "app.sock", work / "kib.sock"
        make_certificate(work)
        backends = [
            ServerProcess(
                [str(VENV_BIN / "uwsgi"), "--socket", str(path), "--chmod-socket=666",
                 "--wsgi", target, "--chdir", str(REPO_ROOT), "--processes", "1", "--master",
                 "--disable-logging", "--die-on-term"],
                0, work / f"uwsgi-{path.stem}.log",
            )
            for path, target in ((sock, "bench.apps:hello"), (kib_sock, "bench.apps:kib"))
        ]  # fmt: skip
        for backend in backends:
            backend.start()
        time.sleep(1.5)
        best: dict[tuple[str, str], float] = {}
        rounds: list[RoundResult] = []
        idle: dict[str, tuple[float, bool]] = {}
        #: (load, round, front) -> req/s
        paired: dict[tuple[str, int, str], float] = {}
        #: (load, round, front) -> the front's CPU time per request, microseconds
        cpu_us: dict[tuple[str, int, str], float] = {}
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
                            conf = nginx_conf(work, port, site, sock, kib_sock, zones)
                            command = nginx_command(work, conf)
                        else:
                            conf = gantry_conf(work, port, site, sock, kib_sock, zones)
                            command = gantry_front_command(conf)
                        server = start_server(command, 0, work / f"{name}.log", port)
                        servers[name] = (server, port)
                        if any(key.startswith("cache") for key, *_ in loads.values()):
                            check_caching(port, name)
                    order = ("nginx", "gantry") if round_no % 2 else ("gantry", "nginx")
                    for load, (_, path, unique, tls, close) in loads.items():
                        for name in order:
                            port = servers[name][1] + (1 if tls else 0)
                            lua = script if unique else None
                            field = LOAD_FIELDS.get(load, "")
                            wrk(port, path, 2, 1, lua, f"r{round_no}-{name}-warm", "", field,
                                tls, close)  # fmt: skip
                            proc = servers[name][0].proc
                            assert proc is not None
                            cpu = tree_cpu(proc.pid)
                            result = wrk(port, path, args.duration, 1, lua, f"r{round_no}-{name}",
                                         "", field, tls, close)  # fmt: skip
                            cpu = tree_cpu(proc.pid) - cpu
                            per = cpu_us[load, round_no, name] = cpu * 1e6 / max(result.requests, 1)
                            print(f"  round {round_no} {name:6} {load:16} {result.rps:9.0f} req/s"
                                  f" {per:6.0f} us CPU/request ({result.errors} errors)",
                                  flush=True)  # fmt: skip
                            best[name, load] = max(best.get((name, load), 0.0), result.rps)
                            paired[load, round_no, name] = result.rps
                            rounds.append(RoundResult(name, load, round_no, True, wrk=result))
                    if round_no == 1 and not args.no_idle:
                        for name, (server, port) in servers.items():
                            assert server.proc is not None
                            idle[name] = idle_connections(port, server.proc.pid, IDLE_CONNECTIONS)
                finally:
                    for server, _ in servers.values():
                        server.stop()
        finally:
            for backend in backends:
                backend.stop()
            shutil.rmtree(zones, ignore_errors=True)
    print("\nload              nginx req/s  gantry req/s  gantry/nginx")
    for load in loads:
        n, g = best["nginx", load], best["gantry", load]
        print(f"{load:16} {n:12.0f} {g:13.0f} {g / n:12.2f}x")
    medians: dict[tuple[str, str, str], float] = {}
    for load in loads:
        ratios = [
            paired[load, r, "gantry"] / paired[load, r, "nginx"]
            for r in range(1, args.rounds + 1)
            if paired.get((load, r, "nginx"))
        ]
        median = medians[load, "gantry", "nginx"] = statistics.median(ratios)
        listed = ", ".join(f"{value:.2f}" for value in ratios)
        print(f"{load}: gantry/nginx, paired rounds {listed}; median {median:.2f}x")
    for load, base in SELF_RATIOS:
        if load not in loads or base not in loads:
            continue
        for name in ("nginx", "gantry"):
            ratios = [
                paired[load, r, name] / paired[base, r, name]
                for r in range(1, args.rounds + 1)
                if paired.get((base, r, name))
            ]
            medians[load, name, base] = statistics.median(ratios)
            listed = ", ".join(f"{value:.2f}" for value in ratios)
            print(f"{name} {load} / {base}: paired rounds {listed}; "
                  f"median {statistics.median(ratios):.2f}x")  # fmt: skip
    # On a machine others load too, req/s moves with their load; the CPU time the front
    # itself spends on a request moves much less.
    print("\nfront CPU time per request (median of rounds), microseconds")
    for load in loads:
        line = [f"{load:16}"]
        for name in ("nginx", "gantry"):
            values = [cpu_us[load, r, name] for r in range(1, args.rounds + 1)]
            median = medians[load, name, "cpu_us"] = statistics.median(values)
            line.append(f"{name} {median:6.0f}")
        print("  ".join(line))
    for load, base, goal in GOALS:
        value = medians.get((load, "gantry", base))
        if value is not None:
            verdict = "met" if value >= goal else "NOT met"
            print(f"goal: gantry {load} / {base} >= {goal}x: {value:.2f}x, {verdict}")
    for name, (rss, answered) in idle.items():
        print(f"{IDLE_CONNECTIONS} idle keep-alive connections, {name}: worker RSS {rss:.0f} MB, "
              f"still answering: {answered}")  # fmt: skip
    report: dict[str, Any] = {
        "settings": {"duration": args.duration, "rounds": args.rounds, "connections": 50},
        "apps": {},
        "idle": {name: {"rss_mb": rss, "answering": ok} for name, (rss, ok) in idle.items()},
        "paired_medians": {"/".join(key): value for key, value in medians.items()},
    }
    for load, (key, path, *_) in loads.items():
        of_load = [r for r in rounds if r.app == load]
        summaries = [summarize(of_load, name, "best") for name in ("nginx", "gantry")]
        report["apps"][key] = app_report(path, summaries)
    return report


if __name__ == "__main__":
    sys.exit(main())
