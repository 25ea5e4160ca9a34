"""Helpers of the configuration tests: run the real ``gantry`` command on a real file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.process import REPO


def gantry(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gantry ARGS`` with this tree's sources first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "gantry", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_file(path: Path, text: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Write ``text`` to ``path`` and run ``gantry check -c`` on it."""
    path.write_text(text)
    return gantry("check", "-c", str(path), cwd=cwd)
