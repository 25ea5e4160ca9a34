"""A cache zone whose folder cannot be made is a config error at start, naming the key
(it was workers dying at start-up, one after another, and the front never answering)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.process import gantry_env
from tests.support_cache import cache_config


def test_a_cache_folder_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    config = tmp_path / "front.toml"
    # nothing listens on port 9: the front stops before it would ask
    config.write_text(cache_config(9, f"{blocker}/pages", workers=2).replace("FRONT_PORT", "0"))
    done = subprocess.run(
        [sys.executable, "-m", "gantry", "front", "-c", str(config)],
        capture_output=True, text=True, timeout=30, env=gantry_env(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "front.cache.pages.path" in done.stderr and "cannot make" in done.stderr
