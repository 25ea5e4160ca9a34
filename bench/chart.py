"""Draw the bench results (JSON from bench/run.py, bench/front.py, bench/up.py) as one PNG.

One panel per scenario: req/s per server as horizontal bars, each Gantry bar annotated
with its ratio to the scenario's baseline (uWSGI, nginx, nginx+uWSGI) and, for `gantry up`,
the goal. Run: `.venv-bench/bin/python bench/chart.py bench/results/*.json -o docs/bench.png`
(matplotlib is in the `bench` extra, installed in .venv-bench by bench/run.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.ticker import FuncFormatter  # noqa: E402

#: panel titles per bench and scenario key; unknown ones get "bench: key"
TITLES = {
    ("serve", "raw"): "gantry serve, raw WSGI app (bench.apps:hello)",
    ("serve", "flask"): "gantry serve, Flask demo /hello",
    ("front", "static"): "gantry front: static 1 KiB file",
    ("front", "proxy"): "gantry front: proxy to uWSGI (unix socket)",
    ("front", "cache_hit"): "gantry front: cache hits, 1 KiB (nginx uwsgi_cache)",
    ("front", "cache_miss"): "gantry front: cache misses, each stored, 1 KiB",
    ("front", "cache_off"): "gantry front: the misses' URLs, cache off",
    ("up", "raw"): "gantry up: whole stack, raw app",
    ("up", "flask"): "gantry up: whole stack, Flask demo",
}
#: the order benches are drawn in, top to bottom
BENCH_ORDER = ["serve", "front", "up"]
BASELINE_COLOR = "#9e9e9e"
GANTRY_COLOR = "#1f77b4"
PEER_COLOR = "#c7c7c7"


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """The reports, sorted by bench; files that are missing or unreadable are skipped."""
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        report.setdefault("bench", "serve")  # bench/run.py before it said so
        report.setdefault("baseline", "uwsgi")
        reports.append(report)
    order = {name: i for i, name in enumerate(BENCH_ORDER)}
    reports.sort(key=lambda r: order.get(r["bench"], len(order)))
    return reports


def panels(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per scenario: title, baseline, goal and (server, req/s or None) pairs."""
    out = []
    for report in reports:
        for key, scenario in report.get("apps", {}).items():
            servers = [
                (name, entry["chosen"]["rps"] if entry.get("chosen") else None)
                for name, entry in scenario.get("servers", {}).items()
            ]
            out.append(
                {
                    "bench": report["bench"],
                    "title": TITLES.get((report["bench"], key), f"{report['bench']}: {key}"),
                    "baseline": report["baseline"],
                    "goal": scenario.get("goal"),
                    "servers": servers,
                }
            )
    return out


def draw_panel(ax: Any, panel: dict[str, Any]) -> None:
    """Horizontal bars, the baseline's value as a dashed line, ratios at the bar ends."""
    names = [name for name, _ in panel["servers"]]
    values = [rps or 0.0 for _, rps in panel["servers"]]
    base = dict(panel["servers"]).get(panel["baseline"])
    colors = [
        BASELINE_COLOR
        if name == panel["baseline"]
        else GANTRY_COLOR
        if name.startswith("gantry")
        else PEER_COLOR
        for name in names
    ]
    y = range(len(names))
    ax.barh(y, values, color=colors)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    top = max(values, default=0.0) or 1.0
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("req/s")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.grid(axis="x", alpha=0.3)
    if base:
        ax.axvline(base, color=BASELINE_COLOR, linestyle="--", linewidth=1)
    for i, (name, rps) in enumerate(panel["servers"]):
        if rps is None:
            label = "FAILED"
        elif name == panel["baseline"] or not base:
            label = f"{rps:,.0f}"
        else:
            label = f"{rps:,.0f}  {rps / base:.2f}x"
            if panel["goal"] is not None and name.startswith("gantry"):
                verdict = "met" if rps / base >= panel["goal"] else "NOT met"
                label += f" (goal {panel['goal']}x: {verdict})"
        bold = name.startswith("gantry") and rps is not None and base and name != panel["baseline"]
        ax.text(
            (rps or 0.0) + top * 0.02, i, label, va="center", fontsize=9,
            fontweight="bold" if bold else "normal",
        )  # fmt: skip
    ax.set_title(f"{panel['title']}\nratios to {panel['baseline']}", fontsize=10)


def footer(reports: list[dict[str, Any]]) -> str:
    """Machine, versions and settings, from the first report that has them."""
    machine = next((r["machine"] for r in reports if "machine" in r), {})
    versions = next((r["versions"] for r in reports if "versions" in r), {})
    settings = next((r["settings"] for r in reports if "settings" in r), {})
    wanted = ["python", "uwsgi", "granian", "gunicorn", "waitress", "flask"]
    line1 = (
        f"{machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} CPUs, Linux "
        f"{machine.get('kernel', '?')}; "
        + ", ".join(f"{k} {versions[k]}" for k in wanted if k in versions)
    )
    line2 = (
        f"server pinned to CPU {settings.get('server_cpu', 0)}, wrk -t1 "
        f"-c{settings.get('connections', 50)} on CPU {settings.get('load_cpu', 1)}, "
        f"{settings.get('duration', '?')} s per run, {settings.get('aggregate', 'best')} of "
        f"{settings.get('rounds', '?')} "
        "interleaved round(s); one worker per server"
    )
    return f"{line1}\n{line2}"


def draw(reports: list[dict[str, Any]], out: Path) -> None:
    """Lay the panels out two per row and save the PNG."""
    found = panels(reports)
    if not found:
        raise SystemExit("no results to draw")
    columns = 2
    rows = (len(found) + columns - 1) // columns
    heights = []
    for row in range(rows):
        pair = found[row * columns : (row + 1) * columns]
        heights.append(max(len(p["servers"]) for p in pair) + 1.5)
    fig, axes = plt.subplots(
        rows, columns, figsize=(15, 0.42 * sum(heights) + 2.0),
        gridspec_kw={"height_ratios": heights}, squeeze=False,
    )  # fmt: skip
    for ax, panel in zip(axes.flat, found, strict=False):
        draw_panel(ax, panel)
    for ax in list(axes.flat)[len(found) :]:
        ax.axis("off")
    fig.suptitle("Gantry against its peers (higher is better)", fontsize=14, fontweight="bold")
    fig.text(0.5, 0.005, footer(reports), ha="center", va="bottom", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"chart written to {out}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, read the reports, draw the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files from the benches")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/bench.png"))
    args = parser.parse_args(argv)
    draw(load(args.results), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
