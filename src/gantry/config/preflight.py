"""What ``gantry check`` verifies beyond the schema: that each app imports as start-up
imports it, that static directories exist, and that blocklist files can be read.

The import runs in a child process (the app's module runs its top-level code; that must
not happen in the checking process, and a crash there must not end the check), with the
app's chdir as working directory and on ``sys.path``, as a worker does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gantry
from gantry.config.front import FrontSettings

__all__ = ["AppImport", "blocklist_warnings", "import_app", "static_warnings"]

#: seconds an app's import may take before check gives up on it
IMPORT_TIMEOUT = 60.0

# The worker's own loader, so check and start-up agree on what "importable" means.
_IMPORT = """\
import sys, traceback
from gantry.appserver.worker import AppLoadError, load_app
try:
    load_app(sys.argv[1])
except AppLoadError as exc:
    if exc.__cause__ is not None:
        traceback.print_exception(exc.__cause__, file=sys.stderr)
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


@dataclass(frozen=True)
class AppImport:
    """How importing one app went: ``ok``, or what the child printed (traceback, reason)."""

    ok: bool
    output: str


def import_app(spec: str, chdir: str | None) -> AppImport:
    """Import ``spec`` (MODULE:CALLABLE) in a child process started in ``chdir``."""
    if chdir and not os.path.isdir(chdir):
        return AppImport(False, f"chdir {chdir!r} is not a directory")
    source_root = str(Path(gantry.__file__).resolve().parent.parent)
    env = dict(os.environ)
    # gantry itself must import from where this process found it, whatever the chdir
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _IMPORT, spec],
            cwd=chdir or None,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return AppImport(False, f"importing {spec!r} took more than {IMPORT_TIMEOUT:g} s")
    except OSError as exc:
        return AppImport(False, f"cannot start a Python to import {spec!r}: {exc.strerror}")
    if done.returncode == 0:
        return AppImport(True, "")
    output = done.stderr.strip() or f"the import exited with status {done.returncode}"
    return AppImport(False, output)


def static_warnings(front: FrontSettings, source: str) -> list[str]:
    """One line per location whose ``root`` or ``alias`` is not a directory (now)."""
    warnings = []
    for i, server in enumerate(front.server):
        for j, location in enumerate(server.location):
            for key in ("root", "alias"):
                directory = getattr(location, key)
                if directory is not None and not os.path.isdir(directory):
                    warnings.append(
                        f"{source}: front.server[{i}].location[{j}].{key}: no directory "
                        f"{directory!r} (every request there will be 404)"
                    )
    return warnings


def blocklist_warnings(front: FrontSettings, source: str) -> list[str]:
    """One line per blocklist file that cannot be read now (it counts as empty until it
    can: a list that blocks nothing deserves a word)."""
    warnings = []
    for i, path in enumerate(front.blocklist.files):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            warnings.append(
                f"{source}: front.blocklist.files[{i}]: cannot read {path!r} "
                f"({exc.strerror}): it blocks nothing until it can be read"
            )
    return warnings
