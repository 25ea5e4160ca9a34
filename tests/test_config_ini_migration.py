"""uWSGI ini migration: misspelt options are errors with a suggestion, logto / listen /
post-buffering / limit-post are mapped, env and virtualenv say what to do instead, and an
ini without a module names the file and the option."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from gantry.config import ConfigError
from gantry.config.ini import load_uwsgi_ini
from tests.process import GantryServer, free_port
from tests.support_config import gantry


def _ini(tmp_path: Path, lines: str, module: str = "module = gantry.demo:app\n") -> Path:
    path = tmp_path / "uwsgi.ini"
    path.write_text(f"[uwsgi]\n{module}{lines}")
    return path


@pytest.mark.parametrize(
    ("line", "option", "meant"),
    [
        ("proceses = 4", "proceses", "processes"),
        ("harakri = 30", "harakri", "harakiri"),
        ("max_requets = 10", "max-requets", "max-requests"),
        ("chdri = /tmp", "chdri", "chdir"),
        ("http-sockt = :8000", "http-sockt", "http-socket"),
        ("wsgi-fle = app.py", "wsgi-fle", "wsgi-file"),
        ("vacum = true", "vacum", "vacuum"),
    ],
)
def test_a_misspelt_option_is_an_error_with_a_suggestion(
    tmp_path: Path, line: str, option: str, meant: str
) -> None:
    path = _ini(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        load_uwsgi_ini(str(path))
    assert str(info.value) == (
        f"{path}, line 3: uwsgi.{option}: unknown option; did you mean '{meant}'?"
    )


def test_check_refuses_a_misspelt_option(tmp_path: Path) -> None:
    path = _ini(tmp_path, "http-socket = :8000\nproceses = 4\n")
    done = gantry("check", "--ini", str(path))
    assert done.returncode == 2
    assert f"{path}, line 4: uwsgi.proceses: unknown option; did you mean 'processes'?" in (
        done.stderr
    )


def test_other_uwsgi_options_stay_warnings(tmp_path: Path) -> None:
    path = _ini(tmp_path, "enable-threads = true\nmaster-fifo = /tmp/f\nlazy = true\nxyzzy = 1\n")
    _, warnings = load_uwsgi_ini(str(path))
    assert [w.split("'")[1] for w in warnings] == ["enable-threads", "master-fifo", "lazy", "xyzzy"]
    assert all("is not supported by Gantry and is ignored" in w for w in warnings)


def test_env_and_virtualenv_say_what_to_do_instead(tmp_path: Path) -> None:
    path = _ini(tmp_path, "env = DJANGO_SETTINGS_MODULE=mysite.settings\nvirtualenv = /srv/venv\n")
    _, warnings = load_uwsgi_ini(str(path))
    assert warnings == [
        f"{path}: option 'env' (line 3) has no equivalent in Gantry and is ignored: set the "
        "variable in the environment gantry starts in (systemd's Environment=)",
        f"{path}: option 'virtualenv' (line 4) has no equivalent in Gantry and is ignored: run "
        "gantry with the virtualenv's own python (VENV/bin/gantry)",
    ]


def test_logto_listen_post_buffering_and_limit_post_are_mapped(tmp_path: Path) -> None:
    log = tmp_path / "mysite.log"
    path = _ini(
        tmp_path,
        f"logto = {log}\nlisten = 512\npost-buffering = 65536\nlimit-post = 10485760\n",
    )
    settings, warnings = load_uwsgi_ini(str(path))
    assert warnings == []
    assert settings.error_log == str(log)
    assert (settings.backlog, settings.body_spool_threshold) == (512, 65536)
    assert settings.limits.max_body_size == 10485760


def test_logto_receives_the_servers_log(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "mysite.log"
    path = _ini(tmp_path, f"http-socket = 127.0.0.1:{port}\nlogto = {log}\n")
    server = GantryServer("--ini", str(path), log_path=tmp_path / "out", port=port, http=False)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as reply:
            assert reply.read() == b"Hello World!"
    finally:
        server.stop()
    assert log.exists() and log.read_text().strip(), server.log_text()


def test_an_ini_without_module_names_the_file_and_the_option(tmp_path: Path) -> None:
    path = _ini(tmp_path, "http-socket = :8000\nprocesses = 2\n", module="")
    expected = f"{path}: uwsgi.module: expected module = MODULE:CALLABLE or wsgi-file = FILE.py"
    done = gantry("check", "--ini", str(path))
    assert done.returncode == 2
    assert expected in done.stderr
    done = gantry("serve", "--ini", str(path))
    assert done.returncode == 2
    assert expected in done.stderr and "give APP on the command line" in done.stderr
