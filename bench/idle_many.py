"""The idle_many load of bench/front.py: many idle keep-alive connections held by a
gantry front and by nginx, one after the other, with the same number of workers.

Issue 16's goal is 100,000 on one 2-worker front with a raised file limit, under 1 GiB.
Where the hard limit on open files cannot be raised (a container without
CAP_SYS_RESOURCE: 20,000 a process here), a worker holds at most that many, so the load
runs twice: 2 workers holding what the limit allows them, and enough workers (6 for
100,000 at 20,000 files each) to hold the whole count. On both sides the clients are
spread over processes of at most the file limit each, connecting from 127.0.0.2,
127.0.0.3, ... (PER_SOURCE connections an address), each child with a bounded number of
connections in flight.

For each front it reports: connections held (and why any were not), the time to open
them and the CPU time the front spent on it, total RSS and PSS (master + workers: RSS
counts the pages a master shares with its forked workers once per process, PSS divides
them), the bytes one more connection costs, how the workers shared the connections, and
the latency of a few requests on fresh connections and on held ones while they are held.
Every step has a timeout; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import multiprocessing
import os
import resource
import select
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fronts import (  # noqa: E402 - sibling modules, imported as scripts
    STATIC,
    children,
    gantry_front_command,
    nginx_command,
    start_server,
    status_kb,
    this_tree_first,
    tree_cpu,
)
from run import free_port  # noqa: E402

#: issue 16's goal: this many idle connections on one 2-worker front under 1 GiB
GOAL_CONNECTIONS = 100_000
REQUEST = b"GET /static/one.bin HTTP/1.1\r\nHost: b\r\n\r\n"
#: IP_BIND_ADDRESS_NO_PORT (Linux): the source port is chosen at connect, per 4-tuple
_BIND_NO_PORT = 24
#: connections per 127.0.0.x source address: connect() picks the even ephemeral ports first
#: (about 14,000 here) and scans them all before an odd one, slower with each one taken
PER_SOURCE = 10_000
#: files a worker keeps besides its clients (listener, epoll, logs, pipes, shared memory)
WORKER_SPARE_FILES = 100
#: a 2-worker run holds this share of what its file limit allows: connections reach the
#: workers of a shared listener unevenly, and a full worker refuses the rest
TWO_WORKER_SHARE = 0.95
#: a worker's share when the workers are chosen to hold the whole count
SPREAD_SHARE = 0.85
#: connections each client child has in flight (connecting or awaiting its answer): the
#: children together stay under the listen queues (gantry 2048, nginx's 4096 here)
WINDOW = 250
#: seconds: a connection's answer; all connections of a run; a probe; a child's reply
ANSWER_TIMEOUT = 30.0
OPEN_TIMEOUT = 600.0
PROBE_TIMEOUT = 10.0
PROBES = 20


def _answered(data: bytes) -> bool | None:
    """True once ``data`` holds a whole 200 answer with STATIC, False for another status,
    None while it is incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    if not data.startswith(b"HTTP/1.1 200"):
        return False
    return True if len(data) >= end + 4 + len(STATIC) else None


def open_connections(port: int, first: int, count: int, deadline: float) -> tuple[
    list[socket.socket], dict[str, int]
]:  # fmt: skip
    """Connections ``first`` .. ``first + count - 1`` to ``port``, each from its source
    address, each answered once: the held sockets, and the failures by cause."""
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, list[Any]] = {}  # sock -> [connected, answer, started]
    held: list[socket.socket] = []
    failures: dict[str, int] = {}
    upcoming, end = first, first + count

    def fail(sock: socket.socket, cause: str) -> None:
        failures[cause] = failures.get(cause, 0) + 1
        selector.unregister(sock)
        del pending[sock]
        sock.close()

    while upcoming < end or pending:
        now = time.monotonic()
        if now > deadline:
            failures["not opened in time"] = end - upcoming + len(pending)
            break
        while upcoming < end and len(pending) < WINDOW:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
            sock.bind((f"127.0.0.{2 + upcoming // PER_SOURCE}", 0))
            sock.setblocking(False)
            upcoming += 1
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                cause = errno.errorcode.get(code, str(code))
                failures[cause] = failures.get(cause, 0) + 1
                sock.close()
                continue
            pending[sock] = [False, b"", now]
            selector.register(sock, selectors.EVENT_WRITE)
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj  # type: ignore[assignment]
            state = pending[sock]
            if not state[0]:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(sock, errno.errorcode.get(code, str(code)))
                    continue
                state[0] = True
                sock.send(REQUEST)  # 40 bytes into an empty send buffer
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                piece = sock.recv(65536)
            except OSError as exc:
                fail(sock, errno.errorcode.get(exc.errno or 0, "error"))
                continue
            if not piece:
                fail(sock, "closed by the server")
                continue
            state[1] += piece
            verdict = _answered(state[1])
            if verdict is False:
                fail(sock, "not 200")
            elif verdict:
                selector.unregister(sock)
                del pending[sock]
                held.append(sock)
        for sock in [s for s, state in pending.items() if now - state[2] > ANSWER_TIMEOUT]:
            fail(sock, "no answer in time")
    for sock in pending:
        sock.close()
    selector.close()
    return held, failures


def timed_request(sock: socket.socket) -> float | str:
    """Milliseconds for REQUEST's answer on ``sock``, or why there was none."""
    sock.settimeout(PROBE_TIMEOUT)
    started = time.monotonic()
    try:
        sock.sendall(REQUEST)
        data = b""
        while (verdict := _answered(data)) is None:
            piece = sock.recv(65536)
            if not piece:
                return "closed" if not data else "closed mid-answer"
            data += piece
    except OSError as exc:
        return type(exc).__name__
    return (time.monotonic() - started) * 1000 if verdict else data[:12].decode("latin-1")


def _holder(port: int, first: int, count: int, deadline: float, pipe: Any) -> None:
    """A child: open its connections, say how it went, then answer "open" (how many the
    server has not closed since) and "probe" (a request on a few of them) until told
    "close"."""
    try:
        held, failures = open_connections(port, first, count, deadline)
    except Exception as exc:  # told to the parent, which reports it
        pipe.send({"held": 0, "failures": {f"client error: {exc}": count}})
        return
    pipe.send({"held": len(held), "failures": failures})
    while True:
        if not pipe.poll(OPEN_TIMEOUT):
            break  # the parent is gone
        word = pipe.recv()
        if word == "open":
            pipe.send(still_open(held))
            continue
        if word != "probe":
            break
        step = max(1, len(held) // PROBES)
        pipe.send([timed_request(held[n]) for n in range(0, len(held), step)][:PROBES])
    for sock in held:
        sock.close()


def still_open(held: list[socket.socket]) -> int:
    """How many of ``held`` the server has not closed: an idle one has nothing to read,
    so a readable one was closed (or reset) by the server."""
    poller = select.poll()
    for sock in held:
        poller.register(sock, select.POLLIN)
    return len(held) - len(poller.poll(0))


def _fresh_probe(port: int) -> float | str:
    """Milliseconds for REQUEST's answer on a new connection, or why there was none."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            answer = timed_request(sock)
    except OSError as exc:
        return type(exc).__name__
    return answer if isinstance(answer, str) else (time.monotonic() - started) * 1000


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` and its children (a master and its workers), in MB."""
    tree = [pid, *children(pid)]
    return (
        sum(status_kb(p, "VmRSS") for p in tree) / 1024,
        sum(status_kb(p, "Pss") for p in tree) / 1024,
    )


def sockets_per_worker(pid: int) -> list[int]:
    """How many sockets each worker of master ``pid`` has open (its clients, mostly)."""
    counts = []
    for worker in children(pid):
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{worker}/fd"):
                with contextlib.suppress(OSError):
                    n += os.readlink(f"/proc/{worker}/fd/{fd}").startswith("socket:")
        counts.append(n)
    return sorted(counts, reverse=True)


def nginx_idle_command(
    work: Path, port: int, workers: int, per_worker: int, files: int
) -> list[str]:
    """nginx with ``workers`` workers of ``per_worker`` connections each."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir(exist_ok=True)
    conf = work / f"idle-nginx-{workers}.conf"
    conf.write_text(
        f"""
daemon off; master_process on; worker_processes {workers}; user root;
worker_rlimit_nofile {files}; error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
events {{ worker_connections {per_worker}; }}
http {{
  access_log off; keepalive_requests 100000; keepalive_timeout 3600s;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{ listen 127.0.0.1:{port} backlog=4096; location /static/ {{ root {work}/site; }} }}
}}
"""
    )
    return nginx_command(work, conf)


def gantry_idle_command(
    work: Path, port: int, workers: int, per_worker: int, files: int
) -> list[str]:
    """gantry front with ``workers`` workers of ``per_worker`` connections each."""
    conf = work / f"idle-front-{workers}.toml"
    conf.write_text(
        f"""
[front]
listen = ["127.0.0.1:{port}"]
workers = {workers}
worker_connections = {per_worker}
worker_rlimit_nofile = {files}
keepalive_timeout = "3600s"
keepalive_requests = 100000
access_log = "off"
[[front.server]]
[[front.server.location]]
path = "/static/"
root = "{work}/site"
"""
    )
    return gantry_front_command(conf)


def hold_and_measure(
    name: str,
    command: list[str],
    port: int,
    count: int,
    per_child: int,
    work: Path,
    workers: int,
) -> dict[str, Any]:
    """Start one front, open ``count`` connections from children of at most
    ``per_child`` each, measure it while they are held, stop everything."""
    # the log of each front and run kept (under the bench's temporary folder)
    server = start_server(command, "0,1", work / f"idle-{name}-{workers}w.log", port, 30.0)
    context = multiprocessing.get_context("fork")
    pipes: list[Any] = []
    holders: list[Any] = []
    try:
        assert server.proc is not None
        pid = server.proc.pid
        time.sleep(0.5)  # the workers' start-up allocations done before "before"
        rss_before, pss_before = memory_mb(pid)
        cpu_before = tree_cpu(pid)
        started = time.monotonic()
        deadline = started + OPEN_TIMEOUT
        for first in range(0, count, per_child):
            parent, child = context.Pipe()
            process = context.Process(
                target=_holder,
                args=(port, first, min(per_child, count - first), deadline, child),
                daemon=True,
            )
            process.start()
            pipes.append(parent)
            holders.append(process)
        said = []
        for pipe in pipes:  # every child has the same deadline, and a little more
            if not pipe.poll(max(1.0, deadline + 30 - time.monotonic())):
                raise RuntimeError(f"{name}: a client child did not report in time")
            said.append(pipe.recv())
        took = time.monotonic() - started
        cpu_open = tree_cpu(pid) - cpu_before
        held = sum(s["held"] for s in said)
        failures: dict[str, int] = {}
        for s in said:
            for cause, n in s["failures"].items():
                failures[cause] = failures.get(cause, 0) + n
        time.sleep(1.0)  # let the workers' memory settle after the last answers
        rss, pss = memory_mb(pid)
        spread = sockets_per_worker(pid)
        # the clients' view: a front may close idle connections to keep places free
        still = 0
        for pipe in pipes:
            pipe.send("open")
            if pipe.poll(30):
                still += pipe.recv()
        fresh = [_fresh_probe(port) for _ in range(PROBES)]
        on_held: list[float | str] = []
        if held:
            pipes[0].send("probe")
            if pipes[0].poll(PROBES * PROBE_TIMEOUT + 5):
                on_held = pipes[0].recv()
        rss_after, pss_after = memory_mb(pid)
        # per connection the front still holds (it may have closed some of those opened)
        per_connection = (rss - rss_before) * 1024 * 1024 / max(still, 1)
        figures = {
            "asked": count, "held": held, "failures": failures,
            "still_open": still,
            "open_seconds": round(took, 1),
            "cpu_seconds_open": round(cpu_open, 2),
            "cpu_us_per_connection": round(cpu_open * 1e6 / max(held, 1)),
            "rss_mb_before": round(rss_before, 1), "pss_mb_before": round(pss_before, 1),
            "rss_mb": round(rss, 1), "pss_mb": round(pss, 1),
            "rss_mb_after_probes": round(rss_after, 1),
            "bytes_per_connection": round(per_connection),
            # what GOAL_CONNECTIONS would take at this cost (this front's base + each one)
            "projected_mb_at_goal": round(
                rss_before + per_connection * GOAL_CONNECTIONS / (1024 * 1024), 1
            ),
            "pss_bytes_per_connection": round((pss - pss_before) * 1024 * 1024 / max(still, 1)),
            "sockets_per_worker": spread,
            # each probe's milliseconds, or why it got no answer
            "fresh_probe_ms": [v if isinstance(v, str) else round(v, 2) for v in fresh],
            "held_probe_ms": [v if isinstance(v, str) else round(v, 2) for v in on_held],
            "answering": bool(on_held)
            and not any(isinstance(v, str) for v in [*fresh, *on_held]),
        }  # fmt: skip
        return figures
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("close")
        for process in holders:
            process.join(10)
            if process.is_alive():
                process.kill()  # by its PID
                process.join(5)
        server.stop()


def _ms(values: list[float | str]) -> str:
    got = [v for v in values if not isinstance(v, str)]
    missed = [v for v in values if isinstance(v, str)]
    text = (
        f"median {statistics.median(got):.1f} ms, max {max(got):.1f} ms" if got else "none answered"
    )
    return text + (f" ({len(missed)} not: {', '.join(sorted(set(missed)))})" if missed else "")


def plan(count: int, files: int, workers_asked: list[int]) -> list[tuple[int, int]]:
    """(workers, connections) of each run: 2 workers holding what their file limit
    allows, up to ``count``, then enough workers to hold ``count`` (or those asked)."""
    capacity = files - WORKER_SPARE_FILES
    if workers_asked:
        return [(w, min(count, int(w * capacity * TWO_WORKER_SHARE))) for w in workers_asked]
    runs = [(2, min(count, int(2 * capacity * TWO_WORKER_SHARE)))]
    enough = max(2, math.ceil(count / (capacity * SPREAD_SHARE)))
    if runs[0][1] < count:
        runs.append((enough, count))
    return runs


def raise_file_limit(count: int) -> tuple[int, bool]:
    """The open-file limit the fronts and the clients inherit, as high as allowed: (the
    limit, whether it could be raised to what ``count`` connections need)."""
    wanted = min(int(Path("/proc/sys/fs/nr_open").read_text()), count + 20_000)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        return wanted, True
    except (ValueError, OSError):
        # no CAP_SYS_RESOURCE (a container): the hard limit is what there is
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard, hard >= wanted


def idle_bench(args: argparse.Namespace) -> dict[str, Any]:
    """bench/front.py's idle_many load: ``args.idle_connections`` idle keep-alive
    connections on gantry and nginx, with the workers of ``plan``."""
    count = args.idle_connections
    files, raised = raise_file_limit(count)
    if not raised:
        print(f"the open-file limit is {files:,} a process and cannot be raised here "
              f"(no CAP_SYS_RESOURCE): a worker holds at most about "
              f"{files - WORKER_SPARE_FILES:,} connections, a client child as many",
              flush=True)  # fmt: skip
    workers_asked = [int(w) for w in args.idle_workers.split(",") if w]
    per_child = files - WORKER_SPARE_FILES
    this_tree_first()
    runs = []
    with tempfile.TemporaryDirectory(prefix="gidle-") as tmp:
        work = Path(tmp)
        (work / "site" / "static").mkdir(parents=True)
        (work / "site" / "static" / "one.bin").write_bytes(STATIC)
        for workers, connections in plan(count, files, workers_asked):
            # a worker may take more than its share (the kernel picks who accepts): each
            # may hold what its file limit allows
            per_worker = min(files - WORKER_SPARE_FILES, connections + 1000)
            print(f"\n{workers} workers each side, {connections:,} idle connections "
                  f"(worker_connections {per_worker:,}, {math.ceil(connections / per_child)} "
                  f"client processes)", flush=True)  # fmt: skip
            results = {}
            for name in ("nginx", "gantry"):
                port = free_port()
                if name == "nginx":
                    command = nginx_idle_command(work, port, workers, per_worker, files)
                else:
                    command = gantry_idle_command(work, port, workers, per_worker, files)
                try:
                    figures = hold_and_measure(
                        name, command, port, connections, per_child, work, workers
                    )
                except Exception as exc:  # noqa: BLE001 - reported, and the other front runs
                    print(f"{name}: FAILED: {exc}", flush=True)
                    results[name] = {"error": str(exc)}
                    continue
                results[name] = figures
                print(
                    f"{name:6}: held {figures['held']:,} of {connections:,} "
                    f"({figures['still_open']:,} still open when measured)"
                    + (f" (not held: {figures['failures']})" if figures["failures"] else "")
                    + f", opened in {figures['open_seconds']:.1f} s "
                    f"({figures['cpu_us_per_connection']} us of the front's CPU each); "
                    f"RSS {figures['rss_mb']:.0f} MB (PSS {figures['pss_mb']:.0f} MB), "
                    f"was {figures['rss_mb_before']:.0f} MB: "
                    f"{figures['bytes_per_connection']:,} bytes a connection; "
                    f"per worker {figures['sockets_per_worker']}; "
                    f"new connections {_ms(figures['fresh_probe_ms'])}, "
                    f"held ones {_ms(figures['held_probe_ms'])}",
                    flush=True,
                )
            if all("rss_mb" in r for r in results.values()) and len(results) == 2:
                g, n = results["gantry"], results["nginx"]
                print(
                    f"gantry / nginx: RSS {g['rss_mb'] / max(n['rss_mb'], 0.1):.2f}x, PSS "
                    f"{g['pss_mb'] / max(n['pss_mb'], 0.1):.2f}x, per connection "
                    f"{g['bytes_per_connection'] / max(n['bytes_per_connection'], 1):.2f}x, "
                    f"time to open {g['open_seconds'] / max(n['open_seconds'], 0.1):.2f}x; "
                    f"gantry under 1 GiB: {g['rss_mb'] < 1024}",
                    flush=True,
                )
            runs.append({"workers": workers, "connections": connections, "results": results})
    goal_held = any(
        run["workers"] == 2 and run["results"].get("gantry", {}).get("held", 0) >= GOAL_CONNECTIONS
        for run in runs
    )
    if not goal_held:
        print(f"\n{GOAL_CONNECTIONS:,} connections on 2 workers were NOT held here: the "
              f"open-file limit is {files:,} a process; the runs above are what it allows",
              flush=True)  # fmt: skip
    return {"file_limit": files, "limit_raised": raised, "runs": runs, "goal_held": goal_held}
