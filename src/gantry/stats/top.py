"""``gantry top``: a live terminal view of a server's workers, read from its stats socket."""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
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
    # A `gantry up` stack labels each worker with its pool ("front" or an app's name).
    pooled = any("pool" in w for w in workers)
    per_pool: dict[str, int] = {}
    for w in workers:
        name = str(w.get("pool", ""))
        per_pool[name] = per_pool.get(name, 0) + w["requests"]
    # Behind a front every request is counted twice, by the front and by its pool: the
    # site's total is the front's, and each pool's share is shown beside it.
    counted = [w for w in workers if w.get("pool") == "front"] if "front" in per_pool else workers
    total = sum(w["requests"] for w in counted)
    rate = sum(rates[w["id"]] for w in counted)
    shares = ", ".join(f"{name} {count}" for name, count in per_pool.items()) if pooled else ""
    pool_head = f"{'POOL':<10} " if pooled else ""
    # the front's open WebSocket tunnels (said only where there are some)
    websockets = sum(int(w.get("websockets", 0)) for w in workers)
    # and its HTTP/2 connections open and streams answered (likewise)
    http2 = sum(int(w.get("http2_connections", 0)) for w in workers)
    streams = sum(int(w.get("http2_streams", 0)) for w in workers)
    lines = [
        f"gantry top - {time.strftime('%H:%M:%S')} - master pid {doc.get('pid')} - "
        f"{len(workers)} workers - {total} requests - {rate:.0f} req/s"
        + (f" ({shares})" if shares else "")
        + (f" - {websockets} websockets open" if websockets else "")
        + (f" - HTTP/2: {http2} connections open, {streams} streams" if http2 or streams else ""),
        "",
        f"{pool_head}{'WID':>3} {'PID':>7} {'STATUS':<8} {'REQ':>9} {'REQ/S':>7} {'AVG(ms)':>8} "
        f"{'RSS':>8} {'EXC':>5} {'RESPAWN':>7}  CURRENT REQUEST",
    ]
    for pool in doc.get("pools", []):
        if not pool.get("up", True):
            lines.insert(1, f"  {pool['name']}: down ({pool.get('last_exit') or 'starting'})")
        elif pool.get("kind") == "php":
            # php-fpm's children are its own: the stack shows its master
            restarts = pool.get("restarts", 0)
            fpm = pool.get("php_fpm") or {}
            said = f"  {pool['name']}: php-fpm, master pid {pool.get('pid')}"
            if fpm:
                said += (f", {fpm.get('total processes')} children "
                         f"({fpm.get('active processes')} active), "
                         f"{fpm.get('accepted conn')} accepted, "
                         f"listen queue {fpm.get('listen queue')}")  # fmt: skip
            lines.insert(1, said + (f", {restarts} restarts" if restarts else ""))
    for w in sorted(workers, key=lambda item: item["id"]):
        # In a stack the log numbers workers within their pool ("worker 1" of each):
        # show that number, not the document's stack-wide id.
        number = w.get("worker", w["id"])
        current = w.get("current_request") or ""
        if current:
            current = f"{current} ({w.get('current_request_seconds', 0):.1f}s)"
        pool = f"{str(w.get('pool', ''))[:10]:<10} " if pooled else ""
        line = (
            f"{pool}{number:>3} {w['pid']:>7} {w['status']:<8} {w['requests']:>9} "
            f"{rates[w['id']]:>7.0f} {w['avg_rt'] / 1000:>8.2f} {_size(w['rss']):>8} "
            f"{w['exceptions']:>5} {w['respawn_count']:>7}  {current}"
        )
        lines.append(line[:width])
    lines += _cache_lines(doc.get("caches") or [], width)
    lines += _defence_lines(doc.get("limits") or {}, width)
    return "\n".join(lines) + "\n"


def _defence_lines(limits: dict[str, Any], width: int) -> list[str]:
    """The front's defences: requests refused by bans and blocklist files, bans running,
    bans made by each autoban rule, and refusals of each limit zone."""
    if not limits:
        return []
    lines = ["", "DEFENCES"]
    blocked = limits.get("blocked")
    if blocked is not None:
        bans = limits.get("bans") or {}
        lines.append(
            f"  blocked: {blocked.get('ban', 0)} by bans, {blocked.get('file', 0)} by "
            f"blocklist files; {bans.get('active', 0)} bans running"
        )
    for rule in limits.get("autoban") or []:
        lines.append(
            f"  autoban rule {rule.get('rule')} ({rule.get('when')}): {rule.get('bans')} bans"
        )
    for name, zone in (limits.get("limit_req") or {}).items():
        lines.append(
            f"  limit_req {name}: {zone.get('rejected', 0)} rejected, "
            f"{zone.get('delayed', 0)} delayed, {zone.get('keys', 0)} keys"
        )
    for name, zone in (limits.get("limit_conn") or {}).items():
        lines.append(f"  limit_conn {name}: {zone.get('rejected', 0)} rejected")
    return [line[:width] for line in lines] if len(lines) > 2 else []


#: (column, width) of the cache section: how requests were answered (as nginx's
#: $upstream_cache_status names it)
_CACHE_COLUMNS = (
    ("hit", 9), ("miss", 9), ("expired", 8), ("stale", 7), ("updating", 8),
    ("revalidated", 11), ("bypass", 7),
)  # fmt: skip


def _cache_lines(caches: list[dict[str, Any]], width: int) -> list[str]:
    """A line per cache zone: its requests by status, its hit ratio, entries and size."""
    if not caches:
        return []
    header = "".join(f"{name.upper():>{size + 1}}" for name, size in _CACHE_COLUMNS)
    lines = ["", f"{'CACHE':<12}{header} {'HIT%':>6} {'ENTRIES':>8} {'SIZE':>8} {'MAX':>8}"]
    for zone in caches:
        requests = zone.get("requests", {})
        counts = "".join(f"{requests.get(name, 0):>{size + 1}}" for name, size in _CACHE_COLUMNS)
        total = sum(requests.values())
        ratio = f"{100 * requests.get('hit', 0) / total:.1f}" if total else "-"
        line = (
            f"{str(zone.get('name', ''))[:12]:<12}{counts} {ratio:>6} "
            f"{zone.get('entries', 0):>8} {_size(zone.get('bytes', 0)):>8} "
            f"{_size(zone.get('max_size', 0)):>8}"
        )
        lines.append(line[:width])
    return lines


@contextmanager
def _keys() -> Iterator[int | None]:
    """Standard input in cbreak mode while the view runs (restored after), so a single
    key is read without Enter; None when stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(fd: int | None, interval: float) -> bool:
    """Wait up to ``interval`` seconds; True when q (uwsgitop's quit key) was pressed."""
    if fd is None:
        time.sleep(interval)
        return False
    deadline = time.monotonic() + interval
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        key = os.read(fd, 1)
        if key in (b"q", b"Q") or not key:
            return True
    return False


def run_top(address: str, once: bool = False, interval: float = 1.0) -> int:
    """Print frames until q or Ctrl-C (or one with ``once``); 1 if the stats socket cannot
    be read."""
    previous: dict[str, Any] | None = None
    try:
        with _keys() as keys:
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
                if _wait_for_quit(keys, interval):
                    return 0
    except KeyboardInterrupt:
        return 0
