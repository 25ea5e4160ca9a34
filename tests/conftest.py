"""Fixtures that start real servers and always stop them (by PID) and remove their folders.

``launch`` gives a test a ``tests.process.Launcher``: ``launch.serve(...)``,
``launch.front(config)``, ``launch.up(config)``, ``launch.nginx(socket)``,
``launch.program(argv, ready, name)`` each return a started process, and all of
them are stopped when the test ends, passed or failed. ``module_launch`` does
the same for a module's shared fixtures. Their files live in a short temporary
folder (unix socket paths are limited) that is removed afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Launcher, short_tempdir


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
