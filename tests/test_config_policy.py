"""One policy for every table of gantry.toml: strict types, one error format, nginx's units,
listen addresses and next_upstream checked by `gantry check` as start-up reads them."""

from __future__ import annotations

import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from tests.process import GantryUp
from tests.support_config import check_file, gantry

APP = '[[app]]\nname = "web"\nmodule = "gantry.demo:app"\n'
UPSTREAM = '[front.upstream.api]\nservers = [{ address = "127.0.0.1:9000" }]\n'
SERVER = '[[front.server]]\n[[front.server.location]]\npath = "/"\nproxy = "web"\n'


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gantry.toml"
    done = check_file(path, text)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stderr.replace(f"{path}: ", "FILE: ")


# ---------------------------------------------------------------- strict types, every table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[front]\nworkers = "2"\n', "FILE: front.workers: expected an integer >= 1, got '2'"),
        (
            '[[front.server]]\ndefault = "yes"\n',
            "FILE: front.server[0].default: expected true or false, got 'yes'",
        ),
        (
            SERVER + '[[front.server.location]]\npath = "/x"\nautoindex = 1\n',
            "FILE: front.server[0].location[1].autoindex: expected true or false, got 1",
        ),
        (
            UPSTREAM + 'max_tries = "3"\n',
            "FILE: front.upstream.api.max_tries: expected an integer >= 1, got '3'",
        ),
        (
            '[front.upstream.api]\nservers = [{ address = "127.0.0.1:9000", weight = "2" }]\n',
            "FILE: front.upstream.api.servers[0].weight: expected an integer >= 1, got '2'",
        ),
        (
            UPSTREAM + "[front.upstream.api.health_check]\nrise = 2.0\n",
            "FILE: front.upstream.api.health_check.rise: expected an integer >= 1, got 2.0",
        ),
        ("[stack]\npidfile = 5\n", "FILE: stack.pidfile: expected a string, got 5"),
        (APP + 'workers = "2"\n', "FILE: app[0].workers: expected an integer >= 1, got '2'"),
        ('[serve]\nthreads = "2"\n', "FILE: serve.threads: expected an integer >= 0, got '2'"),
    ],
)
def test_every_table_refuses_a_wrong_type_the_same_way(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in _refused(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SERVER + '[[front.server.location]]\npath = "/x"\nautoindx = true\n',
            "FILE: front.server[0].location[1].autoindx: unknown key; did you mean 'autoindex'?",
        ),
        (
            UPSTREAM + "conect_timeout = 3\n",
            "FILE: front.upstream.api.conect_timeout: unknown key; did you mean 'connect_timeout'?",
        ),
        (
            UPSTREAM + "[front.upstream.api.health_check]\nintervall = 3\n",
            "FILE: front.upstream.api.health_check.intervall: unknown key; "
            "did you mean 'interval'?",
        ),
        (
            "[front.upstream.api]\nprotocol = 'http'\n",
            "FILE: front.upstream.api.servers: required, expected a list of tables",
        ),
        (
            UPSTREAM + "balance = 'random'\n",
            "FILE: front.upstream.api.balance: expected one of 'round_robin', 'least_conn', "
            "'ip_hash', 'hash', got 'random'",
        ),
    ],
)
def test_key_paths_go_through_tables_by_name(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _refused(tmp_path, text)


def test_gantry_front_speaks_the_same_error_format(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    path.write_text('[front]\nworkers = "2"\nlisten = ["127.0.0.1:1"]\n')
    done = gantry("front", "-c", str(path))
    assert done.returncode == 2, done.stderr
    assert f"{path}: front.workers: expected an integer >= 1, got '2'" in done.stderr


def test_gantry_front_reports_toml_syntax_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    path.write_text('[front]\nworkers = 2\nlisten = ["127.0.0.1:1" "x"]\n')
    done = gantry("front", "-c", str(path))
    assert done.returncode == 2, done.stderr
    assert f"{path}: line 3, column" in done.stderr
    assert "invalid TOML" in done.stderr
    assert 'listen = ["127.0.0.1:1" "x"]' in done.stderr  # the line itself is shown
    path.write_text('[front]\nlisten = ["127.0.0.1:1"\n')
    done = gantry("front", "-c", str(path))
    assert f"{path}: at the end of the file: invalid TOML: Unclosed array" in done.stderr


def test_gantry_front_without_a_front_table_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gantry.toml"
    path.write_text("[serve]\n")
    done = gantry("front", "-c", str(path))
    assert done.returncode == 2
    assert f"{path}: front: expected a [front] table" in done.stderr


# ---------------------------------------------------------------- units


UNITS_FILE = """\
[stack]
graceful_timeout = "1m"

[front]
listen = ["127.0.0.1:8080"]
client_max_body_size = "10m"

[front.upstream.api]
servers = [{ address = "127.0.0.1:9000", fail_timeout = "30s" }]
connect_timeout = "500ms"
read_timeout = "1h30m"
send_timeout = 90
keepalive_timeout = "2s"
health_check = { interval = "1m", timeout = "1500ms" }

[[front.server]]

  [[front.server.location]]
  path = "/static/"
  expires = "30d"

  [[front.server.location]]
  path = "/"
  proxy = "web"

[[app]]
name = "web"
module = "gantry.demo:app"
harakiri = "2m"
reload_on_rss = "1g"
body_spool_threshold = "64k"
buffer_size = "32k"
limits = { max_body_size = "1g", max_head_size = "64k" }

[serve]
app = "gantry.demo:app"
http = ["127.0.0.1:8000"]
header_timeout = "500ms"
keepalive_timeout = "1m"
reload_on_rss = 512
"""


def test_units_through_a_real_file_are_printed_normalised(tmp_path: Path) -> None:
    done = check_file(tmp_path / "gantry.toml", UNITS_FILE)
    assert done.returncode == 0, done.stderr
    stack_part, _, serve_part = done.stdout.partition("\n[serve]\n")
    effective = tomllib.loads(stack_part)
    serve = tomllib.loads("[serve]\n" + serve_part)["serve"]
    assert effective["stack"]["graceful_timeout"] == 60.0
    front = effective["front"]
    assert front["client_max_body_size"] == 10 * 1024 * 1024
    api = front["upstream"]["api"]
    assert api["servers"][0]["fail_timeout"] == 30.0
    assert (api["connect_timeout"], api["read_timeout"], api["send_timeout"]) == (0.5, 5400, 90)
    assert api["keepalive_timeout"] == 2.0
    assert (api["health_check"]["interval"], api["health_check"]["timeout"]) == (60.0, 1.5)
    assert front["server"][0]["location"][0]["expires"] == 30 * 86400
    app = effective["app"][0]
    assert (app["harakiri"], app["reload_on_rss"]) == (120.0, 1024)
    assert (app["body_spool_threshold"], app["buffer_size"]) == (65536, 32768)
    assert app["limits"]["max_body_size"] == 1024**3
    assert app["limits"]["max_head_size"] == 65536
    assert (serve["header_timeout"], serve["keepalive_timeout"]) == (0.5, 60.0)
    assert serve["reload_on_rss"] == 512  # a plain number keeps the key's unit: MiB
    # what check prints loads back the same
    again = check_file(tmp_path / "again.toml", done.stdout)
    assert again.returncode == 0, again.stderr
    assert again.stdout == done.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[front]\nclient_max_body_size = "10mb"\n',
            "FILE: front.client_max_body_size: expected a size: bytes as an integer, or with a "
            "unit: \"512k\", \"10m\", \"1g\" (powers of 1024), got '10mb'",
        ),
        (
            UPSTREAM + 'read_timeout = "30 seconds"\n',
            'FILE: front.upstream.api.read_timeout: expected a time: seconds as a number, or '
            'with units: "500ms", "30s"',
        ),
        (
            UPSTREAM + 'read_timeout = "0s"\n',
            "FILE: front.upstream.api.read_timeout: expected a time > 0, got 0",
        ),
        (
            SERVER + '[[front.server.location]]\npath = "/x"\nexpires = "1500ms"\n',
            "FILE: front.server[0].location[1].expires: expected a whole number of seconds, "
            "got '1500ms'",
        ),
        (APP + 'reload_on_rss = "512k"\n',
         "FILE: app[0].reload_on_rss: expected a whole number of MiB"),
        ('[stack]\ngraceful_timeout = "soon"\n', "FILE: stack.graceful_timeout: expected a time"),
        ('[serve]\nbody_timeout = true\n', "FILE: serve.body_timeout: expected a time"),
        ('[serve.limits]\nmax_body_size = "2x"\n',
         "FILE: serve.limits.max_body_size: expected a size"),
    ],
)  # fmt: skip
def test_bad_units_name_the_key_and_the_forms(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _refused(tmp_path, text)


# ---------------------------------------------------------------- listen addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[front]\nlisten = ["127.0.0.1:80800"]\n',
            "FILE: front.listen[0]: expected HOST:PORT or a unix socket path, "
            "got '127.0.0.1:80800'",
        ),
        ('[front]\nlisten = ["localhost"]\n', "FILE: front.listen[0]: expected HOST:PORT"),
        (APP + 'http = [":99999"]\n', "FILE: app[0].http[0]: expected HOST:PORT"),
        (APP + 'uwsgi_socket = ["1.2.3.4:"]\n', "FILE: app[0].uwsgi_socket[0]: expected HOST:PORT"),
        ('[stack]\nstats = "127.0.0.1:70000"\n', "FILE: stack.stats: expected HOST:PORT"),
        ('[stack]\nmetrics = "nowhere"\n', "FILE: stack.metrics: expected HOST:PORT"),
        (
            '[front.upstream.api]\nservers = [{ address = "10.0.0.1" }]\n',
            "FILE: front.upstream.api.servers[0].address: expected 'HOST:PORT' or 'unix:/path', "
            "got '10.0.0.1'",
        ),
        (
            '[front.upstream.api]\nservers = [{ address = "/run/app.sock" }]\n',
            "FILE: front.upstream.api.servers[0].address: expected 'HOST:PORT' or 'unix:/path'",
        ),
    ],
)  # fmt: skip
def test_check_parses_every_listen_address(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _refused(tmp_path, text)


def test_good_addresses_pass_check(tmp_path: Path) -> None:
    text = (
        '[front]\nlisten = ["127.0.0.1:8080", "[::1]:8080", ":8081", "unix:/tmp/front.sock"]\n'
        '[front.upstream.api]\nservers = [{ address = "127.0.0.1:9000" }, '
        '{ address = "unix:/run/api.sock" }, { address = "[::1]:9001" }]\n'
    )
    done = check_file(tmp_path / "gantry.toml", text)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- next_upstream


@pytest.mark.parametrize(
    "values",
    [
        ["error", "timeout"],
        ["http_500", "http_502", "http_503", "http_504"],
        ["http_403", "http_404", "http_429", "invalid_header", "non_idempotent"],
        ["off"],
        [],
    ],
)
def test_next_upstream_takes_nginx_names(values: list[str]) -> None:
    table = {
        "upstream": {"api": {"servers": [{"address": "127.0.0.1:9"}], "next_upstream": values}}
    }
    config = front_config_from_dict(table, "gantry.toml")
    assert config.upstreams["api"].next_upstream == tuple(values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            ["error", "http_502 "],
            "gantry.toml: front.upstream.api.next_upstream[1]: expected one of 'error', 'timeout'",
        ),
        (["http_501"], "gantry.toml: front.upstream.api.next_upstream[0]: expected one of"),
        (
            ["off", "error"],
            "gantry.toml: front.upstream.api.next_upstream: expected 'off' alone",
        ),
    ],
)
def test_next_upstream_refuses_other_values(values: list[str], expected: str) -> None:
    table = {
        "upstream": {"api": {"servers": [{"address": "127.0.0.1:9"}], "next_upstream": values}}
    }
    with pytest.raises(ConfigError) as info:
        front_config_from_dict(table, "gantry.toml")
    assert expected in str(info.value)


def test_units_reach_a_running_stack(tmp_path: Path) -> None:
    """A size and a time in nginx's units act as the numbers they stand for."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "a.txt").write_text("hi")
    config = (
        '[stack]\ngraceful_timeout = "5s"\n'
        '[front]\nlisten = ["127.0.0.1:FRONT_PORT"]\nclient_max_body_size = "1k"\n'
        "[[front.server]]\n"
        f'[[front.server.location]]\npath = "/static/"\nalias = "{static}/"\nexpires = "1h"\n'
        '[[front.server.location]]\npath = "/"\nproxy = "web"\n'
        '[[app]]\nname = "web"\nmodule = "gantry.demo:app"\n'
    )
    up = GantryUp(tmp_path, config)
    up.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{up.port}/static/a.txt", timeout=10) as r:
            assert r.headers["Cache-Control"] == "max-age=3600"
        # the demo answers 405 to a POST: what matters is whether the front let it through
        assert _post_status(up.port, 1024) == 405
        assert _post_status(up.port, 1025) == 413
    finally:
        assert up.stop() == 0, up.log_text()


def _post_status(port: int, size: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hello", data=b"x" * size)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("code", ["abc", "200", "99", "4040"])
def test_error_pages_keys_are_statuses(tmp_path: Path, code: str) -> None:
    text = f'[front]\nerror_pages = {{ "{code}" = "/srv/x.html" }}\n'
    expected = (
        f"FILE: front.error_pages: expected HTTP statuses from 400 to 599 as keys, got '{code}'"
    )
    assert expected in _refused(tmp_path, text)
