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


def test_the_pure_pass_selects_in_process_tests_of_compiled_modules() -> None:
    """`make test`'s second pass (-m pure_twice) leaves out every test that starts a
    server and every test that touches no compiled module, and keeps those that run a
    compiled module in the test process, also where their module starts servers in
    other tests."""
    repo = Path(__file__).resolve().parents[1]
    # the modules named below only: collecting the whole suite took ten times as long
    modules = [
        "test_http1_parser.py", "test_uwsgi_codec.py", "test_proxy_repeat_memos.py",
        "test_front_defence_speed.py", "test_cache_speed.py", "test_front.py",
        "test_front_proxy_direct.py", "test_wsgi_server.py", "test_build_wheel.py",
        "test_up.py", "e2e/test_apps.py", "test_config_units.py", "test_front_static.py",
    ]  # fmt: skip
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "-m", "pure_twice", *(f"tests/{module}" for module in modules)],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    ids = {line.split("[", 1)[0] for line in listed.stdout.splitlines() if "::" in line}
    files = {test.split("::", 1)[0] for test in ids}
    assert {"tests/test_http1_parser.py", "tests/test_uwsgi_codec.py"} <= files, files
    in_process = {
        # beside tests that start uWSGI and a front
        "tests/test_proxy_repeat_memos.py::test_a_repeated_head_is_read_once",
        # beside one that starts a front, and one that asks for a launcher
        "tests/test_front_defence_speed.py::test_a_passing_limit_makes_no_struct_call",
        "tests/test_cache_speed.py::test_a_full_queue_commits_at_once",
    }
    assert in_process <= ids, in_process - ids
    starting_servers = {
        "tests/test_front.py::test_in_front_of_real_uwsgi_over_uwsgi",  # a launcher
        "tests/test_front.py::test_proxied_to_the_app_over_uwsgi",  # a module fixture's
        "tests/test_front.py::test_upstream_down_gives_502",  # Front, by hand
        "tests/test_front_proxy_direct.py::test_a_slow_client_of_real_uwsgi_keeps_the_worker_small",
        "tests/test_front_defence_speed.py::test_the_stats_count_refused_and_served_requests_as_before",
        "tests/test_wsgi_server.py::test_write_callable_then_result",  # a module fixture
        "tests/test_build_wheel.py::test_pip_install_gives_the_compiled_gantry_and_it_serves",
    }
    assert not ids & starting_servers, ids & starting_servers
    assert not files & {"tests/test_up.py", "tests/e2e/test_apps.py"}, files
    # no compiled module: config units, static path rules, the PROXY protocol's parser
    once = {"tests/test_config_units.py", "tests/test_front_static.py"}
    assert not files & once, files & once
