"""Request bodies streamed by gantry front (``request_buffering = false``) to real peers:
uWSGI over the uwsgi protocol and gunicorn over HTTP; the app hashes what it reads."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import REPO, Front, free_port, wait_until_listening

SIZE = 5 * 1024 * 1024
PIECE = 64 * 1024


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_until(ready: Path | tuple[str, int], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (20 s at most) until ``ready`` accepts connections."""
    read = lambda: log.read_text(errors="replace")  # noqa: E731
    wait_until_listening(ready, proc, limit=20, what="backend", log=read)


@pytest.fixture(scope="module")
def front(module_short_tmp: Path) -> Iterator[Front]:
    """uWSGI (uwsgi, unix socket) behind u.test, gunicorn (HTTP) behind g.test, both
    locations with request_buffering = false."""
    bin_dir = Path(sys.executable).parent
    uwsgi = bin_dir / "uwsgi"
    gunicorn = shutil.which("gunicorn", path=str(bin_dir))
    if not uwsgi.exists() or gunicorn is None:
        pytest.fail("uWSGI and gunicorn must be installed in the test environment")
    workdir = module_short_tmp
    sock = workdir / "u.sock"
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    front = Front(
        f"""
[front]
listen = ["127.0.0.1:FRONT_PORT"]
[[front.server]]
server_name = ["u.test"]
[[front.server.location]]
path = "/"
proxy = "uwsgi_app"
request_buffering = false
[[front.server]]
server_name = ["g.test"]
[[front.server.location]]
path = "/"
proxy = "gunicorn_app"
request_buffering = false
[front.upstream.uwsgi_app]
protocol = "uwsgi"
servers = [{{ address = "unix:{sock}" }}]
[front.upstream.gunicorn_app]
servers = [{{ address = "127.0.0.1:{port}" }}]
""",
        workdir,
    )
    try:
        procs.append(
            subprocess.Popen(
                [str(uwsgi), "--socket", str(sock), "--wsgi", "tests.apps_upstream:app",
                 "--chdir", str(REPO), "--master", "--processes", "1", "--die-on-term",
                 "--disable-logging", "--need-app"],
                cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=(workdir / "uwsgi.log").open("wb"),
            )
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [gunicorn, "-w", "1", "-b", f"127.0.0.1:{port}", "tests.apps_upstream:app"],
                cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=(workdir / "gunicorn.log").open("wb"),
            )
        )  # fmt: skip
        _wait_until(sock, procs[0], workdir / "uwsgi.log")
        _wait_until(("127.0.0.1", port), procs[1], workdir / "gunicorn.log")
        front.start()
        yield front
    finally:
        front.stop()
        for proc in procs:
            _stop(proc)


def _pieces(data: bytes) -> Iterator[bytes]:
    """``data`` in 64 KiB writes, with a pause after each MiB so the front sees the body
    arrive over several reads while earlier pieces are already on their way."""
    for offset in range(0, len(data), PIECE):
        yield data[offset : offset + PIECE]
        if (offset + PIECE) % (1024 * 1024) == 0:
            time.sleep(0.05)


@pytest.mark.parametrize("host", ["u.test", "g.test"], ids=["uwsgi", "gunicorn"])
def test_5_mib_body_sent_in_pieces_arrives_intact(front: Front, host: str) -> None:
    """5 MiB of random bytes sent in pieces: the app reads SIZE bytes whose SHA-256 is
    the one sent; the whole exchange takes under 15 s."""
    data = os.urandom(SIZE)
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=15)
    try:
        conn.request(
            "POST",
            "/sha256",
            body=_pieces(data),
            headers={"Host": host, "Content-Length": str(SIZE)},
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, (response.status, body, front.log.read_text()[-2000:])
    assert body.decode() == f"{SIZE}:{hashlib.sha256(data).hexdigest()}"
    assert time.monotonic() - started < 15
