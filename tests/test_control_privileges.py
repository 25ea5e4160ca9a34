"""`gantry ctl purge --soft` on a front whose workers run as nobody: the rewritten entry is
theirs, so they can still read it (run as root; skipped otherwise)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from tests.process import Launcher, accepts, http_get, needs_readable_source, wait_for
from tests.support_cache import Origin, cache_config
from tests.support_control import ctl

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users"),
    needs_readable_source,
]


def test_a_soft_purge_writes_entries_the_workers_can_read(
    launch: Launcher, short_tmp: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    short_tmp.chmod(0o755)
    (short_tmp / "c").mkdir()
    os.chown(short_tmp / "c", nobody.pw_uid, nobody.pw_gid)  # the zone is the workers'
    sock = short_tmp / "front.ctl"
    origin = Origin()
    with origin:
        origin.answers["/soft"] = (200, [("Cache-Control", "max-age=600")], b"kept")
        config = cache_config(origin.port, str(short_tmp / "c"), 'use_stale = ["error"]\n')
        config = config.replace("[front]\n", f'[front]\nuser = "nobody"\ncontrol = "{sock}"\n', 1)
        front = launch.front(config)
        assert wait_for(lambda: accepts(sock))
        http_get(front.port, "/soft")
        done = ctl("-s", str(sock), "purge", "--soft", f"http://127.0.0.1:{front.port}/soft")
        assert (done.returncode, done.stdout) == (0, "marked stale 1 entry (pages 1)\n"), done
    owners = {p.stat().st_uid for p in (short_tmp / "c").glob("??/*")}
    assert owners == {nobody.pw_uid}
    # the origin is down: the worker reads the rewritten entry and serves it stale
    assert http_get(front.port, "/soft") == (200, b"kept")
