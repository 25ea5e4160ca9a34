"""Gantry's build: pyproject.toml holds the metadata; this adds the compiled hot modules.

Only a wheel built by tools/gantry_build.py (``pip install .``, ``python -m build``)
compiles them, with the same mypyc settings as ``make compile`` (tools/compile.py).
Without a C compiler, or if the build fails, the wheel is pure Python and the
build prints a warning (under CI=true it fails instead).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
#: written into a compiled wheel: its sources and extensions were built together, so
#: src/gantry/compiled.py does not compare their times (an install sets them at random)
MARKER = "gantry/compiled-wheel"


def _compile_tool() -> Any:
    spec = importlib.util.spec_from_file_location("gantry_compile_tool", ROOT / "tools/compile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _compile_tool()
IN_CI = os.environ.get("CI") == "true"


def _pure(reason: str) -> list[Any]:
    if IN_CI:
        raise SystemExit(f"CI=true: the wheel must be compiled, but {reason}")
    TOOL.warn_pure(reason)
    return []


def hot_modules() -> list[Any]:
    """The extensions to build: none unless the backend builds a wheel and can compile."""
    if os.environ.get("GANTRY_WHEEL_BUILD") != "1":
        return []
    reason = TOOL.why_not()
    if reason:
        return _pure(reason)
    try:
        return list(TOOL.extensions(os.path.join("build", "mypyc-wheel")))
    except (Exception, SystemExit) as exc:  # mypy's type errors end mypycify with SystemExit
        return _pure(f"mypyc failed ({exc})")


class BuildHotModules(build_ext):
    """build_ext, all or nothing: a module compiled alone beside pure ones would break the
    group, so a failed compile removes every extension and the wheel stays pure."""

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except (Exception, SystemExit) as exc:  # a failed compile is a SystemExit too
            for extension in self.extensions:
                built = Path(self.get_ext_fullpath(extension.name))
                built.unlink(missing_ok=True)
            _pure(f"the build failed ({exc})")
            return
        marker = Path(self.build_lib) / MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("built together with its sources by tools/gantry_build.py\n")


setup(ext_modules=hot_modules(), cmdclass={"build_ext": BuildHotModules})
