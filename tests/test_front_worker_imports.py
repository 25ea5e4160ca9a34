"""A front worker imports nothing after it switches to its user: every module it may
run comes with gantry.front.worker (its imports are module-level), which the master
imports as root. A worker running as nobody cannot read Python's own library when it
lives in a private folder (a pyenv under /root), so a lazy import there broke the cache
sweep, compression or limits at their first use."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import brotli
import pytest
import redis
import zstandard

from tests.process import (
    REPO,
    Launcher,
    gantry_env,
    http_get,
    needs_readable_source,
    require_program,
    wait_for,
)
from tests.support_cache import Origin
from tests.support_front import autoban_rule, limit_req_zone, limited_site, shared_redis

#: what a worker may need later: the cache and its sweep on the loop's thread executor,
#: limits and bans, the shared Redis, health checks, and the optional codings
LATER = [
    "concurrent.futures.thread",
    "gantry.front.cache.handler",
    "gantry.front.compress",
    "gantry.front.health",
    "gantry.front.limits.autoban",
    "gantry.front.limits.handler",
    "brotli",
    "zstandard",
]
#: left out of it: Redis's client costs a process 12 MB; front.run imports it as root
#: when [front.shared] asks for it
NOT_WITHOUT_SHARED = ["gantry.front.limits.shared_redis", "redis"]


def test_importing_the_worker_imports_what_it_runs() -> None:
    script = (
        "import sys, gantry.front.run\n"
        f"print(' '.join(m for m in {LATER!r} if m not in sys.modules))\n"
        f"print(' '.join(m for m in {NOT_WITHOUT_SHARED!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=gantry_env(), capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    missing, costly = done.stdout.split("\n")[:2]
    assert missing == "", f"imported only when first used: {missing}"
    assert costly == "", f"imported by every front: {costly}"


def _library_private() -> bool:
    """Python's library is out of nobody's reach (what makes a late import fail)."""
    library = Path(os.__file__).resolve().parent
    return not all(os.stat(f).st_mode & 0o001 for f in (library, *library.parents))


def _unzstd(data: bytes) -> bytes:
    # a streamed frame does not say its size up front: decompressobj reads it anyway
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


CONFIG = """[front]
listen = ["127.0.0.1:FRONT_PORT"]
workers = 2
user = "nobody"

[front.limit_req_zone.perip]
key = "$binary_remote_addr"
rate = "1000r/s"

[front.upstream.app]
servers = [{{ address = "127.0.0.1:{origin}" }}]
[front.upstream.app.health_check]
path = "/page"
interval = "1s"

[front.cache.pages]
path = "{cache}"

[[front.server]]
gzip = true
gzip_types = ["text/plain"]
[[front.server.location]]
path = "/"
proxy = "app"
cache = "pages"
limit_req = [{{ zone = "perip", burst = 100, nodelay = true }}]
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
@needs_readable_source
def test_workers_as_nobody_compress_cache_and_limit(launch: Launcher, short_tmp: Path) -> None:
    if not _library_private():
        pytest.skip("Python's library is readable by nobody: a late import would not fail")
    nobody = pwd.getpwnam("nobody")
    short_tmp.chmod(0o755)
    (short_tmp / "c").mkdir()
    os.chown(short_tmp / "c", nobody.pw_uid, nobody.pw_gid)
    body = b"a line of text that compresses well\n" * 200
    with Origin() as origin:
        origin.answers["/page"] = (
            200, [("Cache-Control", "max-age=600"), ("Content-Type", "text/plain")], body
        )  # fmt: skip
        front = launch.front(CONFIG.format(origin=origin.port, cache=short_tmp / "c"))
        decode = {"br": brotli.decompress, "zstd": _unzstd}
        for coding, decompress in decode.items():
            status, data = http_get(front.port, "/page", headers={"Accept-Encoding": coding})
            assert status == 200, front.log.read_text()
            assert decompress(data) == body, coding
        # the entry was stored by a worker running as nobody (a small one goes to the
        # worker's pack, a large one to a file of its own), and nothing failed
        zone = short_tmp / "c"
        assert wait_for(
            lambda: (
                any(p.stat().st_size for p in zone.glob("packs/*.pack")) or any(zone.glob("??/*"))
            ),
            10,
        ), sorted(str(p.relative_to(zone)) for p in zone.rglob("*"))
    log = front.log.read_text()
    assert "Traceback" not in log and "Error" not in log, log


def _shared(sock: Path, root: Path) -> str:
    """Two workers as nobody serving ``root`` under a limit and autoban kept in the Redis
    at ``sock``."""
    return limited_site(
        root,
        '{ zone = "perip", burst = 100, nodelay = true }',
        zones=limit_req_zone(rate="1000r/s"),
        workers=2,
        front='user = "nobody"',
        tables=shared_redis(sock) + autoban_rule("404", 100),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
@needs_readable_source
def test_workers_as_nobody_limit_through_redis(launch: Launcher, short_tmp: Path) -> None:
    if not _library_private():
        pytest.skip("Python's library is readable by nobody: a late import would not fail")
    short_tmp.chmod(0o755)
    (short_tmp / "root").mkdir(mode=0o755)
    (short_tmp / "root" / "a").write_text("a")
    (short_tmp / "root" / "a").chmod(0o644)
    sock = short_tmp / "redis.sock"
    argv = [require_program("redis-server", "redis-server"), "--port", "0",
            "--unixsocket", str(sock), "--unixsocketperm", "777", "--save", "",
            "--appendonly", "no", "--dir", str(short_tmp)]  # fmt: skip
    launch.program(argv, sock, "redis")
    front = launch.front(_shared(sock, short_tmp / "root"))
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        for _ in range(3):
            assert http_get(front.port, "/a") == (200, b"a"), front.log.read_text()
        # the workers counted through Redis: they imported its client and reached it
        assert wait_for(lambda: bool(client.keys("gantry:limit:*")), 10), front.log.read_text()
    finally:
        client.close()
    log = front.log.read_text()
    assert "Traceback" not in log and "Error" not in log, log
