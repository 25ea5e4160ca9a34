"""The stats document in uWSGI's stats-server format, so uwsgitop and friends read Gantry."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from gantry.process.shared import WorkerStats

__all__ = ["MasterInfo", "render_stats", "stats_document"]


@dataclass
class MasterInfo:
    """What the master knows about itself."""

    pid: int
    version: str
    started: float
    sockets: list[str] = field(default_factory=list)
    listen_queue: int = 0
    listen_queue_errors: int = 0
    load: int = 0


def _worker(stats: WorkerStats, now: float) -> dict[str, Any]:
    method, _, target = stats.request_line.partition(" ")
    busy = stats.status_name == "busy" or bool(stats.request_start_us)
    core: dict[str, Any] = {
        "id": 0,
        "requests": stats.requests,
        "static_requests": 0,
        "routed_requests": 0,
        "offloaded_requests": 0,
        "write_errors": 0,
        "read_errors": 0,
        "in_request": 1 if busy else 0,
        "vars": [f"REQUEST_METHOD={method}", f"REQUEST_URI={target}"] if busy and method else [],
        "req_info": {"request_start": stats.request_start_us / 1e6} if busy else {},
    }
    return {
        "id": stats.id,
        "pid": stats.pid,
        "accepting": 1 if stats.ready and stats.status_name in ("idle", "busy") else 0,
        "requests": stats.requests,
        "delta_requests": 0,
        "exceptions": stats.exceptions,
        "harakiri_count": 0,
        "signals": 0,
        "signal_queue": 0,
        "status": "busy" if busy else stats.status_name,
        "rss": stats.rss,
        "vsz": stats.vsz,
        # uWSGI reports these two in microseconds
        "running_time": stats.rt_total_us,
        "avg_rt": stats.avg_rt_us,
        "last_spawn": stats.last_spawn,
        "respawn_count": stats.respawn_count,
        "tx": stats.tx,
        "status_2xx": stats.status_2xx,
        "status_3xx": stats.status_3xx,
        "status_4xx": stats.status_4xx,
        "status_5xx": stats.status_5xx,
        "generation": stats.generation,
        "websockets": stats.websockets,  # Gantry's own: WebSocket tunnels open (front)
        # Gantry's own: HTTP/2 connections open and streams answered (front)
        "http2_connections": stats.http2_connections,
        "http2_streams": stats.http2_streams,
        "current_request": stats.request_line if busy else "",
        "current_request_seconds": round(stats.running_for(now), 3) if busy else 0,
        "apps": [],
        "cores": [core],
    }


def stats_document(workers: list[WorkerStats], info: MasterInfo) -> dict[str, Any]:
    """The document as a dict (uWSGI's keys, plus a few of Gantry's own)."""
    now = time.time()
    return {
        "version": f"gantry-{info.version}",
        "listen_queue": info.listen_queue,
        "listen_queue_errors": info.listen_queue_errors,
        "signal_queue": 0,
        "load": info.load,
        "pid": info.pid,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "started": int(info.started),
        "locks": [],
        "sockets": [
            {
                "name": name,
                "proto": "uwsgi" if "uwsgi" in name else "http",
                "queue": 0,
                "max_queue": 0,
                "shared": 0,
                "can_offload": 0,
            }
            for name in info.sockets
        ],  # fmt: skip
        "workers": [_worker(w, now) for w in workers],
    }


def render_stats(workers: list[WorkerStats], info: MasterInfo) -> bytes:
    """One JSON document, as the stats socket writes it before closing."""
    return json.dumps(stats_document(workers, info)).encode()
