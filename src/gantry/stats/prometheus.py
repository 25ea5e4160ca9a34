"""The same counters in Prometheus' text exposition format (0.0.4)."""

from __future__ import annotations

from gantry.process.shared import WorkerStats
from gantry.stats.uwsgi_json import MasterInfo

__all__ = ["render_metrics"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def render_metrics(workers: list[WorkerStats], info: MasterInfo) -> bytes:
    """Every worker's counters, one family per metric."""
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
    for name, kind, help_text, attr in per_worker:
        family(name, kind, help_text)
        for w in workers:
            lines.append(f"{name}{_labels(worker=str(w.id), pid=str(w.pid))} {getattr(w, attr)}")
    family("gantry_worker_responses_total", "counter", "Responses by status class.")
    for w in workers:
        for klass in ("2xx", "3xx", "4xx", "5xx"):
            value = getattr(w, f"status_{klass}")
            lines.append(
                f"gantry_worker_responses_total"
                f"{_labels(worker=str(w.id), pid=str(w.pid), **{'class': klass})} {value}"
            )
    family("gantry_worker_avg_response_seconds", "gauge", "Average time per request.")
    for w in workers:
        labels = _labels(worker=str(w.id), pid=str(w.pid))
        lines.append(f"gantry_worker_avg_response_seconds{labels} {w.avg_rt_us / 1e6}")
    family("gantry_worker_busy", "gauge", "1 while the worker runs a request.")
    for w in workers:
        labels = _labels(worker=str(w.id), pid=str(w.pid))
        lines.append(f"gantry_worker_busy{labels} {1 if w.request_start_us else 0}")
    family("gantry_workers", "gauge", "Worker processes running.")
    lines.append(f"gantry_workers {len(workers)}")
    family("gantry_master_start_time_seconds", "gauge", "When the master started (epoch).")
    lines.append(f"gantry_master_start_time_seconds {info.started}")
    return ("\n".join(lines) + "\n").encode()
