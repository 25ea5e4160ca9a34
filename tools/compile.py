"""Compile Gantry's hot modules with mypyc, in place, or say why not and leave them pure.

Usage: python tools/compile.py [--clean | --sources]

--sources prints the source files compiled (the Makefile's prerequisites).
setup.py uses ``why_not``, ``extensions`` and ``warn_pure`` from here, so that
``pip install .`` and a wheel get the same build (see tools/gantry_build.py).

The extension files land next to their sources in src/gantry (git-ignored) and the
shared runtime as src/gantry__mypyc*.so; the C sources and objects in build/mypyc.
Without a C compiler or Python's headers, or if the build fails, this prints a
warning, removes any old build and exits 0 (1 under CI=true): Gantry then runs
the same modules as plain Python.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
import sysconfig
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
BUILD = os.path.join(ROOT, "build", "mypyc")
# gantry/compiled.py alone: importing the gantry package would run its stale-build guard
_spec = importlib.util.spec_from_file_location("_gantry_compiled", f"{SRC}/gantry/compiled.py")
assert _spec and _spec.loader
_listed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_listed)
MODULES: tuple[str, ...] = _listed.MODULES
HELPERS: tuple[str, ...] = _listed.HELPERS
built_path = _listed.built_path
source_path = _listed.source_path

GROUP = "gantry"


def clean() -> None:
    for module in (*MODULES, *HELPERS):
        path = built_path(module)
        if path:
            os.remove(path)
    for path in glob.glob(os.path.join(SRC, f"{GROUP}__mypyc*")):
        os.remove(path)
    shutil.rmtree(BUILD, ignore_errors=True)


def toolchain_missing() -> str | None:
    """What this machine lacks to build C extensions (a compiler, Python's headers), or None."""
    # the compiler setuptools will call: $CC, else the one Python was built with
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} is not on PATH)"
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(header):
        return f"no Python headers ({header} is missing; Debian: apt-get install python3-dev)"
    return None


def why_not() -> str | None:
    """Why this machine cannot compile, or None."""
    missing = toolchain_missing()
    if missing:
        return missing
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy)"
    return None


#: the C compiler's optimisation level (-O3 unless set): what is built and benchmarked is
#: -O3; tests/test_build_wheel.py, which checks how a wheel is built and not how fast it
#: runs, builds at -O0 (a fraction of the compile time)
OPT_LEVEL = "GANTRY_COMPILE_OPT_LEVEL"


def extensions(target_dir: str) -> list[Any]:
    """The mypyc extensions of the hot modules (C sources in ``target_dir``) and the C
    helpers, run from ROOT.

    mypyc type-checks the modules against the installed dependencies first; its
    errors end the build (SystemExit), its known harmless warnings are not shown.
    """
    from mypyc.build import mypycify

    paths = [os.path.relpath(source_path(module), ROOT) for module in MODULES]
    # Modules that are imported but not compiled (process/shared.py...) are type-checked by
    # `make test`'s mypy line, not here: their errors must not decide whether a wheel is
    # compiled (an editable install hid them from the in-place build; a wheel build saw them).
    options = ["--follow-imports=silent"]
    level = os.environ.get(OPT_LEVEL, "3")
    if level not in ("0", "1", "2", "3"):
        raise SystemExit(f"{OPT_LEVEL}={level!r}: expected 0, 1, 2 or 3")
    built = mypycify([*options, *paths], opt_level=level, group_name=GROUP, target_dir=target_dir)
    from setuptools import Extension  # type: ignore[import-untyped]

    # the hand-written C helpers, at the same optimisation level
    helpers = [
        Extension(
            module, [os.path.relpath(source_path(module), ROOT)], extra_compile_args=[f"-O{level}"]
        )
        for module in HELPERS
    ]
    return [*built, *helpers]


def build() -> None:
    from setuptools import setup  # type: ignore[import-untyped]

    os.chdir(ROOT)
    setup(
        name="gantry-compiled",
        package_dir={"": "src"},
        ext_modules=extensions(BUILD),
        script_args=["-q", "build_ext", "--inplace", "--build-temp", BUILD],
    )


def warn_pure(reason: str) -> None:
    """Say loudly that Gantry's hot modules stay plain Python, and why."""
    print(
        f"WARNING: not compiling Gantry's hot modules: {reason}. "
        "Gantry runs them as plain Python, slower.",
        file=sys.stderr,
    )


def give_up(reason: str) -> int:
    """Pure Python it is: say so loudly; under CI=true that fails the build."""
    clean()
    warn_pure(reason)
    return 1 if os.environ.get("CI") == "true" else 0


def main() -> int:
    if "--sources" in sys.argv[1:]:
        sources = (source_path(module) for module in (*MODULES, *HELPERS))
        print(" ".join(os.path.relpath(path, ROOT) for path in sources))
        return 0
    clean()
    if "--clean" in sys.argv[1:]:
        return 0
    reason = why_not()
    if reason:
        return give_up(reason)
    try:
        build()
    except (Exception, SystemExit) as exc:  # setuptools reports a failed compile as SystemExit
        return give_up(f"the build failed ({exc})")
    missing = [module for module in (*MODULES, *HELPERS) if built_path(module) is None]
    if missing:
        return give_up(f"the build did not produce {', '.join(missing)}")
    print(f"compiled {len(MODULES)} modules with mypyc and {len(HELPERS)} C helpers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
