"""An app that cannot be imported (issue 19 #7): the traceback, the working
directory and sys.path are printed, and ``chdir`` is suggested when the app's own
module is not on the path (was one line: ``cannot import 'app': ModuleNotFoundError(...)``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.process import REPO, free_port

APP_TEXT = "import json\nimport gantry_test_missing_dependency\napp = None\n"


def _serve(app: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-m", "gantry", "serve", app, "--http", f"127.0.0.1:{free_port()}", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_missing_app_module_gets_path_and_chdir_hint(tmp_path: Path) -> None:
    """The module is in another directory: exit 3, the traceback, cwd, sys.path, the hint."""
    (tmp_path / "elsewhere").mkdir()
    result = _serve("gantry_test_absent_app:app", tmp_path / "elsewhere")
    assert result.returncode == 3, result.stderr
    err = result.stderr
    assert "Traceback (most recent call last):" in err
    assert "ModuleNotFoundError: No module named 'gantry_test_absent_app'" in err
    assert f"working directory: {tmp_path / 'elsewhere'}" in err
    assert "sys.path: [" in err and repr(str(tmp_path / "elsewhere")) in err
    assert "chdir" in err
    assert "<frozen importlib" not in err  # the import system's frames say nothing


def test_failing_import_inside_the_app_shows_where(tmp_path: Path) -> None:
    """The app's module imports a missing dependency: the traceback points at its line,
    and no chdir hint (the app was found; its dependency was not)."""
    (tmp_path / "broken_app_module.py").write_text(APP_TEXT)
    result = _serve("broken_app_module:app", tmp_path)
    assert result.returncode == 3, result.stderr
    err = result.stderr
    assert f'File "{tmp_path / "broken_app_module.py"}", line 2, in <module>' in err
    assert "No module named 'gantry_test_missing_dependency'" in err
    assert "hint:" not in err


def test_master_worker_logs_the_traceback(tmp_path: Path) -> None:
    """With --workers, the worker's error log carries the same report."""
    (tmp_path / "broken_app_module.py").write_text(APP_TEXT)
    result = _serve("broken_app_module:app", tmp_path, "--workers", "1")
    output = result.stdout + result.stderr
    assert "Traceback (most recent call last):" in output
    assert 'broken_app_module.py", line 2' in output
    assert f"working directory: {tmp_path}" in output
