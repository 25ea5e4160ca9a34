"""``gantry serve`` as a user meets it: --chdir, several sockets, and clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from tests.process import REPO, GantryServer, free_port


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gantry", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_chdir_and_several_sockets(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "myapp.py").write_text(
        textwrap.dedent(
            """
            def application(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [environ["SERVER_PORT"].encode()]
            """
        )
    )
    second = free_port()
    with GantryServer(
        "myapp:application",
        "--chdir",
        str(site),
        "--http",
        f"127.0.0.1:{second}",
        log_path=tmp_path / "log",
    ) as server:
        for port in (server.port, second):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                assert reply.read() == str(port).encode()


def test_unimportable_app_fails_fast_with_its_name() -> None:
    result = _run("serve", "no_such_module_here:app", "--http", f"127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "no_such_module_here" in result.stderr


def test_missing_attribute_is_named() -> None:
    result = _run("serve", "gantry.demo:nope", "--http", f"127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "has no attribute 'nope'" in result.stderr


def test_bad_address_names_the_flag() -> None:
    result = _run("serve", "gantry.demo:app", "--http", "localhost:notaport")
    assert result.returncode == 2
    assert "--http" in result.stderr and "HOST:PORT" in result.stderr


def test_no_socket_is_an_error() -> None:
    result = _run("serve", "gantry.demo:app")
    assert result.returncode == 2
    assert "--http or --uwsgi-socket" in result.stderr


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    with GantryServer("gantry.demo:app", log_path=tmp_path / "log") as server:
        result = _run("serve", "gantry.demo:app", "--http", f"127.0.0.1:{server.port}")
    assert result.returncode == 2
    assert "cannot bind" in result.stderr and str(server.port) in result.stderr
