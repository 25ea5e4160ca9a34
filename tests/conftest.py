"""Fixtures that start real servers and always stop them (by PID) and remove their folders.

``launch`` gives a test a ``tests.process.Launcher``: ``launch.serve(...)``,
``launch.front(config)``, ``launch.up(config)``, ``launch.nginx(socket)``,
``launch.program(argv, ready, name)`` each return a started process, and all of
them are stopped when the test ends, passed or failed. ``module_launch`` does
the same for a module's shared fixtures. Their files live in a short temporary
folder (unix socket paths are limited) that is removed afterwards.

Every test that starts processes (a server, nginx, the ``gantry`` command) is
marked ``servers``: ``make test`` runs those once, against the compiled
modules, and the rest a second time with ``GANTRY_PURE=1`` (see the Makefile).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Launcher, short_tempdir

# The suite runs as root on CI, and Gantry refuses to run workers as root unless asked:
# every server the tests start asks (tests/test_privileges_root.py checks the refusal).
os.environ["GANTRY_ALLOW_ROOT"] = "1"

#: a test module holding one of these names starts processes
_PROCESS_NAMES = frozenset(
    {"GantryServer", "GantryUp", "Front", "Launcher", "Nginx", "subprocess", "wait_until_listening"}
)
_PROCESS_FIXTURES = frozenset({"launch", "module_launch"})


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker this file applies."""
    config.addinivalue_line(
        "markers", "servers: starts real processes (set by tests/conftest.py, not by hand)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``servers`` every test that starts processes (its module imports a process
    helper or subprocess, or it asks for a launcher)."""
    for item in items:
        module = getattr(item, "module", None)
        names = set(vars(module)) if module is not None else set()
        fixtures = set(getattr(item, "fixturenames", ()))
        if names & _PROCESS_NAMES or fixtures & _PROCESS_FIXTURES:
            item.add_marker(pytest.mark.servers)


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
