"""The same counters in Prometheus' text exposition format (0.0.4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gantry.process.shared import WorkerStats
from gantry.stats.uwsgi_json import MasterInfo

__all__ = ["render_metric_rows", "render_metrics"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def render_metrics(workers: list[WorkerStats], info: MasterInfo) -> bytes:
    """Every worker's counters, one family per metric."""
    rows = [
        (
            {"worker": str(w.id), "pid": str(w.pid)},
            {
                "requests": w.requests,
                "exceptions": w.exceptions,
                "tx": w.tx,
                "respawn_count": w.respawn_count,
                "rss": w.rss,
                "vsz": w.vsz,
                "status_2xx": w.status_2xx,
                "status_3xx": w.status_3xx,
                "status_4xx": w.status_4xx,
                "status_5xx": w.status_5xx,
                "avg_rt": w.avg_rt_us,
                "status": "busy" if w.request_start_us else "idle",
            },
        )  # fmt: skip
        for w in workers
    ]
    return render_metric_rows(rows, info.started)


def render_metric_rows(
    rows: Sequence[tuple[dict[str, str], Mapping[str, Any]]], started: float
) -> bytes:
    """One family per metric; each row is a worker's labels and its counters, named as in
    the stats document (``requests``, ``tx``, ``avg_rt`` in microseconds, ``status``...)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    per_worker = [
        ("gantry_worker_requests_total", "counter", "Requests served.", "requests"),
        ("gantry_worker_exceptions_total", "counter", "Requests the app failed.", "exceptions"),
        ("gantry_worker_tx_bytes_total", "counter", "Response bytes sent.", "tx"),
        ("gantry_worker_respawns_total", "counter", "Times this slot was respawned.",
         "respawn_count"),
        ("gantry_worker_rss_bytes", "gauge", "Resident memory.", "rss"),
        ("gantry_worker_vsz_bytes", "gauge", "Virtual memory.", "vsz"),
    ]  # fmt: skip
    for name, kind, help_text, key in per_worker:
        family(name, kind, help_text)
        for labels, values in rows:
            lines.append(f"{name}{_labels(**labels)} {values[key]}")
    family("gantry_worker_responses_total", "counter", "Responses by status class.")
    for labels, values in rows:
        for klass in ("2xx", "3xx", "4xx", "5xx"):
            lines.append(
                f"gantry_worker_responses_total{_labels(**labels, **{'class': klass})} "
                f"{values[f'status_{klass}']}"
            )
    family("gantry_worker_avg_response_seconds", "gauge", "Average time per request.")
    for labels, values in rows:
        lines.append(
            f"gantry_worker_avg_response_seconds{_labels(**labels)} {values['avg_rt'] / 1e6}"
        )
    family("gantry_worker_busy", "gauge", "1 while the worker runs a request.")
    for labels, values in rows:
        busy = 1 if values["status"] == "busy" else 0
        lines.append(f"gantry_worker_busy{_labels(**labels)} {busy}")
    family("gantry_workers", "gauge", "Worker processes running.")
    lines.append(f"gantry_workers {len(rows)}")
    family("gantry_master_start_time_seconds", "gauge", "When the master started (epoch).")
    lines.append(f"gantry_master_start_time_seconds {started}")
    return ("\n".join(lines) + "\n").encode()
