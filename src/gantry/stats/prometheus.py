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


def render_metrics(
    workers: list[WorkerStats], info: MasterInfo, caches: list[dict[str, Any]] | None = None
) -> bytes:
    """Every worker's counters, one family per metric; then the cache zones' (the stats
    document's ``caches``)."""
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
                "websockets": w.websockets,
                "http2_connections": w.http2_connections,
                "http2_streams": w.http2_streams,
            },
        )  # fmt: skip
        for w in workers
    ]
    return render_metric_rows(rows, info.started, caches)


def render_metric_rows(
    rows: Sequence[tuple[dict[str, str], Mapping[str, Any]]],
    started: float,
    caches: Sequence[Mapping[str, Any]] | None = None,
) -> bytes:
    """One family per metric; each row is a worker's labels and its counters, named as in
    the stats document (``requests``, ``tx``, ``avg_rt`` in microseconds, ``status``...);
    ``caches`` the document's cache zones."""
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
    family("gantry_worker_websockets", "gauge", "WebSocket tunnels open (the front).")
    for labels, values in rows:
        lines.append(f"gantry_worker_websockets{_labels(**labels)} {values.get('websockets', 0)}")
    family("gantry_worker_http2_connections", "gauge", "HTTP/2 connections open (the front).")
    for labels, values in rows:
        count = values.get("http2_connections", 0)
        lines.append(f"gantry_worker_http2_connections{_labels(**labels)} {count}")
    family("gantry_worker_http2_streams_total", "counter", "HTTP/2 streams answered (the front).")
    for labels, values in rows:
        count = values.get("http2_streams", 0)
        lines.append(f"gantry_worker_http2_streams_total{_labels(**labels)} {count}")
    family("gantry_workers", "gauge", "Worker processes running.")
    lines.append(f"gantry_workers {len(rows)}")
    family("gantry_master_start_time_seconds", "gauge", "When the master started (epoch).")
    lines.append(f"gantry_master_start_time_seconds {started}")
    if caches:
        lines += _cache_lines(caches)
    return ("\n".join(lines) + "\n").encode()


def _cache_lines(caches: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cache zones' families: requests by how the cache answered, entries, bytes."""
    lines = [
        "# HELP gantry_cache_requests_total Requests of cached locations, by how the cache "
        "answered them (nginx's $upstream_cache_status).",
        "# TYPE gantry_cache_requests_total counter",
    ]
    for zone in caches:
        for status, count in zone.get("requests", {}).items():
            labels = _labels(zone=str(zone["name"]), status=str(status))
            lines.append(f"gantry_cache_requests_total{labels} {count}")
    gauges = [
        ("gantry_cache_entries", "Responses stored in the zone.", "entries"),
        ("gantry_cache_bytes", "Bytes the zone's entries take on disk.", "bytes"),
        ("gantry_cache_max_bytes", "The zone's max_size.", "max_size"),
    ]
    for name, help_text, key in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for zone in caches:
            lines.append(f"{name}{_labels(zone=str(zone['name']))} {zone.get(key, 0)}")
    return lines
