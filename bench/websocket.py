"""Benchmark WebSocket tunnels through `gantry front` against nginx, one worker each,
pinned to CPU 0 (client and upstream share CPU 1): 50 connections, each sending a 1 KiB
binary message and waiting for its echo before the next (issue 18's goal: >= 0.8x nginx).

The upstream answers the upgrade with a 101 and then echoes bytes unchanged, and the
client counts whole echoed frames: what is measured is the proxies' tunnels, not a
WebSocket library (both would be bound by it). Figures are messages per second, paired
rounds, the median of each and the ratio.

    python bench/websocket.py --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fronts import (  # noqa: E402 - sibling modules, imported as scripts
    gantry_front_command,
    nginx_command,
    start_server,
    this_tree_first,
    tree_cpu,
)
from run import free_port  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK = b"\x11\x22\x33\x44"
PAYLOAD = os.urandom(1024)
#: one masked 1 KiB binary frame, as a client sends it
FRAME = (
    b"\x82\xfe"
    + len(PAYLOAD).to_bytes(2, "big")
    + MASK
    + bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
)
KEY = base64.b64encode(b"0123456789abcdef")
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


# the upstream: 101, then an echo of the bytes ----------


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.upgraded:
            self.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
            b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + rest
        )
        self.upgraded = True


def serve_upstream(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# the client ----------


class _Client(asyncio.Protocol):
    def __init__(self, counts: list[int], ready: asyncio.Future[None]) -> None:
        self.counts = counts
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.buffered = 0
        self.head = b""
        self.upgraded = False
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(UPGRADE)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(self.head[:200].decode("latin-1")))
                return
            self.upgraded = True
            data = self.head.partition(b"\r\n\r\n")[2]
            self.ready.set_result(None)
            self.transport.write(FRAME)
        self.buffered += len(data)
        while self.buffered >= len(FRAME):
            self.buffered -= len(FRAME)
            self.counts[0] += 1
            if self.running:
                self.transport.write(FRAME)


def run_client(port: int, connections: int, duration: float, pid: int) -> tuple[float, float]:
    """Messages echoed per second over ``duration`` (after every connection is open), and
    the share of a CPU the proxy ``pid`` used meanwhile (near 1.0: the proxy is the limit;
    well below: the client or the upstream is)."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        counts = [0]
        clients = []
        readies = []
        for _ in range(connections):
            ready: asyncio.Future[None] = loop.create_future()
            _, client = await loop.create_connection(
                lambda ready=ready: _Client(counts, ready), "127.0.0.1", port
            )
            clients.append(client)
            readies.append(ready)
        await asyncio.gather(*readies)
        await asyncio.sleep(0.5)  # warm-up
        start_count, started, cpu = counts[0], loop.time(), tree_cpu(pid)
        await asyncio.sleep(duration)
        elapsed = loop.time() - started
        rate = (counts[0] - start_count) / elapsed
        share = (tree_cpu(pid) - cpu) / elapsed
        for client in clients:
            client.running = False
            if client.transport is not None:
                client.transport.close()
        return rate, share

    return asyncio.run(main())


# the proxies ----------


def nginx_conf(work: Path, port: int, upstream: int) -> list[str]:
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; master_process on;
error_log {work}/nginx-error.log warn; pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
  fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
""")
    (work / "tmp").mkdir(exist_ok=True)
    return nginx_command(work, conf)


def gantry_conf(work: Path, port: int, upstream: int) -> list[str]:
    conf = work / "front.toml"
    conf.write_text(f"""
[front]
listen = ["127.0.0.1:{port}"]
workers = 1
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "ws"
[front.upstream.ws]
servers = [{{ address = "127.0.0.1:{upstream}" }}]
""")
    return gantry_front_command(conf)


def measure(
    command: list[str], port: int, log: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """``run_client``'s figures for the proxy ``command`` (pinned to CPU 0, its output in
    ``log``), started for them and stopped after."""
    # the front's workers may run as root here, as nginx's master does (run.py, imported
    # through fronts, sets GANTRY_ALLOW_ROOT for every server started)
    server = start_server(command, 0, log, port)
    assert server.proc is not None
    try:
        return run_client(port, args.connections, args.duration, server.proc.pid)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    this_tree_first()
    os.sched_setaffinity(0, {1})  # the client and the upstream: CPU 1
    figures: dict[str, list[float]] = {"gantry": [], "nginx": []}
    #: the proxy's CPU microseconds per echoed message: its cost whoever is the limit
    costs: dict[str, list[float]] = {"gantry": [], "nginx": []}
    with tempfile.TemporaryDirectory(prefix="wsbench") as folder:
        work = Path(folder)
        upstream = free_port()
        echo = f"from bench.websocket import serve_upstream; serve_upstream({upstream})"
        upstream_server = start_server(
            [sys.executable, "-c", echo], 1, work / "upstream.log", upstream
        )
        try:
            for _ in range(args.rounds):
                for name in ("gantry", "nginx"):
                    port = free_port()
                    build = gantry_conf if name == "gantry" else nginx_conf
                    command = build(work, port, upstream)
                    rate, share = measure(command, port, work / f"{name}.log", args)
                    figures[name].append(rate)
                    costs[name].append(share / rate * 1e6 if rate else 0.0)
                    print(f"{name:>7}: {rate:10.0f} messages/s, proxy CPU {share:.2f}", flush=True)
        finally:
            upstream_server.stop()
    gantry, nginx = (statistics.median(figures[n]) for n in ("gantry", "nginx"))
    print(f"median  gantry {gantry:.0f}/s  nginx {nginx:.0f}/s  ratio {gantry / nginx:.2f}x")
    cost_g, cost_n = (statistics.median(costs[n]) for n in ("gantry", "nginx"))
    print(
        f"proxy CPU per message  gantry {cost_g:.1f} us  nginx {cost_n:.1f} us  "
        f"(nginx/gantry {cost_n / cost_g:.2f}x)"
    )
    if args.json is not None:
        document = {"websocket echo 1 KiB": figures, "cpu us per message": costs}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
