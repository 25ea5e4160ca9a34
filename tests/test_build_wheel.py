"""What ``pip install .`` gives a user: the hot modules compiled (as benchmarked), and it serves.

The repository is copied (without any in-place build), installed into a new venv
by pip with build isolation (pip fetches the build requirements from the index,
as a user's pip does), then the installed package is imported and run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process import REPO, Launcher, free_port, http_get

# building the wheel compiles the hot modules: minutes on a busy machine, past the default
# timeout
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# Imports every listed module and prints "<module> <file it came from>", one a line.
REPORT = (
    "import importlib\n"
    "from gantry.compiled import MODULES\n"
    "for name in MODULES:\n"
    "    print(name, importlib.import_module(name).__file__)\n"
)

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"installed"]
"""

# what a copy of the tree leaves out: builds, venvs, caches (a stale .so must not sneak in)
LEFT_OUT = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.so", "*.egg-info", "__pycache__", "*_cache", "results"
)


def _toolchain_missing() -> str | None:
    spec = importlib.util.spec_from_file_location("compile_tool", REPO / "tools" / "compile.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    reason: str | None = tool.toolchain_missing()
    return reason


def _clean_env() -> dict[str, str]:
    """The caller's environment without what would make the venv import this checkout."""
    dropped = {"PYTHONPATH", "GANTRY_PURE", "PYTHONHOME", "VIRTUAL_ENV"}
    return {key: value for key, value in os.environ.items() if key not in dropped}


def test_pip_install_gives_the_compiled_gantry_and_it_serves(
    tmp_path: Path, launch: Launcher
) -> None:
    reason = _toolchain_missing()
    if reason is not None:
        message = f"this machine cannot compile, so pip installs pure Python: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    source = tmp_path / "gantry"
    shutil.copytree(REPO, source, ignore=LEFT_OUT)
    venv = tmp_path / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    python = str(venv / "bin" / "python")
    # C at -O0: the same modules, sources and mypyc steps as the -O3 build (make compile
    # builds that one, in place, before the suite), in a fraction of the compiler's time
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(source)],
        capture_output=True, text=True, timeout=1200, env={**env, "GANTRY_COMPILE_OPT_LEVEL": "0"},
        cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-5000:]
    assert "not compiling" not in installed.stderr, installed.stderr[-5000:]

    report = subprocess.run(
        [python, "-c", REPORT], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    files = dict(line.split(" ", 1) for line in report.stdout.splitlines())
    assert files and all(path.endswith(".so") for path in files.values()), files
    assert all(str(venv) in path for path in files.values()), files
    assert "older than their source" not in report.stderr, report.stderr

    (tmp_path / "hello_app.py").write_text(APP)
    port = free_port()
    gantry = str(venv / "bin" / "gantry")
    launch.program(
        [gantry, "serve", "hello_app:app", "--chdir", str(tmp_path), "--http", f"127.0.0.1:{port}"],
        ("127.0.0.1", port), "installed-gantry", env=env,
    )  # fmt: skip
    assert http_get(port, "/") == (200, b"installed")
