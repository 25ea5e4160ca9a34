"""The whole stack's stats: every part's stats document, merged into one.

Each part's master serves its own document (uWSGI's format) on a unix socket in
the runtime directory, one per generation (a reload runs two side by side for a
moment; the stack's document shows the one serving). The supervisor reads them
all when asked and answers with one document whose workers carry their ``pool``
("front" or the app's name), so ``gantry top``, uwsgitop and Prometheus see the
whole stack.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

from gantry import __version__
from gantry.stats.prometheus import render_metric_rows
from gantry.stats.serve import http_text_response
from gantry.stats.top import fetch

if TYPE_CHECKING:
    from gantry.stack.supervisor import Supervisor

__all__ = ["answer_metrics", "answer_stats", "stack_document"]


def stack_document(supervisor: Supervisor) -> dict[str, Any]:
    """One stats document for every part; a part that does not answer is listed as down."""
    plan = supervisor.plan
    workers: list[dict[str, Any]] = []
    pools: list[dict[str, Any]] = []
    sockets: list[dict[str, Any]] = []
    for part in supervisor.parts:  # the serving generation of each part
        address = part.stats_file or plan.pool_config(part.name).stats or ""
        try:
            doc = fetch(address, timeout=1.0)
        except (OSError, ValueError):
            doc = {}
        for worker in doc.get("workers", []):
            # "id" stays unique across the stack (uwsgitop keys on it); "worker" is the
            # number the pool's own log uses.
            workers.append(
                {**worker, "id": len(workers) + 1, "worker": worker["id"], "pool": part.name}
            )
        sockets += doc.get("sockets", [])
        pools.append(
            {
                "name": part.name,
                "kind": part.kind,
                "pid": doc.get("pid", part.pid),
                "generation": part.generation,
                "workers": len(doc.get("workers", [])),
                "restarts": part.restarts,
                "up": bool(doc),
                "last_exit": part.last_exit,
            }
        )
    return {
        "version": f"gantry-{__version__}",
        "listen_queue": 0,
        "listen_queue_errors": 0,
        "signal_queue": 0,
        "load": 0,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "started": int(supervisor.started),
        "locks": [],
        "sockets": sockets,
        "pools": pools,
        "workers": workers,
    }


def answer_stats(conn: socket.socket, supervisor: Supervisor) -> None:
    """Write the merged document and let the caller close (uWSGI's stats protocol)."""
    conn.sendall(json.dumps(stack_document(supervisor)).encode())


def answer_metrics(conn: socket.socket, supervisor: Supervisor) -> None:
    """Prometheus text of every worker of the stack, labelled with its pool."""

    def render() -> bytes:
        doc = stack_document(supervisor)
        rows = [
            ({"pool": w["pool"], "worker": str(w["id"]), "pid": str(w["pid"])}, w)
            for w in doc["workers"]
        ]
        return render_metric_rows(rows, supervisor.started)

    http_text_response(conn, render)
