"""The server side of one TLS connection through front.tls_accept, counted in
instructions: a change of a few microseconds a connection is lost in the noise of wrk
on a shared machine (bench/front.py's https_handshakes moved 384 -> 437 us a handshake
between two runs of the same build), an instruction count is not.

Each connection: a real client SSLObject (memory BIOs) sends its ClientHello; the
listener's TLSStream, over a minimal stand-in for the loop's TCP transport, answers it,
takes the client's Finished with a request, answers 1 KiB and closes (close_notify).
Only the server's calls are counted (valgrind's callgrind, collecting inside the
TLSStream methods alone), the client's work and the interpreter's start are not.

Run: `python bench/tls_connection_cost.py [--connections 100] [--src DIR]` (needs
valgrind and openssl); without valgrind, `--wall` times the same in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from front import make_certificate  # noqa: E402

REPO_SRC = Path(__file__).resolve().parent.parent / "src"
#: the functions callgrind counts inside (mypyc's names of the compiled TLSStream's
#: entry points, and its dealloc, which frees the SSLObject and the BIOs)
COLLECT = (
    "CPyPy_tls_accept___TLSListener___stream",
    "CPyPy_tls_accept___TLSStream___connection_made",
    "CPyPy_tls_accept___TLSStream___data_received",
    "CPyPy_tls_accept___TLSStream___connection_lost",
    "tls_accept___TLSStream_dealloc",
)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + bytes(range(256)) * 4


class _Raw:
    """What TLSStream asks of the loop's TCP transport, writes kept for the client."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class _Answer(asyncio.Protocol):
    """1 KiB to the first request, then the close (Connection: close)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE)
        self.transport.close()


def drive(work: Path, connections: int) -> float:
    """``connections`` connections through one TLSListener: server seconds each."""
    import uvloop

    from gantry.front.tls_accept import TLSListener

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(work / "bench.crt", work / "bench.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    loop = uvloop.new_event_loop()
    listener = TLSListener(loop, None, server, _Answer, 60.0)  # type: ignore[arg-type]
    spent = 0
    for _ in range(connections):
        c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client.wrap_bio(c_in, c_out)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = c_out.read()
        raw = _Raw()
        started = time.perf_counter_ns()
        stream = listener.stream()
        stream.connection_made(raw)  # type: ignore[arg-type]
        stream.data_received(hello)
        spent += time.perf_counter_ns() - started
        c_in.write(b"".join(raw.out))
        raw.out.clear()
        tls.do_handshake()
        tls.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        finished = c_out.read()
        started = time.perf_counter_ns()
        stream.data_received(finished)
        stream.connection_lost(None)
        del stream
        spent += time.perf_counter_ns() - started
        c_in.write(b"".join(raw.out))
        assert tls.read(4096).startswith(b"HTTP/1.1 200") and raw.closed
    loop.close()
    return spent / 1e9 / max(connections, 1)


def count(work: Path, src: Path, connections: int) -> int:
    """Instructions the server's calls took for ``connections`` connections."""
    out = work / f"callgrind.{connections}"
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        *(f"--toggle-collect={name}" for name in COLLECT),
        f"--callgrind-out-file={out}",
        sys.executable, __file__, "--inner", str(connections), "--work", str(work),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind failed: {done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    """Print the server's instructions (or microseconds) a TLS connection."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--src", type=Path, default=REPO_SRC, help="the tree's src to measure")
    parser.add_argument("--wall", action="store_true", help="time it instead (noisy)")
    parser.add_argument("--inner", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        drive(args.work, args.inner)
        return 0
    with tempfile.TemporaryDirectory(prefix="tlscost-") as tmp:
        work = Path(tmp)
        make_certificate(work)
        if args.wall:
            sys.path.insert(0, str(args.src))
            drive(work, 20)  # warm
            print(f"server: {drive(work, args.connections) * 1e6:.1f} us a connection")
            return 0
        if shutil.which("valgrind") is None:
            print("valgrind is not installed: use --wall", file=sys.stderr)
            return 1
        # callgrind counts inside the compiled TLSStream's functions: pure Python has none
        probe = "import gantry.front.tls_accept as m; print(m.__file__)"
        env = dict(os.environ, PYTHONPATH=str(args.src))
        where = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
        ).stdout.strip()
        if not where.endswith(".so"):
            print(f"front.tls_accept is not compiled ({where}): tools/compile.py", file=sys.stderr)
            return 1
        # two counts, so that what is counted once (the first call's imports) drops out
        one = count(work, args.src, 1)
        many = count(work, args.src, args.connections + 1)
        per = (many - one) / args.connections
        print(f"server: {per:,.0f} instructions a TLS connection ({args.src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
