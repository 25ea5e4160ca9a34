"""The front's open-file limit (nginx's worker_rlimit_nofile): a soft limit below what
worker_connections needs is raised at start within the hard limit, and at the limit a
worker refuses new connections cleanly (closed at once) while the open ones are served."""

from __future__ import annotations

import resource
import socket
import sys
from pathlib import Path

import pytest

from tests.process import Launcher, free_port, gantry_env, wait_for
from tests.support_front import CEILING_BODY, answered_once, hold_connections

BODY = CEILING_BODY


def _start(launch: Launcher, tmp: Path, settings: str, soft: int) -> tuple[int, Path]:
    """A one-worker front started with a soft open-file limit of ``soft`` (the hard one as
    the test's): its port and its log."""
    root = tmp / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(BODY)
    port = free_port()
    config = tmp / "front.toml"
    config.write_text(
        f'[front]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\n{settings}'
        f'[[front.server]]\n[[front.server.location]]\npath = "/"\nroot = "{root}"\n'
    )
    # the limit set in this interpreter, which then becomes the front (exec keeps it)
    lowered = (
        "import os, resource, sys\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, hard))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'gantry', 'front', '-c', sys.argv[1]])\n"
    )
    launch.program(
        [sys.executable, "-c", lowered, str(config)], ("127.0.0.1", port), "front",
        env=gantry_env(),
    )  # fmt: skip
    return port, launch.workdir / "front.log"


def _needs_hard_limit(files: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < files:
        pytest.skip(f"the hard limit on open files is {hard}, below the {files} this needs")


def test_a_low_soft_limit_is_raised_for_worker_connections(
    launch: Launcher, short_tmp: Path
) -> None:
    # started with a soft limit of 64 (systemd's and shells' 1024, scaled down), a worker
    # held about 50 connections and refused the rest without a word
    _needs_hard_limit(500)
    port, _ = _start(launch, short_tmp, "worker_connections = 200\n", soft=64)
    held, refused = hold_connections(port, 150)
    try:
        assert (len(held), refused) == (150, 0)
        assert all(answered_once(sock) for sock in held[::10])
    finally:
        for sock in held:
            sock.close()


def test_at_the_file_limit_new_connections_are_refused_and_open_ones_served(
    launch: Launcher, short_tmp: Path
) -> None:
    _needs_hard_limit(200)
    settings = "worker_connections = 1000\nworker_rlimit_nofile = 80\n"
    port, log = _start(launch, short_tmp, settings, soft=200)
    assert wait_for(
        lambda: "worker_connections 1000: the open-file limit is 80" in log.read_text(), 5
    )
    held, refused = hold_connections(port, 100)
    try:
        # the worker's own files (listener, loop, logs) take some of the 80
        assert 30 <= len(held) < 80
        assert refused == 100 - len(held)
        # a new one is closed at once, not left waiting in the listen queue
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert not answered_once(extra)
        assert all(answered_once(sock) for sock in held)
        for sock in held[:5]:
            sock.close()
        del held[:5]

        def fresh_answered() -> bool:  # once the worker has seen the closes
            with socket.create_connection(("127.0.0.1", port), timeout=5) as fresh:
                return answered_once(fresh)

        assert wait_for(fresh_answered, 5)
    finally:
        for sock in held:
            sock.close()
