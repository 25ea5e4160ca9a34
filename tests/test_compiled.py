"""The mypyc build of the hot modules: used when present and fresh, never when stale,
never with GANTRY_PURE=1. Each case imports Gantry in a fresh interpreter."""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from gantry.compiled import MODULES, built_path

REPO = Path(__file__).resolve().parents[1]

# Imports every listed module and prints, one per line, "<module> <file it came from>".
REPORT = (
    "import importlib, sys\n"
    "from gantry.compiled import MODULES\n"
    "for name in MODULES:\n"
    "    print(name, importlib.import_module(name).__file__)\n"
)


def compile_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compile_tool", REPO / "tools" / "compile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loaded_from(pythonpath: Path | None = None, **env: str) -> tuple[dict[str, str], str]:
    """Where each listed module came from in a new interpreter, and its stderr."""
    environ = {k: v for k, v in os.environ.items() if k != "GANTRY_PURE"}
    environ.update(env)
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", REPORT],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pythonpath or REPO,
    )
    assert done.returncode == 0, done.stderr
    files = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert set(files) == set(MODULES)
    return files, done.stderr


def require_build() -> None:
    reason = compile_tool().why_not()
    if reason is not None:
        message = f"this machine cannot compile the hot modules: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if any(built_path(module) is None for module in MODULES):
        pytest.fail("no build of the hot modules: run `make compile` (make test does)")


def test_a_fresh_build_is_what_gantry_runs() -> None:
    require_build()
    files, stderr = loaded_from()
    assert all(path.endswith(".so") for path in files.values()), files
    assert "older than their source" not in stderr


def test_gantry_pure_runs_every_module_from_source() -> None:
    files, _ = loaded_from(GANTRY_PURE="1")
    assert all(path.endswith(".py") for path in files.values()), files


def test_the_c_helpers_run_with_the_build_and_never_without_them() -> None:
    """front/limits/_bucket.c (a limit_req's check) and front/cache/_index.c (a cache
    zone's tables) are built and kept out with the compiled modules: their callers then
    do the same work in Python."""
    require_build()
    script = (
        "from gantry.front.limits.table import SharedTable\n"
        "from gantry.front.cache.packs import INDEX_HELPER\n"
        "print(SharedTable(4).bucket_check(1000) is not None, INDEX_HELPER is not None)\n"
    )
    for env, used in (({}, "True True"), ({"GANTRY_PURE": "1"}, "False False")):
        environ = {k: v for k, v in os.environ.items() if k != "GANTRY_PURE"}
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == used, (env, done.stdout, done.stderr)


def test_a_stale_build_is_set_aside_for_all_the_modules(tmp_path: Path) -> None:
    """One edited source makes all of them load from source (compiled modules call each
    other's compiled code directly), with a warning naming the edited one."""
    require_build()
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "gantry", src / "gantry")
    for runtime in glob.glob(str(REPO / "src" / "gantry__mypyc*")):
        shutil.copy(runtime, src)

    files, stderr = loaded_from(src)  # the copy, as it is, runs compiled
    assert all(path.endswith(".so") and path.startswith(str(src)) for path in files.values())

    edited = src / "gantry" / "front" / "proxy.py"
    later = time.time() + 60
    os.utime(edited, (later, later))
    files, stderr = loaded_from(src)
    assert all(path.endswith(".py") and path.startswith(str(src)) for path in files.values())
    assert "older than their source (gantry.front.proxy)" in stderr


def test_without_a_compiler_the_build_steps_aside(tmp_path: Path) -> None:
    """tools/compile.py on a machine with no C compiler (in a copy of the tree): any old
    build goes, the warning says why, and the exit code is 0 (1 under CI=true)."""
    tree = tmp_path / "tree"
    (tree / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "compile.py", tree / "tools")
    shutil.copytree(
        REPO / "src" / "gantry",
        tree / "src" / "gantry",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    old_builds = [
        tree / "src" / "gantry" / "front" / f"proxy{suffix}",
        tree / "src" / f"gantry__mypyc{suffix}",
    ]
    for ci, exit_code in (("false", 0), ("true", 1)):
        for path in old_builds:
            path.write_bytes(b"an old build")
        done = subprocess.run(
            [sys.executable, str(tree / "tools" / "compile.py")],
            env=dict(os.environ, CC=str(tmp_path / "no-such-cc"), CI=ci),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == exit_code, done.stderr
        assert "WARNING: not compiling" in done.stderr
        assert "no-such-cc" in done.stderr
        assert not any(path.exists() for path in old_builds)
