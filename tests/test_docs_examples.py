"""Every gantry.toml and uWSGI ini example in docs/*.md passes `gantry check`, and the
[serve] table `gantry check --ini` prints pastes into an [[app]] as docs/migrating.md says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.process import REPO
from tests.support_config import check_file, gantry

DOCS = sorted((REPO / "docs").glob("*.md"))
_FENCE = re.compile(r"^```(toml|ini)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# The examples are written for a real host; the test gives each path a home under tmp.
_PLACES = ("/srv/mysite", "/run/", "/var/log/", "/etc/")


def _examples() -> list[tuple[str, str, str]]:
    """(where, language, text) of every toml and ini block in the docs."""
    found = []
    for doc in DOCS:
        source = doc.read_text(encoding="utf-8")
        for match in _FENCE.finditer(source):
            line = source.count("\n", 0, match.start()) + 1
            found.append((f"{doc.name}:{line}", match[1], match[2]))
    return found


EXAMPLES = _examples()


def _host(tmp_path: Path) -> dict[str, str]:
    """Directories and the Django-style project the examples name, under tmp_path."""
    site = tmp_path / "srv" / "mysite"
    for directory in ("static", "media", "errors", "mysite"):
        (site / directory).mkdir(parents=True, exist_ok=True)
    (site / "mysite" / "__init__.py").write_text("")
    (site / "mysite" / "wsgi.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n"
    )
    (site / "errors" / "502.html").write_text("<h1>502</h1>")
    return {
        "/srv/mysite": str(site),
        "/run/": f"{tmp_path}/run/",
        "/var/log/": f"{tmp_path}/log/",
        "/etc/": f"{tmp_path}/etc/",
    }


def _localise(text: str, places: dict[str, str]) -> str:
    for place in _PLACES:
        text = text.replace(place, places[place])
    return text


def test_the_docs_have_examples() -> None:
    languages = [language for _, language, _ in EXAMPLES]
    assert languages.count("toml") >= 2 and languages.count("ini") >= 1, EXAMPLES


@pytest.mark.parametrize(("where", "language", "text"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_every_example_passes_check(tmp_path: Path, where: str, language: str, text: str) -> None:
    local = _localise(text, _host(tmp_path))
    if language == "toml":
        done = check_file(tmp_path / "gantry.toml", local, cwd=tmp_path)
    else:
        ini = tmp_path / "uwsgi.ini"
        ini.write_text(local)
        done = gantry("check", "--ini", str(ini), cwd=tmp_path)
    assert done.returncode == 0, f"{where}:\n{done.stderr}"
    assert "warning" not in done.stderr, f"{where}:\n{done.stderr}"


def _pasted_as_app(serve_table: str) -> str:
    """What docs/migrating.md says to do with `gantry check --ini`'s output."""
    text = serve_table.replace("[serve]\n", '[[app]]\nname = "mysite"\n', 1)
    return text.replace("[serve.limits]\n", "[app.limits]\n", 1)


# with no master, gantry serve runs one process (workers = 0), where harakiri cannot be
@pytest.mark.parametrize("master", ["master = true\nprocesses = 4\nharakiri = 30\n", ""])
def test_the_serve_table_of_an_ini_pastes_into_an_app(tmp_path: Path, master: str) -> None:
    places = _host(tmp_path)
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(
        f"[uwsgi]\nchdir = {places['/srv/mysite']}\nmodule = mysite.wsgi:application\n"
        f"socket = {tmp_path}/mysite.sock\nchmod-socket = 660\n{master}"
    )
    printed = gantry("check", "--ini", str(ini), cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    done = check_file(tmp_path / "gantry.toml", _pasted_as_app(printed.stdout), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    app = tomllib.loads(done.stdout)["app"][0]
    assert app["module"] == "mysite.wsgi:application"
    assert app["workers"] == (4 if master else 1)
    assert (app["harakiri"], app["uwsgi_socket_mode"]) == (30.0 if master else 0.0, "0o660")


def test_an_app_with_both_app_and_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    done = check_file(path, '[[app]]\nname = "a"\nmodule = "m:app"\napp = "n:app"\n')
    assert done.returncode == 2
    assert f"{path}: app[0]: give the application as 'module' or as 'app', not both" in (
        done.stderr
    )
