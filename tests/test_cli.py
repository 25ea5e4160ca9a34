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


def test_check_prints_the_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "gantry.toml"
    config.write_text(
        '[serve]\napp = "gantry.demo:app"\nhttp = ["127.0.0.1:8099"]\nworkers = 3\n'
        "[serve.limits]\nmax_fields = 50\n"
    )
    result = _run("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "[serve]" in result.stdout and "workers = 3" in result.stdout
    assert "max_fields = 50" in result.stdout
    # the printed config is itself a valid file
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    assert _run("check", "-c", str(again)).stdout == result.stdout


def test_check_names_file_key_and_expectation(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[serve]\napp = "gantry.demo:app"\n[serve.limits]\nmax_fields = "many"\n')
    result = _run("check", "-c", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "serve.limits.max_fields" in result.stderr and "integer" in result.stderr


def test_serve_flags_override_the_file(tmp_path: Path) -> None:
    file_port, flag_port = free_port(), free_port()
    config = tmp_path / "gantry.toml"
    config.write_text(f'[serve]\napp = "gantry.demo:app"\nhttp = ["127.0.0.1:{file_port}"]\n')
    # APP is given on the command line too here; the file's [serve].http is overridden
    with GantryServer(
        "gantry.demo:app", "-c", str(config), log_path=tmp_path / "log", port=flag_port
    ) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/hello", timeout=5) as r:
            assert r.read() == b"Hello World!"
        assert f"127.0.0.1:{file_port}" not in server.log_text()


def test_serve_from_a_uwsgi_ini(tmp_path: Path) -> None:
    port = free_port()
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(
        "[uwsgi]\nmodule = gantry.demo:app\n"
        f"http-socket = 127.0.0.1:{port}\nprocesses = 2\nmaster = true\n"
        "enable-threads = true\n"
    )
    server = GantryServer("--ini", str(ini), log_path=tmp_path / "log", port=port, http=False)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as reply:
            assert reply.read() == b"Hello World!"
        assert "enable-threads" in server.log_text()  # the warning names the option
        assert server.log_text().count("spawned worker") == 2
    finally:
        server.stop()
