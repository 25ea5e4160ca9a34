"""Workers never run as root unless asked: `user = "root"` (--user root) or
GANTRY_ALLOW_ROOT=1. Run as root (CI is); as another user there is nothing to refuse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process import REPO, Launcher, free_port, gantry_env, http_get

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for root")


def _env_without_the_ask() -> dict[str, str]:
    env = gantry_env()
    env.pop("GANTRY_ALLOW_ROOT", None)
    return env


def test_serve_as_root_is_refused_with_the_way_out() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "serve", "gantry.demo:app",
         "--http", f"127.0.0.1:{free_port()}"],
        cwd=REPO, env=_env_without_the_ask(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "serve.user: the workers would run as root" in result.stderr
    assert 'user = "root"' in result.stderr and "GANTRY_ALLOW_ROOT=1" in result.stderr


def test_up_as_root_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = f"""
[front]
listen = ["127.0.0.1:{free_port()}"]
user = "nobody"
[[app]]
name = "hello"
module = "gantry.demo:app"
"""
    path = tmp_path / "gantry.toml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "gantry", "up", "-c", str(path)],
        cwd=REPO, env=_env_without_the_ask(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "app[0].user: the workers would run as root" in result.stderr


def test_user_root_is_asking(launch: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANTRY_ALLOW_ROOT")
    server = launch.serve("gantry.demo:app", "--user", "root")
    assert http_get(server.port, "/hello")[0] == 200
