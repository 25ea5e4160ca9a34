"""`gantry check` catches what start-up refuses: an app that does not import (imported in a
child process with the app's chdir, as a worker does) and static directories that are not
there (a warning)."""

from __future__ import annotations

from pathlib import Path

from tests.support_config import check_file, gantry

GOOD_APP = """\
def application(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
"""


def _site(tmp_path: Path, source: str = GOOD_APP, name: str = "mysite_app") -> Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(source)
    return site


def test_an_app_that_does_not_import_fails_check_with_its_traceback(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    done = check_file(path, '[[app]]\nname = "web"\nmodule = "no_such_module_here:app"\n')
    assert done.returncode == 3, done.stderr
    assert f"{path}: app[0].module: cannot import 'no_such_module_here:app'" in done.stderr
    assert "Traceback" in done.stderr
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in done.stderr
    assert "[[app]]" in done.stdout  # the effective config is still printed


def test_the_import_runs_in_the_apps_chdir(tmp_path: Path) -> None:
    site = _site(tmp_path)
    path = tmp_path / "gantry.toml"
    good = f'[[app]]\nname = "web"\nmodule = "mysite_app:application"\nchdir = "{site}"\n'
    done = check_file(path, good, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # without the chdir the module is not on the path, as at start-up
    done = check_file(path, '[[app]]\nname = "web"\nmodule = "mysite_app:application"\n')
    assert done.returncode == 3
    assert "No module named 'mysite_app'" in done.stderr


def test_an_exception_at_import_is_shown_with_the_apps_line(tmp_path: Path) -> None:
    site = _site(tmp_path, "import os\nSETTING = 1 / 0\n")
    done = check_file(
        tmp_path / "gantry.toml",
        f'[[app]]\nname = "web"\nmodule = "mysite_app:application"\nchdir = "{site}"\n',
    )
    assert done.returncode == 3, done.stderr
    assert f'File "{site / "mysite_app.py"}", line 2' in done.stderr
    assert "ZeroDivisionError" in done.stderr


def test_a_missing_callable_is_named(tmp_path: Path) -> None:
    site = _site(tmp_path)
    done = check_file(
        tmp_path / "gantry.toml",
        f'[[app]]\nname = "web"\nmodule = "mysite_app:app"\nchdir = "{site}"\n',
    )
    assert done.returncode == 3, done.stderr
    assert "module 'mysite_app' has no attribute 'app'" in done.stderr


def test_serve_table_and_ini_apps_are_imported_too(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    done = check_file(path, '[serve]\napp = "no_such_module_here:app"\nhttp = [":8000"]\n')
    assert done.returncode == 3
    assert f"{path}: serve.app: cannot import" in done.stderr
    ini = tmp_path / "uwsgi.ini"
    ini.write_text("[uwsgi]\nmodule = no_such_module_here:app\nhttp-socket = :8000\n")
    done = gantry("check", "--ini", str(ini))
    assert done.returncode == 3
    assert f"{ini}: uwsgi.module: cannot import" in done.stderr


def test_no_import_skips_the_import(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    path.write_text('[[app]]\nname = "web"\nmodule = "no_such_module_here:app"\n')
    done = gantry("check", "--no-import", "-c", str(path))
    assert done.returncode == 0, done.stderr


def test_a_missing_static_directory_is_a_warning(tmp_path: Path) -> None:
    there = tmp_path / "static"
    there.mkdir()
    path = tmp_path / "gantry.toml"
    done = check_file(
        path,
        "[[front.server]]\n"
        f'[[front.server.location]]\npath = "/a/"\nalias = "{there}/"\n'
        f'[[front.server.location]]\npath = "/b/"\nalias = "{tmp_path}/gone/"\n'
        f'[[front.server.location]]\npath = "/c/"\nroot = "{tmp_path}/nowhere"\n',
    )
    assert done.returncode == 0, done.stderr
    assert f"{path}: front.server[0].location[0]" not in done.stderr
    assert (
        f"gantry check: warning: {path}: front.server[0].location[1].alias: "
        f"no directory '{tmp_path}/gone/'"
    ) in done.stderr
    assert f"{path}: front.server[0].location[2].root: no directory" in done.stderr
