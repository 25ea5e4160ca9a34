"""Gantry's build backend: setuptools' own, and a wheel gets the hot modules compiled.

``pip install .`` and ``python -m build`` build a wheel: on a machine with a C
compiler and Python's headers, this backend asks for mypy (which brings mypyc)
and Gantry's dependencies (mypyc type-checks against them), and setup.py
compiles the modules listed in src/gantry/compiled.py, as ``make compile`` does
in place. Without a compiler the wheel is pure Python, and the build says so.
An editable install (``pip install -e .``, what the Makefile runs) and an sdist
compile nothing: ``make compile`` builds in place and rebuilds on every edit.
``GANTRY_COMPILE=0`` builds a pure wheel on purpose.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (every hook this module does not change)

ROOT = Path(__file__).resolve().parents[1]
#: what setup.py reads to know that it builds a wheel, not an editable install or an sdist
WHEEL_BUILD = "GANTRY_WHEEL_BUILD"


def _compile_tool() -> Any:
    spec = importlib.util.spec_from_file_location("gantry_compile_tool", ROOT / "tools/compile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wants_compiling() -> bool:
    return os.environ.get("GANTRY_COMPILE", "1") != "0"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """setuptools' requirements, and mypy plus Gantry's dependencies when it will compile."""
    requires = list(_setuptools.get_requires_for_build_wheel(config_settings))
    if _wants_compiling() and _compile_tool().toolchain_missing() is None:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        requires += ["mypy>=1.10", *project["dependencies"]]
    return requires


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """A wheel with the hot modules compiled where this machine can (see the docstring)."""
    os.environ[WHEEL_BUILD] = "1" if _wants_compiling() else "0"
    try:
        return str(_setuptools.build_wheel(wheel_directory, config_settings, metadata_directory))
    finally:
        del os.environ[WHEEL_BUILD]
