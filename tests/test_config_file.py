"""gantry.toml ``[serve]`` tables and uWSGI ini files: loading, errors, overrides, round trips."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry.config import ConfigError, ListenAddress, ServeConfig
from gantry.config.file import (
    LimitsSettings,
    ServeSettings,
    load_toml,
    loads_toml,
    render_effective,
    to_serve_config,
)
from gantry.config.ini import load_uwsgi_ini
from gantry.protocol.http1 import HTTPLimits

FULL_TOML = """\
# a gantry.toml may hold other roles' tables too
[front]
anything = "goes"

[serve]
app = "mysite.wsgi:application"
http = ["127.0.0.1:8000", "[::1]:8001"]
uwsgi_socket = ["/run/gantry/app.sock", "127.0.0.1:3031"]
uwsgi_socket_mode = "660"
uwsgi_allow_from = ["10.0.0.0/8", "192.168.1.7"]
chdir = "/srv/mysite"
threads = 4
mount_prefix = "/shop"
access_log = "-"
error_log = "/var/log/gantry/error.log"
keepalive_timeout = 2
header_timeout = 3.5
body_timeout = 7
graceful_timeout = 12
workers = 3
preload = true
max_requests = 1000
max_requests_jitter = 50
harakiri = 20
reload_on_rss = 256
pidfile = "/run/gantry.pid"
stats = "127.0.0.1:9191"
metrics = "127.0.0.1:9200"
buffer_size = 32768

[serve.limits]
max_request_line = 4096
max_fields = 50
max_body_size = 10485760
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- schema


def test_schema_has_one_key_per_serve_config_field() -> None:
    # A ServeConfig field without a key (or the reverse) would silently be unsettable from a file.
    config_fields = {f.name for f in dataclasses.fields(ServeConfig)}
    assert set(ServeSettings.model_fields) == config_fields - {"listen"} | {"http", "uwsgi_socket"}
    assert set(LimitsSettings.model_fields) == {f.name for f in dataclasses.fields(HTTPLimits)}


def test_every_key_is_documented() -> None:
    for model in (ServeSettings, LimitsSettings):
        for name, field in model.model_fields.items():
            assert field.description and len(field.description) > 10, name


def test_defaults_are_serve_config_defaults() -> None:
    assert to_serve_config(ServeSettings(), {}) == ServeConfig()
    assert to_serve_config(loads_toml("[serve]\n"), {}) == ServeConfig()


# ---------------------------------------------------------------- valid files


def test_full_file_builds_the_serve_config(tmp_path: Path) -> None:
    config = to_serve_config(load_toml(write(tmp_path, "gantry.toml", FULL_TOML)), {})
    assert config.app == "mysite.wsgi:application"
    assert config.listen == [
        ListenAddress("http", host="127.0.0.1", port=8000),
        ListenAddress("http", host="::1", port=8001),
        ListenAddress("uwsgi", path="/run/gantry/app.sock"),
        ListenAddress("uwsgi", host="127.0.0.1", port=3031),
    ]
    assert config.uwsgi_socket_mode == 0o660
    assert config.uwsgi_allow_from == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
    )
    assert (config.threads, config.workers, config.preload) == (4, 3, True)
    assert (config.keepalive_timeout, config.header_timeout) == (2.0, 3.5)
    assert isinstance(config.keepalive_timeout, float)
    assert (config.max_requests, config.max_requests_jitter, config.harakiri) == (1000, 50, 20.0)
    assert (config.stats, config.metrics, config.pidfile) == (
        "127.0.0.1:9191",
        "127.0.0.1:9200",
        "/run/gantry.pid",
    )
    assert config.limits == HTTPLimits(max_request_line=4096, max_fields=50, max_body_size=10485760)
    config.check()


@pytest.mark.parametrize("mode", ['"660"', '"0660"', '"0o660"', "0o660", "432"])
def test_socket_mode_forms(mode: str) -> None:
    settings = loads_toml(f"[serve]\nuwsgi_socket_mode = {mode}\n")
    assert settings.uwsgi_socket_mode == 0o660


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # wrong type, with the range the key accepts
        ("threads = 'many'", "serve.threads: expected an integer >= 0, got 'many'"),
        ("preload = 1", "serve.preload: expected true or false, got 1"),
        ("keepalive_timeout = '5x'", "serve.keepalive_timeout: expected a time: seconds as a"),
        ("http = '127.0.0.1:80'", "serve.http: expected a list of strings, got '127.0.0.1:80'"),
        ("http = [8000]", "serve.http[0]: expected a string, got 8000"),
        ("chdir = 3", "serve.chdir: expected a string, got 3"),
        ("limits = 5", "serve.limits: expected a table, got 5"),
        # out of range
        ("workers = -1", "serve.workers: expected an integer >= 0, got -1"),
        ("header_timeout = 0", "serve.header_timeout: expected a time > 0, got 0"),
        (
            "buffer_size = 70000",
            "serve.buffer_size: expected a size from 1 to 65539, got 70000",
        ),
        ("uwsgi_socket_mode = 660", "serve.uwsgi_socket_mode: expected a file mode from 0o000"),
        ("uwsgi_socket_mode = '9'", "serve.uwsgi_socket_mode: expected a file mode"),
        # unknown keys, with the closest known one
        ("thraeds = 4", "serve.thraeds: unknown key; did you mean 'threads'?"),
        ("zzz = 4", "serve.zzz: unknown key"),
        # addresses and other formats
        ("http = ['127.0.0.1:80', 'localhost']", "serve.http[1]: expected HOST:PORT"),
        ("uwsgi_socket = ['host:99999']", "serve.uwsgi_socket[0]: expected HOST:PORT"),
        ("stats = 'stats'", "serve.stats: expected HOST:PORT or a unix socket path, got 'stats'"),
        ("uwsgi_allow_from = ['10.0.0.0/33']", "serve.uwsgi_allow_from[0]: expected an IP"),
        ("app = 'mysite.wsgi'", "serve.app: expected MODULE:CALLABLE"),
        ("mount_prefix = 'shop'", "serve.mount_prefix: expected a path starting with '/'"),
    ],
)
def test_error_names_file_key_and_expectation(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "gantry.toml", f"[serve]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert str(info.value).startswith(f"{path}: serve.")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("max_fields = 'many'", "serve.limits.max_fields: expected an integer >= 1, got 'many'"),
        ("max_body_size = -5", "serve.limits.max_body_size: expected a size >= 0, got -5"),
        (
            "max_feild_size = 10",
            "serve.limits.max_feild_size: unknown key; did you mean 'max_field_size'?",
        ),
    ],
)
def test_nested_limits_errors(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "gantry.toml", f"[serve]\napp = 'a:b'\n\n[serve.limits]\n{body}\n")
    with pytest.raises(ConfigError, match="^" + path) as info:
        load_toml(path)
    assert expected in str(info.value)


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "gantry.toml", "[serve]\nthreads = -1\nworkers = 'x'\nmetrix = 1\n")
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: serve.") for line in lines)
    assert "did you mean 'metrics'?" in lines[2]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "gantry.toml", '[serve]\napp = "a:b"\nthreads = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 3, column 11: invalid TOML: ")
    assert "threads = = 3" in message


def test_missing_serve_table_suggests_the_misspelt_one(tmp_path: Path) -> None:
    path = write(tmp_path, "gantry.toml", '[serv]\napp = "a:b"\n')
    with pytest.raises(ConfigError, match="expected a \\[serve\\] table.*did you mean 'serv'"):
        load_toml(path)
    path = write(tmp_path, "other.toml", 'serve = "a:b"\n')
    with pytest.raises(ConfigError, match="serve: expected a \\[serve\\] table, got 'a:b'"):
        load_toml(path)


def test_unreadable_and_non_utf8_files_are_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read the file"):
        load_toml(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[serve]\napp = '\xff'\n")
    with pytest.raises(ConfigError, match=f"^{binary}: expected UTF-8 text"):
        load_toml(str(binary))


# ---------------------------------------------------------------- overrides


def test_command_line_values_win_over_the_file(tmp_path: Path) -> None:
    settings = load_toml(write(tmp_path, "gantry.toml", FULL_TOML))
    config = to_serve_config(
        settings,
        {
            "threads": 0,
            "http": ("127.0.0.1:9000",),
            "max_body_size": 1024,
            "preload": False,
            "uwsgi_allow_from": (ipaddress.ip_network("127.0.0.0/8"),),
            "chdir": None,  # not given on the command line: the file's value stays
        },
    )
    assert config.threads == 0 and config.preload is False
    assert [a for a in config.listen if a.kind == "http"] == [
        ListenAddress("http", host="127.0.0.1", port=9000)
    ]
    # the file's uwsgi sockets are untouched by --http
    assert len([a for a in config.listen if a.kind == "uwsgi"]) == 2
    # one limit overridden, the file's other limits kept
    assert config.limits == HTTPLimits(max_request_line=4096, max_fields=50, max_body_size=1024)
    assert config.uwsgi_allow_from == (ipaddress.ip_network("127.0.0.0/8"),)
    assert config.chdir == "/srv/mysite"
    assert config.workers == 3  # not overridden


def test_parsed_listen_and_limits_overrides(tmp_path: Path) -> None:
    settings = load_toml(write(tmp_path, "gantry.toml", FULL_TOML))
    listen = [ListenAddress("uwsgi", path="/tmp/x.sock"), ListenAddress("http", "::1", 80)]
    config = to_serve_config(settings, {"listen": listen, "limits": HTTPLimits()})
    assert sorted(map(str, config.listen)) == sorted(map(str, listen))
    assert config.limits == HTTPLimits()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"http": ["nowhere"]}, "command line: --http: expected HOST:PORT"),
        ({"max_body_size": -1}, "command line: --max-body-size: expected a size >= 0, got -1"),
        ({"threads": -2}, "command line: --threads: expected an integer >= 0, got -2"),
        ({"thread": 2}, "command line: unknown setting 'thread'; did you mean 'threads'?"),
    ],
)
def test_bad_override_names_the_flag(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        to_serve_config(ServeSettings(), overrides)
    assert expected in str(info.value)


# ---------------------------------------------------------------- effective config round trip


def test_effective_config_round_trips(tmp_path: Path) -> None:
    original = to_serve_config(load_toml(write(tmp_path, "gantry.toml", FULL_TOML)), {})
    text = render_effective(original)
    assert text.startswith("[serve]\n") and "\n[serve.limits]\n" in text
    again = to_serve_config(load_toml(write(tmp_path, "effective.toml", text)), {})
    assert again == original


def test_round_trip_of_unusual_values(tmp_path: Path) -> None:
    original = ServeConfig(
        app="pkg.sub.wsgi:make_app",
        listen=[
            ListenAddress("http", path="./http.sock"),
            ListenAddress("http", host="0.0.0.0", port=0),
            ListenAddress("uwsgi", host="fe80::1", port=3031),
        ],
        uwsgi_socket_mode=0o600,
        uwsgi_allow_from=(),
        access_log='C:\\logs\\"quoted"\ttab\n\x7f\x00 \u00e9 \U0001f600',
        keepalive_timeout=float("inf"),
        header_timeout=1e-05,
        body_timeout=1e20,
        use_uvloop=False,
        limits=HTTPLimits(max_fields=1),
    )
    text = render_effective(original)
    assert "pidfile" not in text and "chdir" not in text  # None values are left out
    assert 'uwsgi_socket_mode = "0o600"' in text
    assert to_serve_config(load_toml(write(tmp_path, "e.toml", text)), {}) == original


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    seconds=st.floats(min_value=1e-9, allow_nan=False),
    count=st.integers(min_value=0, max_value=2**62),
)
def test_round_trip_any_string_and_number(text: str, seconds: float, count: int) -> None:
    original = ServeConfig(
        access_log=text, pidfile=text, graceful_timeout=seconds, max_requests=count
    )
    assert to_serve_config(loads_toml(render_effective(original)), {}) == original


# ---------------------------------------------------------------- uWSGI ini


def test_ini_typical_django_deployment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "uwsgi.ini",
        """\
[uwsgi]
; a comment
# another comment
chdir = /srv/mysite
module = mysite.wsgi:application
master = true
processes = 4
threads = 2
http-socket = :8000
http-socket = 127.0.0.1:8001
socket = /run/mysite.sock
socket = 127.0.0.1:3031
chmod-socket = 660
harakiri = 30
max-requests = 5000
buffer-size = 32768
reload-on-rss = 200
stats = 127.0.0.1:9191
pidfile = /run/mysite.pid
vacuum = true
die-on-term = true

[other]
processes = 99
""",
    )
    settings, warnings = load_uwsgi_ini(path)
    assert warnings == []
    config = to_serve_config(settings, {})
    assert config.app == "mysite.wsgi:application"
    assert config.chdir == "/srv/mysite"
    assert [str(a) for a in config.listen] == [
        "0.0.0.0:8000",
        "127.0.0.1:8001",
        "unix:/run/mysite.sock",
        "127.0.0.1:3031",
    ]
    assert [a.kind for a in config.listen] == ["http", "http", "uwsgi", "uwsgi"]
    assert config.uwsgi_socket_mode == 0o660
    assert (config.workers, config.threads, config.harakiri) == (4, 2, 30.0)
    assert (config.max_requests, config.buffer_size, config.reload_on_rss) == (5000, 32768, 200)
    assert (config.stats, config.pidfile) == ("127.0.0.1:9191", "/run/mysite.pid")
    assert config.preload is True  # uWSGI loads the app before forking unless lazy-apps
    config.check()


def test_ini_unsupported_options_are_warned_once_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "uwsgi.ini",
        "[uwsgi]\nmodule = app\nhttp-socket = :8000\nplugins = python3\n"
        "cheaper = 2\nplugins = router_cache\nvacuum = true\nDie_On_Term = true\n",
    )
    _, warnings = load_uwsgi_ini(path)
    assert warnings == [
        f"{path}: option 'plugins' (line 4) is not supported by Gantry and is ignored",
        f"{path}: option 'cheaper' (line 5) is not supported by Gantry and is ignored",
    ]


@pytest.mark.parametrize(
    ("lines", "app"),
    [
        ("module = pkg.wsgi:app", "pkg.wsgi:app"),
        ("module = pkg.wsgi\ncallable = app", "pkg.wsgi:app"),
        ("callable = app\nmodule = pkg.wsgi", "pkg.wsgi:app"),
        ("module = pkg.wsgi", "pkg.wsgi:application"),  # uWSGI's default callable
        ("wsgi = pkg.wsgi:app", "pkg.wsgi:app"),
    ],
)
def test_ini_module_forms(tmp_path: Path, lines: str, app: str) -> None:
    settings, _ = load_uwsgi_ini(write(tmp_path, "u.ini", f"[uwsgi]\n{lines}\n"))
    assert settings.app == app


def test_ini_wsgi_file_becomes_chdir_and_module(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "serve_me.py").write_text(
        "def application(environ, start_response):\n    return [b'ok']\n"
        "def other(environ, start_response):\n    return [b'other']\n"
    )
    path = write(tmp_path, "u.ini", f"[uwsgi]\nchdir = {tmp_path}\nwsgi-file = site/serve_me.py\n")
    settings, warnings = load_uwsgi_ini(path)
    assert settings.app == "serve_me:application"
    assert settings.chdir == str(site)
    assert len(warnings) == 1 and "chdir is" in warnings[0]
    # The translation is only right if the app imports from there, as `gantry serve` does it.
    module, _, name = settings.app.partition(":")
    probe = f"import importlib, os, sys; os.chdir({settings.chdir!r}); sys.path.insert(0, "
    probe += f"os.getcwd()); print(importlib.import_module({module!r}).{name}.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd="/"
    )
    assert result.stdout.strip() == "application", result.stderr

    absolute = write(
        tmp_path, "v.ini", f"[uwsgi]\nwsgi-file = {site}/serve_me.py\ncallable = other\n"
    )
    settings, warnings = load_uwsgi_ini(absolute)
    assert (settings.app, settings.chdir, warnings) == ("serve_me:other", str(site), [])


def test_ini_wsgi_file_must_be_importable(tmp_path: Path) -> None:
    path = write(tmp_path, "u.ini", "[uwsgi]\nwsgi-file = /srv/app.wsgi\n")
    with pytest.raises(ConfigError, match=f"^{path}, line 2: uwsgi.wsgi-file: expected a .py"):
        load_uwsgi_ini(path)


@pytest.mark.parametrize(
    ("lines", "workers", "preload"),
    [
        ("", 0, True),
        ("master = true", 1, True),
        ("master", 1, True),
        ("master = false", 0, True),
        ("master = true\nprocesses = 4", 4, True),
        ("workers = 2\nlazy-apps = true", 2, False),
        ("processes = 2\nlazy-apps = false", 2, True),
    ],
)
def test_ini_master_processes_and_lazy_apps(
    tmp_path: Path, lines: str, workers: int, preload: bool
) -> None:
    settings, _ = load_uwsgi_ini(write(tmp_path, "u.ini", f"[uwsgi]\nmodule = a:b\n{lines}\n"))
    assert (settings.workers, settings.preload) == (workers, preload)


def test_ini_socket_forms_and_magic_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mysite.ini",
        "[uwsgi]\nsocket = app.sock\nsocket = %d%n.sock\nchmod-socket\nstats = stats.sock\n",
    )
    settings, _ = load_uwsgi_ini(path)
    assert settings.uwsgi_socket == ["unix:app.sock", f"unix:{tmp_path}/mysite.sock"]
    assert settings.uwsgi_socket_mode == 0o666  # uWSGI's chmod-socket without a value
    assert settings.stats == "unix:stats.sock"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("processes = four", "line 3: uwsgi.processes: expected an integer >= 0, got 'four'"),
        ("harakiri = -1", "line 3: uwsgi.harakiri: expected a time >= 0, got -1"),
        ("http-socket = nowhere\nhttp-socket = :80", "line 3: uwsgi.http-socket: expected HOST"),
        ("http-socket = :80\nhttp-socket = nowhere", "line 4: uwsgi.http-socket: expected HOST"),
        ("master = maybe", "line 3: uwsgi.master: expected true or false, got 'maybe'"),
        ("chmod-socket = 999", "line 3: uwsgi.chmod-socket: expected a file mode"),
        ("socket = @abstract", "line 3: uwsgi.socket: expected HOST:PORT or a unix socket path"),
        ("wsgi-file = x.py", "line 3: uwsgi.wsgi-file: expected either module or wsgi-file"),
    ],
)
def test_ini_errors_name_file_line_and_option(tmp_path: Path, lines: str, expected: str) -> None:
    path = write(tmp_path, "uwsgi.ini", f"[uwsgi]\nmodule = a:b\n{lines}\n")
    with pytest.raises(ConfigError) as info:
        load_uwsgi_ini(path)
    assert str(info.value).startswith(f"{path}, ")
    assert expected in str(info.value)


def test_ini_without_uwsgi_section(tmp_path: Path) -> None:
    path = write(tmp_path, "u.ini", "[app]\nmodule = a:b\n")
    with pytest.raises(ConfigError, match=f"^{path}: expected a \\[uwsgi\\] section"):
        load_uwsgi_ini(path)


def test_ini_round_trips_through_the_effective_config(tmp_path: Path) -> None:
    path = write(tmp_path, "u.ini", "[uwsgi]\nmodule = a:b\nhttp-socket = :8000\nprocesses = 2\n")
    settings, _ = load_uwsgi_ini(path)
    config = to_serve_config(settings, {"threads": 8})
    assert config.threads == 8
    assert to_serve_config(loads_toml(render_effective(config)), {}) == config
