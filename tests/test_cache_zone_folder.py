"""A cache zone whose folder cannot be made is a config error at start, naming the key
(it was workers dying at start-up, one after another, and the front never answering)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.process import gantry_env


def test_a_cache_folder_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    config = tmp_path / "front.toml"
    config.write_text(f"""
[front]
listen = ["127.0.0.1:0"]
workers = 2
[front.upstream.app]
servers = [{{ address = "127.0.0.1:9" }}]
[front.cache.pages]
path = "{blocker}/pages"
[[front.server]]
[[front.server.location]]
path = "/"
proxy = "app"
cache = "pages"
""")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "gantry", "front", "-c", str(config)],
        capture_output=True, text=True, timeout=30, env=gantry_env(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "front.cache.pages.path" in done.stderr and "cannot make" in done.stderr
