"""Benchmark the whole stack: `gantry up` against nginx + uWSGI, one worker each, one CPU.

Both stacks serve the same app behind a front server over a unix uwsgi socket:

- `gantry up -c FILE`: a front master + 1 worker and an app pool master + 1 worker;
- nginx (master + 1 worker, `uwsgi_pass unix:...; include uwsgi_params;`) in front of
  uWSGI (`--master --processes 1 --socket PATH`).

Every process of a stack is pinned to --server-cpu (taskset on the started process; its
children inherit), wrk -t1 -c50 to --load-cpu. Rounds are interleaved and the best (or
median) round stands for a stack, as in bench/run.py. Run `python bench/up.py --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from front import children, nginx_conf  # noqa: E402 - sibling modules, imported as scripts
from run import (  # noqa: E402
    REPO_ROOT,
    VENV_BIN,
    WARMUP_SECONDS,
    RoundResult,
    ServerProcess,
    Summary,
    app_report,
    check_common_args,
    common_parser,
    free_port,
    log_tail,
    prepare,
    print_progress,
    ratio,
    run_wrk,
    shorten,
    summarize,
    write_report,
)

#: the apps, as `gantry up` and uWSGI import them
UP_APPS = {"raw": "bench.apps:hello", "flask": "gantry.demo:app"}
#: gantry up's req/s over nginx+uWSGI's that this bench wants to see, per app
GOALS = {"raw": 1.2, "flask": 1.3}
GANTRY = "gantry up"
BASELINE = "nginx+uWSGI"
#: for reference, not a goal: the app server alone (master + 1 worker, HTTP, no front).
#: No front in front of it can be faster, so its ratio bounds what any front can reach.
ALONE = "serve alone"
STACKS = [BASELINE, GANTRY, ALONE]
SOCKET_TIMEOUT = 30.0
NGINX = "/usr/sbin/nginx"


def gantry_up_toml(port: int, target: str) -> str:
    """The `gantry up` config: one front worker proxying / to a pool of one app worker."""
    return f"""
[front]
listen = ["127.0.0.1:{port}"]
workers = 1
access_log = "off"  # as nginx's (access_log off in front.py's nginx_conf)
[[front.server]]
default = true
[[front.server.location]]
path = "/"
proxy = "hello"
[[app]]
name = "hello"
module = "{target}"
workers = 1
"""


def uwsgi_command(sock: Path, target: str) -> list[str]:
    """uWSGI on a unix uwsgi-protocol socket: a master and one process."""
    return [
        str(VENV_BIN / "uwsgi"), "--socket", str(sock), "--chmod-socket=666", "--wsgi", target,
        "--chdir", str(REPO_ROOT), "--processes", "1", "--master", "--need-app",
        "--disable-logging", "--die-on-term",
    ]  # fmt: skip


def wait_socket(sock: Path, process: ServerProcess, limit: float = SOCKET_TIMEOUT) -> None:
    """Until uWSGI has created its unix socket; raise if it exits or takes too long."""
    assert process.proc is not None
    deadline = time.monotonic() + limit
    while not sock.exists():
        if process.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"uWSGI did not create {sock.name}: {log_tail(process.log_path)}")
        time.sleep(0.05)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree = [pid]
    for child in children(pid):
        tree.extend(process_tree(child))
    return tree


def stack_pids(processes: list[ServerProcess]) -> list[int]:
    """Every PID of a stack: the started processes and all they forked."""
    return [pid for p in processes if p.proc is not None for pid in process_tree(p.proc.pid)]


def pinning(pids: list[int]) -> str:
    """The CPUs the processes may run on and how many there are, e.g. ``"0 (5 processes)"``;
    several sets when they differ (the pinning leaked)."""
    masks: list[str] = []
    count = 0
    for pid in pids:
        try:
            cpus = os.sched_getaffinity(pid)
        except OSError:
            continue
        count += 1
        mask = ",".join(map(str, sorted(cpus)))
        if mask not in masks:
            masks.append(mask)
    return f"{' | '.join(masks)} ({count} processes)"


def kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL any of ``pids`` still running after the stack was stopped; return them.
    (A stack whose children outlive SIGTERM to their parent has a shutdown bug.)"""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return left


def bench_stack(
    stack: str, app: str, round_no: int, args: argparse.Namespace, work: Path
) -> RoundResult:
    """Start a stack, warm it up, measure it, stop it; never raise for a stack's fault."""
    result = RoundResult(server=stack, app=app, round=round_no, ok=False)
    port = free_port()
    target = UP_APPS[app]
    tag = f"{app}-{stack.split()[0].replace('+', '-')}-{round_no}"
    processes: list[ServerProcess] = []
    pids: list[int] = []
    try:
        if stack == GANTRY:
            conf = work / f"{tag}.toml"
            conf.write_text(gantry_up_toml(port, target))
            command = [str(VENV_BIN / "gantry"), "up", "-c", str(conf)]
            front = ServerProcess(command, args.server_cpu, work / f"{tag}.log")
            processes.append(front)
            front.start()
        elif stack == ALONE:
            command = [str(VENV_BIN / "gantry"), "serve", target, "--http", f"127.0.0.1:{port}",
                       "--chdir", str(REPO_ROOT), "--workers", "1"]  # fmt: skip
            front = ServerProcess(command, args.server_cpu, work / f"{tag}.log")
            processes.append(front)
            front.start()
        else:
            sock = work / f"{tag}.sock"
            backend = ServerProcess(uwsgi_command(sock, target), args.server_cpu,
                                    work / f"{tag}-uwsgi.log")  # fmt: skip
            processes.append(backend)
            backend.start()
            wait_socket(sock, backend)
            # nginx's prefix and temp dirs are per run so no state carries over
            prefix = work / tag
            prefix.mkdir()
            conf = nginx_conf(prefix, port, prefix, sock)
            nginx = shutil.which("nginx") or NGINX
            front = ServerProcess([nginx, "-p", str(prefix), "-c", str(conf)], args.server_cpu,
                                  work / f"{tag}-nginx.log")  # fmt: skip
            processes.insert(0, front)
            front.start()
        front.wait_ready(port)
        run_wrk(port, WARMUP_SECONDS, args.connections, args.load_cpu)
        # After the warm-up, so workers forked lazily are counted too.
        pids = stack_pids(processes)
        result.cpus_allowed = pinning(pids)
        result.wrk = run_wrk(port, args.duration, args.connections, args.load_cpu)
        result.ok = True
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        result.failure = str(exc) or type(exc).__name__
    finally:
        # The front first, then the app server behind it.
        for process in processes:
            process.stop()
        left = kill_leftovers(pids)
        if left:
            print(f"(warning: {stack} left PIDs {left} running after SIGTERM; killed)", end=" ")
    return result


def paired_ratios(summaries: list[Summary], mine: str, base: str) -> list[float]:
    """``mine`` req/s over ``base`` req/s in each round both completed."""
    rounds = {s.server: {r.round: r.wrk for r in s.rounds if r.wrk} for s in summaries}
    ours, theirs = rounds.get(mine, {}), rounds.get(base, {})
    return [ours[n].rps / theirs[n].rps for n in sorted(ours) if n in theirs and theirs[n].rps]


def print_up_table(app: str, summaries: list[Summary]) -> float | None:
    """req/s, p99, errors, pinning and rounds per stack, then the ratio against its goal;
    returns the ratio (None when a stack failed)."""
    header = f"{'stack':<14}{'req/s':>10}{'p99 ms':>9}{'errors':>8}  {'CPUs':<20}rounds (req/s)"
    print(header)
    print("-" * len(header))
    for s in summaries:
        per_round = ", ".join(f"{r.wrk.rps:.0f}" if r.wrk else "fail" for r in s.rounds)
        if s.chosen is None:
            print(f"{s.server:<14}{'FAILED':>10}  {shorten(s.failure)}")
            continue
        w = s.chosen
        cpus = next((r.cpus_allowed for r in s.rounds if r.wrk is w), "")
        flag = " !" if w.errors else ""
        print(
            f"{s.server:<14}{w.rps:>10.0f}{w.p99_ms:>9.2f}{w.errors:>8}  {cpus:<20}"
            f"{per_round}{flag}"
        )
    for s in summaries:
        if s.chosen is not None and s.chosen.errors:
            print(f"! {s.server}: {s.chosen.non_2xx} non-2xx/3xx, socket errors "
                  f"{s.chosen.socket_errors}")  # fmt: skip
        for r in s.rounds:
            if not r.ok and s.chosen is not None:
                print(f"! {r.server} round {r.round} failed: {shorten(r.failure)}")
    by_name = {s.server: s.chosen for s in summaries}
    mine, base = by_name.get(GANTRY), by_name.get(BASELINE)
    goal = GOALS[app]
    shown = ratio(mine, base)
    if mine is None or base is None or shown == "-":
        print(f"{GANTRY} / {BASELINE}: -  (goal >= {goal}x)")
        return None
    value = mine.rps / base.rps
    verdict = "met" if value >= goal else "NOT met"
    print(f"{GANTRY} / {BASELINE}: {shown}  (goal >= {goal}x: {verdict})")
    paired = paired_ratios(summaries, GANTRY, BASELINE)
    if len(paired) > 1:
        # Each round's stacks run back to back: a round's ratio sees less of the
        # machine's drift than the best (or median) rounds taken apart.
        listed = ", ".join(f"{r:.2f}" for r in paired)
        print(f"  per round: {listed}; median {statistics.median(paired):.2f}x")
    alone = by_name.get(ALONE)
    if alone is not None:
        bound = ratio(alone, base)
        print(f"{ALONE} / {BASELINE}: {bound}  (no front at all: the bound for any front)")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run both stacks on every selected app, interleaved, and print the ratios."""
    parser = common_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    check_common_args(parser, args)
    report: dict[str, Any] | None = prepare(args)
    if report is None:
        return 2
    if shutil.which("nginx") is None and not Path(NGINX).exists():
        print("error: nginx is not installed", file=sys.stderr)
        return 2
    report.update(bench="up", baseline=BASELINE, goals=GOALS)
    with tempfile.TemporaryDirectory(prefix="gantry-up-") as tmp:
        work = Path(tmp)
        for app in args.app_names:
            rounds: list[RoundResult] = []
            for round_no in range(1, args.rounds + 1):
                for stack in STACKS:
                    print(f"  {app} round {round_no}: {stack} ...", end=" ", flush=True)
                    result = bench_stack(stack, app, round_no, args, work)
                    rounds.append(result)
                    print_progress(result)
            summaries = [summarize(rounds, s, args.aggregate) for s in STACKS]
            print(f"\n== {app} ({UP_APPS[app]}), {args.aggregate} of {args.rounds} ==")
            value = print_up_table(app, summaries)
            print()
            report["apps"][app] = app_report(UP_APPS[app], summaries)
            paired = paired_ratios(summaries, GANTRY, BASELINE)
            report["apps"][app].update(ratio=value, goal=GOALS[app], paired_ratios=paired)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
