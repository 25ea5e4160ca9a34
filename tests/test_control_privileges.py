"""`gantry ctl purge --soft` on a front whose workers run as nobody: the rewritten entry is
theirs, so they can still read it (run as root; skipped otherwise)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from tests.process import Launcher, accepts, http_get, wait_for
from tests.support_cache import Origin, cache_config
from tests.support_control import ctl


def _source_readable_by_others() -> bool:
    # the front's workers import modules after they switch user (see
    # tests/test_process_privileges.py): every folder above the package must be passable
    package = Path(__file__).resolve().parents[1] / "src" / "gantry"
    return all(os.stat(folder).st_mode & 0o001 for folder in (package, *package.parents))


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users"),
    pytest.mark.skipif(
        not _source_readable_by_others(),
        reason="the checkout is in a folder nobody cannot pass through",
    ),
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
