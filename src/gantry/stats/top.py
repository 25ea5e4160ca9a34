"""``gantry top``: a live terminal view of a server's workers, read from its stats socket."""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

__all__ = ["fetch", "render_frame", "run_top"]

_CLEAR = "\x1b[H\x1b[2J"


def fetch(address: str, timeout: float = 2.0) -> dict[str, Any]:
    """Read one stats document from HOST:PORT or a unix socket path."""
    if ":" in address and not address.startswith("/"):
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    with sock:
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    document: dict[str, Any] = json.loads(b"".join(chunks))
    return document


def _size(value: int) -> str:
    return f"{value / (1024 * 1024):.1f}M"


def render_frame(
    doc: dict[str, Any], previous: dict[str, Any] | None, interval: float, width: int = 120
) -> str:
    """One screen: a header, then a line per worker with its rate and current request."""
    before = {w["id"]: w["requests"] for w in (previous or {}).get("workers", [])}
    workers = doc.get("workers", [])
    rates = {
        w["id"]: max(0, w["requests"] - before[w["id"]]) / interval if w["id"] in before else 0.0
        for w in workers
    }
    total = sum(w["requests"] for w in workers)
    # A `gantry up` stack labels each worker with its pool ("front" or an app's name).
    pooled = any("pool" in w for w in workers)
    pool_head = f"{'POOL':<10} " if pooled else ""
    lines = [
        f"gantry top - {time.strftime('%H:%M:%S')} - master pid {doc.get('pid')} - "
        f"{len(workers)} workers - {total} requests - {sum(rates.values()):.0f} req/s",
        "",
        f"{pool_head}{'WID':>3} {'PID':>7} {'STATUS':<8} {'REQ':>9} {'REQ/S':>7} {'AVG(ms)':>8} "
        f"{'RSS':>8} {'EXC':>5} {'RESPAWN':>7}  CURRENT REQUEST",
    ]
    for pool in doc.get("pools", []):
        if not pool.get("up", True):
            lines.insert(1, f"  {pool['name']}: down ({pool.get('last_exit') or 'starting'})")
    for w in sorted(workers, key=lambda item: item["id"]):
        current = w.get("current_request") or ""
        if current:
            current = f"{current} ({w.get('current_request_seconds', 0):.1f}s)"
        pool = f"{str(w.get('pool', ''))[:10]:<10} " if pooled else ""
        line = (
            f"{pool}{w['id']:>3} {w['pid']:>7} {w['status']:<8} {w['requests']:>9} "
            f"{rates[w['id']]:>7.0f} {w['avg_rt'] / 1000:>8.2f} {_size(w['rss']):>8} "
            f"{w['exceptions']:>5} {w['respawn_count']:>7}  {current}"
        )
        lines.append(line[:width])
    return "\n".join(lines) + "\n"


def run_top(address: str, once: bool = False, interval: float = 1.0) -> int:
    """Print frames until Ctrl-C (or one with ``once``); 1 if the stats socket cannot be read."""
    previous: dict[str, Any] | None = None
    try:
        while True:
            try:
                doc = fetch(address)
            except (OSError, ValueError) as exc:
                print(f"gantry top: cannot read stats from {address}: {exc}", file=sys.stderr)
                return 1
            frame = render_frame(doc, previous, interval)
            if once:
                sys.stdout.write(frame)
                return 0
            sys.stdout.write(_CLEAR + frame)
            sys.stdout.flush()
            previous = doc
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
