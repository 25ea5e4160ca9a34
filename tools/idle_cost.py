"""What one idle keep-alive connection costs a front worker: an in-process worker (the
production loop, uvloop when installed) serves N connections a child process opens (one
request answered on each, then held idle); tracemalloc snapshots diffed before/after
(by line and by type) and the RSS delta, per connection.

    GANTRY_PURE=1 PYTHONPATH=src python tools/idle_cost.py -n 5000
    PYTHONPATH=src python tools/idle_cost.py -n 5000 --no-trace   # compiled, RSS only
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import socket
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

REQUEST = b"GET /static/one.bin HTTP/1.1\r\nHost: b\r\n\r\n"


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _hold(port: int, count: int, conn: Any) -> None:
    """The child: ``count`` connections, one request answered on each, held until told."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(REQUEST)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"x"):
            piece = sock.recv(65536)
            if not piece:
                raise SystemExit("closed by the server")
            answer += piece
        held.append(sock)
    conn.send("held")
    conn.recv()


def _types() -> Counter[str]:
    return Counter(type(o).__name__ for o in gc.get_objects())


def main() -> int:
    """Measure and print the per-connection cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="connections (default 5000)")
    parser.add_argument("--no-trace", action="store_true", help="RSS only (no tracemalloc)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    from gantry.config.front import front_config_from_dict
    from gantry.front.connection import FrontConnection
    from gantry.front.worker import FrontWorker
    from gantry.process.runtime import new_event_loop

    tmp = Path(tempfile.mkdtemp(prefix="gidlecost-"))
    (tmp / "static").mkdir()
    (tmp / "static" / "one.bin").write_bytes(b"x" * 100)
    config = front_config_from_dict(
        {
            "listen": ["127.0.0.1:0"],
            "worker_connections": args.n + 100,
            "keepalive_timeout": "600s",
            "access_log": "off",
            "server": [{"location": [{"path": "/static/", "root": str(tmp)}]}],
        }
    )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    worker = FrontWorker(config, loop)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    holder = context.Process(target=_hold, args=(port, args.n, child), daemon=True)

    async def run() -> None:
        worker.start_clock()
        server = await loop.create_server(lambda: FrontConnection(worker, 0), sock=sock)
        # warm up: one connection's first-use costs (routes, caches) are not per connection
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        await reader.readuntil(b"x" * 100)
        writer.close()
        await asyncio.sleep(0.1)
        gc.collect()
        types_before = _types()
        if not args.no_trace:
            tracemalloc.start(3)
        before = tracemalloc.take_snapshot() if not args.no_trace else None
        rss_before = _rss_kb()
        holder.start()
        while not parent.poll():
            await asyncio.sleep(0.05)
        parent.recv()
        await asyncio.sleep(0.2)
        gc.collect()
        rss_after = _rss_kb()
        held = len(worker.connections)
        per = (rss_after - rss_before) * 1024 / max(held, 1)
        print(f"{held} idle connections held; RSS +{(rss_after - rss_before) / 1024:.1f} MB: "
              f"{per:.0f} bytes per connection ({'pure' if _pure() else 'compiled'})")  # fmt: skip
        if before is not None:
            after = tracemalloc.take_snapshot()
            stats = after.compare_to(before, "lineno")
            total = sum(s.size_diff for s in stats)
            print(f"tracemalloc: +{total / held:.0f} bytes per connection; by line:")
            for stat in stats[: args.top]:
                frame = stat.traceback[0]
                print(f"  {stat.size_diff / held:8.0f} B {stat.count_diff / held:5.2f} blocks "
                      f" {frame.filename.split('/src/')[-1]}:{frame.lineno}")  # fmt: skip
            tracemalloc.stop()
        growth = _types() - types_before
        print("objects per connection (gc-tracked):")
        for name, count in growth.most_common(args.top):
            if count >= held // 2:
                print(f"  {count / held:5.2f} {name}")
        parent.send("close")
        server.close()

    try:
        loop.run_until_complete(run())
    finally:
        holder.join(5)
    return 0


def _pure() -> bool:
    import gantry.front.connection as module

    return (module.__file__ or "").endswith(".py")


if __name__ == "__main__":
    sys.exit(main())
