"""Fixtures that start real servers and always stop them (by PID) and remove their folders.

``launch`` gives a test a ``tests.process.Launcher``: ``launch.serve(...)``,
``launch.front(config)``, ``launch.up(config)``, ``launch.nginx(socket)``,
``launch.program(argv, ready, name)`` each return a started process, and all of
them are stopped when the test ends, passed or failed. ``module_launch`` does
the same for a module's shared fixtures. Their files live in a short temporary
folder (unix socket paths are limited) that is removed afterwards.

``make test`` runs the suite against the compiled modules, then again with
``GANTRY_PURE=1`` the tests marked ``pure_twice`` (``-m pure_twice``, see the
Makefile): those that run Gantry's compiled modules in the test process, where the
plain Python of a machine with no C compiler differs from the compiled build. Two
markers decide, both set here: ``servers`` on a test that starts processes (a
server, nginx, the ``gantry`` command), found by what it reaches, not by what its
module holds, so a module's in-process tests are not taken for its server tests;
``compiled`` on a test whose module reaches a compiled module (gantry.compiled).
``pure_twice`` is ``compiled`` and not ``servers``; a test touching no compiled
module (config, docs, CLI checks) would run the same code twice.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, ModuleType

import pytest

from gantry.compiled import MODULES as COMPILED_MODULES
from tests.process import Launcher, short_tempdir

# The suite runs as root on CI, and Gantry refuses to run workers as root unless asked:
# every server the tests start asks (tests/test_privileges_root.py checks the refusal).
os.environ["GANTRY_ALLOW_ROOT"] = "1"

#: a test that reaches one of these names starts processes
_PROCESS_NAMES = frozenset(
    {
        "GantryServer",
        "GantryUp",
        "Front",
        "Launcher",
        "Nginx",
        "subprocess",
        "wait_until_listening",
        "start_gantry",
        "Popen",
    }
)
_PROCESS_FIXTURES = frozenset({"launch", "module_launch"})
#: test modules are imported by their bare names (``test_x``, ``conftest``), helpers as
#: ``tests.support_x``: what is the suite's own is told by its file
_TESTS = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _ours(module_name: object) -> bool:
    """Whether the module named ``module_name`` is a file of the test suite."""
    module = sys.modules.get(module_name) if isinstance(module_name, str) else None
    return str(getattr(module, "__file__", "")).startswith(_TESTS)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers this file applies."""
    for line in (
        "servers: starts real processes (set by tests/conftest.py, not by hand)",
        "compiled: its module reaches a compiled module (set by tests/conftest.py)",
        "pure_twice: compiled and not servers, run again by make test's pure pass "
        "(set by tests/conftest.py)",
    ):
        config.addinivalue_line("markers", line)


def _code_names(code: CodeType) -> set[str]:
    """The global and attribute names a code object and the functions nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


def _reached_names(start: object, seen: set[int]) -> set[str]:
    """The names ``start`` (a function or class) uses, and those of the test helpers it
    reaches through them (functions and classes of the tests package, transitively)."""
    if id(start) in seen:
        return set()
    seen.add(id(start))
    if isinstance(start, type):
        found: set[str] = set()
        for member in vars(start).values():
            member = getattr(member, "__func__", member)
            if inspect.isfunction(member):
                found |= _reached_names(member, seen)
        return found
    function = inspect.unwrap(start)  # type: ignore[arg-type]
    code = getattr(function, "__code__", None)
    if code is None:
        return set()
    names = _code_names(code)
    found = set(names)
    # the module's own names, and those of a test helper module imported in the function
    spaces = [getattr(function, "__globals__", {})]
    for name in names:
        if name.startswith("tests.") and name not in sys.modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)  # imported by the test itself, when it runs
        if _ours(name):
            spaces.append(vars(sys.modules[name]))
    for name in names:
        for space in spaces:
            target = space.get(name)
            if (inspect.isfunction(target) or isinstance(target, type)) and _ours(
                getattr(target, "__module__", None)
            ):
                found |= _reached_names(target, seen)
    return found


def _starts_processes(item: pytest.Item) -> bool:
    """Whether a test starts processes: it asks for a launcher, or it, a fixture it uses
    or a test helper either reaches uses a process name."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & _PROCESS_FIXTURES:
        return True
    function = getattr(item, "function", None)
    if function is None:
        return True  # not a plain test function: assume the worst
    seen: set[int] = set()
    names = _reached_names(function, seen)
    info = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        for definition in definitions:
            if _ours(getattr(definition.func, "__module__", None)):
                names |= _reached_names(definition.func, seen)
    return bool(names & _PROCESS_NAMES)


def _gantry_modules(value: object) -> Iterator[str]:
    """The gantry or test helper modules a module's global names come from."""
    name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
    if isinstance(name, str) and (name.startswith("gantry") or _ours(name)):
        yield name


def _reaches_compiled(module: ModuleType, memo: dict[str, bool]) -> bool:
    """Whether ``module``, or a gantry or test helper module it imports (transitively),
    is compiled."""
    pending = [name for value in vars(module).values() for name in _gantry_modules(value)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in COMPILED_MODULES or memo.get(name):
            return True
        loaded = sys.modules.get(name)
        if loaded is not None:
            pending.extend(n for value in vars(loaded).values() for n in _gantry_modules(value))
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``servers`` every test that starts processes, ``compiled`` every test whose
    module reaches a compiled module, and ``pure_twice`` those compiled but not servers."""
    memo: dict[str, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        compiled = False
        if module is not None:
            if module.__name__ not in memo:
                memo[module.__name__] = _reaches_compiled(module, memo)
            compiled = memo[module.__name__]
        servers = _starts_processes(item)
        if servers:
            item.add_marker(pytest.mark.servers)
        if compiled:
            item.add_marker(pytest.mark.compiled)
            if not servers:
                item.add_marker(pytest.mark.pure_twice)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder for this test, removed after it."""
    with short_tempdir() as path:
        yield path


@pytest.fixture(scope="module")
def module_short_tmp() -> Iterator[Path]:
    """A short temporary folder shared by a module, removed after its last test."""
    with short_tempdir() as path:
        yield path


@pytest.fixture
def launch(short_tmp: Path) -> Iterator[Launcher]:
    """Processes started for this test, all stopped when it ends."""
    with Launcher(short_tmp) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def module_launch(module_short_tmp: Path) -> Iterator[Launcher]:
    """Processes shared by a module's tests, all stopped after the last one."""
    with Launcher(module_short_tmp) as launcher:
        yield launcher
