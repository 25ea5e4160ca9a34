"""The suite stands alone: its data ships in tests/data, intact."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def _listed() -> dict[str, str]:
    sums = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    return sums


def test_every_data_file_matches_its_recorded_digest() -> None:
    """A case edited or corrupted by a checkout (line endings, a merge) is caught here."""
    listed = _listed()
    present = {
        str(path.relative_to(DATA)) for path in (DATA / "conformance").rglob("*") if path.is_file()
    }
    assert present == set(listed), "tests/data changed: refresh SHA256SUMS (see its README)"
    wrong = [
        name
        for name, digest in listed.items()
        if hashlib.sha256((DATA / name).read_bytes()).hexdigest() != digest
    ]
    assert wrong == []


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in helper modules (tests/process.py, tests/support_*.py):
    importing a test module runs its fixtures' module code twice and couples the files."""
    tests = Path(__file__).resolve().parent
    offenders = {}
    for path in sorted(tests.rglob("test_*.py")):
        bad = sorted(
            name
            for name in _imported_modules(path)
            if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")
        )
        if bad:
            offenders[str(path.relative_to(tests))] = bad
    assert offenders == {}


def test_the_pure_pass_selects_in_process_tests_only() -> None:
    """`make test`'s second pass (-m "not servers") must leave out every test that starts
    a server and keep the ones that run Gantry's modules in the test process."""
    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "-m", "not servers", "tests"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    files = {line.split("::", 1)[0] for line in listed.stdout.splitlines() if "::" in line}
    assert {"tests/test_http1_parser.py", "tests/test_uwsgi_codec.py"} <= files, files
    starting_servers = {
        "tests/test_front.py",
        "tests/test_wsgi_server.py",
        "tests/test_up.py",
        "tests/e2e/test_apps.py",
        "tests/test_build_wheel.py",
    }
    assert not files & starting_servers, files & starting_servers
