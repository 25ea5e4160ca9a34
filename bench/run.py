"""Benchmark Gantry's application server against uWSGI, gunicorn, waitress and granian.

Run ``python bench/run.py --help``. Each server runs pinned to one CPU, wrk runs pinned to
another, rounds are interleaved across servers, and the table gives every server's ratio to
uWSGI and to granian. See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# Benches run as root here, as their peers do: Gantry's workers are asked to as well
# (it refuses to run them as root otherwise). front.py and up.py import this module.
os.environ.setdefault("GANTRY_ALLOW_ROOT", "1")
BENCH_VENV = REPO_ROOT / ".venv-bench"
VENV_BIN = BENCH_VENV / "bin"
# Touched after a successful install; older than pyproject.toml means "install again".
VENV_MARKER = BENCH_VENV / ".installed-bench"
PEER_PACKAGES = ["uwsgi", "gunicorn", "waitress", "granian", "flask"]
VERSIONED_PACKAGES = ["gantry", *PEER_PACKAGES, "httptools", "uvloop"]

APPS = {"raw": "bench.apps:hello", "flask": "bench.apps:flask_app"}
EXPECTED_BODY = b"Hello World!"
PATH = "/hello"

# Gantry variants: (server name, extra `gantry serve` flags). Add more here.
GANTRY_VARIANTS: list[tuple[str, list[str]]] = [
    ("gantry", []),
    ("gantry-threads4", ["--threads", "4"]),
    # the process manager: a master and one worker (should cost nothing per request)
    ("gantry-master1", ["--workers", "1"]),
    # two workers, against uWSGI with two processes (both on both cores, with wrk)
    ("gantry-2workers", ["--workers", "2"]),
]
PEERS = ["uwsgi", "gunicorn", "waitress", "granian", "uwsgi-2proc"]
SERVERS = [name for name, _ in GANTRY_VARIANTS] + PEERS
#: what `--only` runs when not given: the single-core comparison of the first issue
DEFAULT_SERVERS = ["gantry", "gantry-threads4", "uwsgi", "gunicorn", "waitress", "granian"]
#: servers that use both cores (and share them with wrk) instead of --server-cpu
TWO_CORE_SERVERS = {"gantry-2workers", "uwsgi-2proc"}

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
WARMUP_SECONDS = 2


def server_command(server: str, target: str, port: int) -> list[str]:
    """Build the command line that serves WSGI ``target`` on 127.0.0.1:``port``."""
    host = "127.0.0.1"
    for name, extra in GANTRY_VARIANTS:
        if server == name:
            return [
                str(VENV_BIN / "gantry"), "serve", target,
                "--http", f"{host}:{port}", "--chdir", str(REPO_ROOT), *extra,
            ]  # fmt: skip
    if server in ("uwsgi", "uwsgi-2proc"):
        processes = "2" if server == "uwsgi-2proc" else "1"
        # --http-socket closes after each response without saying so, which wrk counts as
        # a read error per request; the header makes wrk reconnect cleanly. Not
        # --http11-socket: a single sync worker then serves one keep-alive connection
        # at a time and starves the other 49.
        return [
            str(VENV_BIN / "uwsgi"), "--http-socket", f"{host}:{port}", "--wsgi", target,
            "--chdir", str(REPO_ROOT), "--processes", processes, "--master", "--need-app",
            "--disable-logging", "--die-on-term", "--add-header", "Connection: close",
        ]  # fmt: skip
    if server == "gunicorn":
        return [
            str(VENV_BIN / "gunicorn"), "-w", "1", "-k", "sync", "-b", f"{host}:{port}",
            "--chdir", str(REPO_ROOT), target,
        ]  # fmt: skip
    if server == "waitress":
        # Waitress keeps its default of 4 threads on purpose: that is how it is deployed.
        return [str(VENV_BIN / "waitress-serve"), f"--listen={host}:{port}", target]
    if server == "granian":
        return [
            str(VENV_BIN / "granian"), "--interface", "wsgi", "--workers", "1",
            "--http", "1", "--no-ws", "--no-access-log", "--log-level", "warning",
            "--host", host, "--port", str(port), target,
        ]  # fmt: skip
    raise ValueError(f"unknown server {server!r}")


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int
    rps: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        """Non-2xx/3xx responses plus socket errors of every kind."""
        return self.non_2xx + sum(self.socket_errors.values())


@dataclass
class RoundResult:
    """One server, one app, one round: a measurement or the reason there is none."""

    server: str
    app: str
    round: int
    ok: bool
    failure: str = ""
    wrk: WrkResult | None = None
    cpus_allowed: str = ""


@dataclass
class Summary:
    """A server's rounds for one app reduced to one figure."""

    server: str
    rounds: list[RoundResult] = field(default_factory=list)
    chosen: WrkResult | None = None
    failure: str = ""


_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> WrkResult:
    """Extract req/s, p99 latency and error counts from ``wrk --latency`` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    if rps is None or total is None or p99 is None:
        raise ValueError("wrk output lacks Requests/sec, request count or 99% latency")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if sock is not None:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    return WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p99_ms=float(p99.group(1)) * _LATENCY_UNITS_MS[p99.group(2)],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def probe(port: int) -> bytes | None:
    """GET /hello once; the body when the answer is 200, else None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", PATH)
        resp = conn.getresponse()
        body = resp.read()
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a server's log, to say why it failed."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def shorten(text: str, width: int = 160) -> str:
    """Keep the end of a long message: that is where a traceback names the error."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


class ServerProcess:
    """A server started in its own session, pinned to one CPU, stopped by process group."""

    def __init__(self, command: list[str], cpu: int | str, log_path: Path) -> None:
        self.command = ["taskset", "-c", str(cpu), *command]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the server; its stdout and stderr go to the log file."""
        env = dict(os.environ)
        # Belt and braces next to --chdir: every server can import `bench.apps`.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, port: int, timeout: float = READY_TIMEOUT) -> None:
        """Return once GET /hello answers 200 with the expected body; raise otherwise."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"exited with code {self.proc.returncode} before answering: "
                    f"{log_tail(self.log_path)}"
                )
            body = probe(port)
            if body is not None:
                if body != EXPECTED_BODY:
                    raise RuntimeError(f"unexpected body {body[:60]!r}")
                return
            time.sleep(0.1)
        raise RuntimeError(f"no 200 on {PATH} within {timeout:.0f} s: {log_tail(self.log_path)}")

    def cpus_allowed(self) -> str:
        """The CPU list the kernel lets the server run on (to prove the pinning)."""
        if self.proc is None:
            return ""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return ""
        match = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
        return match.group(1) if match else ""

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it after STOP_TIMEOUT seconds."""
        if self.proc is None:
            return
        # taskset execs the server, so the child's PID is the server's and leads its group.
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        # Workers forked by a master may outlive it; the group kill reaches them too.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def run_wrk(port: int, duration: int, connections: int, cpu: int) -> WrkResult:
    """Load the server with wrk pinned to ``cpu`` for ``duration`` seconds."""
    command = [
        "taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
        "--latency", f"http://127.0.0.1:{port}{PATH}",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()[:200]}")
    return parse_wrk(done.stdout)


def bench_one(
    server: str, app: str, round_no: int, args: argparse.Namespace, log_dir: Path
) -> RoundResult:
    """Start one server, warm it up, measure it, stop it; never raise for a server's fault."""
    result = RoundResult(server=server, app=app, round=round_no, ok=False)
    port = free_port()
    log_path = log_dir / f"{app}-{server}-{round_no}.log"
    cpus = "0,1" if server in TWO_CORE_SERVERS else args.server_cpu
    process = ServerProcess(server_command(server, APPS[app], port), cpus, log_path)
    try:
        process.start()
        process.wait_ready(port)
        result.cpus_allowed = process.cpus_allowed()
        run_wrk(port, WARMUP_SECONDS, args.connections, args.load_cpu)
        result.wrk = run_wrk(port, args.duration, args.connections, args.load_cpu)
        result.ok = True
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        result.failure = str(exc) or type(exc).__name__
    finally:
        process.stop()
    return result


def summarize(rounds: list[RoundResult], server: str, aggregate: str) -> Summary:
    """Reduce a server's rounds to the best or the median run by req/s."""
    mine = [r for r in rounds if r.server == server]
    good = sorted((r.wrk for r in mine if r.ok and r.wrk), key=lambda w: w.rps)
    summary = Summary(server=server, rounds=mine)
    if not good:
        summary.failure = next((r.failure for r in mine if r.failure), "no run")
    elif aggregate == "best":
        summary.chosen = good[-1]
    else:
        # The median run itself (lower middle for an even count), so rps, p99 and errors
        # all come from one real run.
        summary.chosen = good[(len(good) - 1) // 2]
    return summary


def ratio(value: WrkResult | None, base: WrkResult | None) -> str:
    """``value`` req/s over ``base`` req/s, or '-' when either is missing."""
    if value is None or base is None or base.rps == 0:
        return "-"
    return f"{value.rps / base.rps:.2f}x"


def print_table(app: str, summaries: list[Summary]) -> None:
    """One line per server: req/s, p99, errors and ratios to uWSGI and granian."""
    by_name = {s.server: s for s in summaries}
    uwsgi = by_name["uwsgi"].chosen if "uwsgi" in by_name else None
    granian = by_name["granian"].chosen if "granian" in by_name else None
    header = (
        f"{'server':<18}{'req/s':>11}{'p99 ms':>9}{'errors':>8}"
        f"{'vs uWSGI':>10}{'vs granian':>12}  rounds (req/s)"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        per_round = ", ".join(f"{r.wrk.rps:.0f}" if r.wrk else "fail" for r in s.rounds)
        if s.chosen is None:
            print(f"{s.server:<18}{'FAILED':>11}  {shorten(s.failure)}")
            continue
        w = s.chosen
        flag = " !" if w.errors else ""
        print(
            f"{s.server:<18}{w.rps:>11.0f}{w.p99_ms:>9.2f}{w.errors:>8}"
            f"{ratio(w, uwsgi):>10}{ratio(w, granian):>12}  {per_round}{flag}"
        )
    flagged = [s for s in summaries if s.chosen and s.chosen.errors]
    for s in flagged:
        assert s.chosen is not None
        print(
            f"! {s.server}: {s.chosen.non_2xx} non-2xx/3xx, socket errors {s.chosen.socket_errors}"
        )
    failed_rounds = [r for s in summaries for r in s.rounds if not r.ok and s.chosen]
    for r in failed_rounds:
        print(f"! {r.server} round {r.round} failed: {shorten(r.failure)}")


def machine_info() -> dict[str, Any]:
    """CPU count and model, kernel and Python, for the report."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_lines = (wrk.stdout + wrk.stderr).strip().splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "cpu_model": model or platform.processor() or "unknown",
        "kernel": platform.release(),
        "wrk": wrk_lines[0] if wrk_lines else "wrk",
    }


def ensure_bench_venv() -> None:
    """Create .venv-bench with the peers and an editable Gantry unless it is up to date."""
    pyproject = REPO_ROOT / "pyproject.toml"
    if VENV_MARKER.exists() and VENV_MARKER.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    print(f"setting up {BENCH_VENV} (uWSGI compiles from source: 1-2 minutes) ...", flush=True)
    if not (VENV_BIN / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    pip = [str(VENV_BIN / "python"), "-m", "pip", "install", "-q"]
    # The `bench` extra adds matplotlib (bench/chart.py) and pins the peers' minimum versions.
    subprocess.run([*pip, *PEER_PACKAGES, "-e", f"{REPO_ROOT}[bench]"], check=True)
    VENV_MARKER.touch()


def installed_versions() -> dict[str, str]:
    """Versions of the servers and libraries installed in .venv-bench."""
    script = (
        "import json, sys\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "out = {'python': sys.version.split()[0]}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        out[name] = version(name)\n"
        "    except PackageNotFoundError:\n"
        "        out[name] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script, *VERSIONED_PACKAGES],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def common_parser(description: str) -> argparse.ArgumentParser:
    """The options every bench script shares (run.py, up.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per server")
    parser.add_argument("--apps", default="raw,flask", help="comma-separated: raw,flask")
    parser.add_argument(
        "--aggregate", choices=["best", "median"], default="best",
        help="which round stands for a server (by req/s)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU wrk is pinned to")
    parser.add_argument(
        "--skip-setup", action="store_true", help="do not create or update .venv-bench"
    )
    return parser


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate the shared options; set ``args.app_names``."""
    args.app_names = [a for a in args.apps.split(",") if a]
    for name in args.app_names:
        if name not in APPS:
            parser.error(f"unknown app {name!r}; known: {', '.join(APPS)}")
    if args.duration < 1 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be at least 1")
    usable = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.load_cpu):
        if cpu not in usable:
            parser.error(f"CPU {cpu} is not usable here (usable: {sorted(usable)})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated servers to run (of {','.join(SERVERS)})"
    )
    args = parser.parse_args(argv)
    check_common_args(parser, args)
    args.servers = [s for s in args.only.split(",") if s] or list(DEFAULT_SERVERS)
    for name in args.servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
    return args


def prepare(args: argparse.Namespace) -> dict[str, Any] | None:
    """Check the tools and .venv-bench, print the machine and the settings; return the
    report's head (machine, versions, settings), or None after printing why not."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed", file=sys.stderr)
            return None
    if not args.skip_setup:
        try:
            ensure_bench_venv()
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: could not set up {BENCH_VENV}: {exc}", file=sys.stderr)
            return None
    if not (VENV_BIN / "python").exists():
        print(f"error: {BENCH_VENV} is missing (run without --skip-setup)", file=sys.stderr)
        return None
    machine = machine_info()
    versions = installed_versions()
    print(f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Linux {machine['kernel']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f", {machine['wrk']}")
    if args.server_cpu == args.load_cpu:
        print("warning: server and wrk share one CPU; figures will be low and noisy")
    print(
        f"each run: server on CPU {args.server_cpu}, `wrk -t1 -c{args.connections} "
        f"-d{args.duration}s` on CPU {args.load_cpu}, after a {WARMUP_SECONDS} s warm-up; "
        f"{args.rounds} interleaved round(s), {args.aggregate} round per server",
        flush=True,
    )
    return {
        "machine": machine,
        "versions": versions,
        "settings": {
            "duration": args.duration,
            "connections": args.connections,
            "rounds": args.rounds,
            "aggregate": args.aggregate,
            "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu,
            "warmup": WARMUP_SECONDS,
        },
        "apps": {},
    }


def print_progress(result: RoundResult) -> None:
    """The end of a progress line: the run's req/s and errors, or why it failed."""
    if result.wrk is not None:
        errs = f", {result.wrk.errors} errors" if result.wrk.errors else ""
        print(f"{result.wrk.rps:.0f} req/s{errs}", flush=True)
    else:
        print(f"FAILED: {shorten(result.failure)}", flush=True)


def app_report(target: str, summaries: list[Summary]) -> dict[str, Any]:
    """One app's part of the JSON report: every server's chosen run and rounds."""
    return {
        "target": target,
        "servers": {
            s.server: {
                "chosen": asdict(s.chosen) if s.chosen else None,
                "failure": s.failure,
                "rounds": [asdict(r) for r in s.rounds],
            }
            for s in summaries
        },
    }


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    """Write the JSON report when a path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {path}")


def main(argv: list[str] | None = None) -> int:
    """Run every selected server on every selected app and print the tables."""
    args = parse_args(argv)
    report = prepare(args)
    if report is None:
        return 2
    # For bench/chart.py: which bench this is and which server the ratios are taken to.
    report.update(bench="serve", baseline="uwsgi")
    with tempfile.TemporaryDirectory(prefix="gantry-bench-") as tmp:
        log_dir = Path(tmp)
        for app in args.app_names:
            rounds: list[RoundResult] = []
            for round_no in range(1, args.rounds + 1):
                # Interleaved: every server once per round, so drift hits all alike.
                for server in args.servers:
                    print(f"  {app} round {round_no}: {server} ...", end=" ", flush=True)
                    result = bench_one(server, app, round_no, args, log_dir)
                    rounds.append(result)
                    print_progress(result)
            summaries = [summarize(rounds, s, args.aggregate) for s in args.servers]
            print(f"\n== {app} ({APPS[app]}), {args.aggregate} of {args.rounds} ==")
            print_table(app, summaries)
            print()
            report["apps"][app] = app_report(APPS[app], summaries)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
