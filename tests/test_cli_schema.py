"""`gantry serve`'s flags are built from the [serve] schema: one flag per setting, with the
schema's default and description, every old flag name kept, and nginx's units accepted."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import click
import pytest

from gantry.cli import _build_serve_config, serve
from gantry.config import ListenAddress, ServeConfig
from gantry.config.file import LimitsSettings, ServeSettings
from gantry.protocol.http1 import HTTPLimits
from tests.process import GantryServer, read_all


def _options() -> dict[str, click.Option]:
    return {p.name: p for p in serve.params if isinstance(p, click.Option) and p.name}


def test_every_setting_has_a_flag_with_the_schema_help_and_default() -> None:
    options = _options()
    fields = {
        **{k: f for k, f in ServeSettings.model_fields.items() if k not in ("app", "limits")},
        **LimitsSettings.model_fields,
    }
    assert set(options) - {"config_file", "ini"} == set(fields)
    for name, field in fields.items():
        option = options[name]
        assert option.help and field.description, name
        if name != "use_uvloop":
            assert option.help == field.description, name
        if field.default_factory is None and not option.is_flag:
            assert option.default == field.default, name


def _config(*args: str) -> ServeConfig:
    ctx = serve.make_context("serve", list(args))
    with ctx:
        return _build_serve_config(ctx, None, None)


def test_every_old_flag_still_sets_its_setting(tmp_path: Path) -> None:
    config = _config(
        "gantry.demo:app",
        "--http", "127.0.0.1:8001",
        "--uwsgi-socket", "/tmp/a.sock",
        "--uwsgi-socket-mode", "660",
        "--uwsgi-allow-from", "10.0.0.0/8,192.168.0.1",
        "--chdir", str(tmp_path),
        "--threads", "4",
        "--mount-prefix", "/shop",
        "--access-log", "-",
        "--error-log", "/tmp/err.log",
        "--keepalive-timeout", "2",
        "--header-timeout", "3.5",
        "--body-timeout", "7",
        "--graceful-timeout", "12",
        "--max-body-size", "1000",
        "--limit-request-line", "4000",
        "--limit-request-field-size", "4001",
        "--limit-request-fields", "50",
        "--limit-request-head", "9000",
        "--buffer-size", "8192",
        "--no-uvloop",
        "--workers", "3",
        "--preload",
        "--max-requests", "100",
        "--max-requests-jitter", "10",
        "--harakiri", "20",
        "--reload-on-rss", "256",
        "--pidfile", "/tmp/g.pid",
        "--stats", "127.0.0.1:9191",
        "--metrics", "127.0.0.1:9200",
    )  # fmt: skip
    assert config.listen == [
        ListenAddress("http", host="127.0.0.1", port=8001),
        ListenAddress("uwsgi", path="/tmp/a.sock"),
    ]
    assert config.uwsgi_socket_mode == 0o660
    assert config.uwsgi_allow_from == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.0.1/32"),
    )
    assert (config.chdir, config.threads, config.mount_prefix) == (str(tmp_path), 4, "/shop")
    assert (config.access_log, config.error_log) == ("-", "/tmp/err.log")
    timeouts = (
        config.keepalive_timeout,
        config.header_timeout,
        config.body_timeout,
        config.graceful_timeout,
    )
    assert timeouts == (2.0, 3.5, 7.0, 12.0)
    assert config.limits == HTTPLimits(
        max_request_line=4000,
        max_field_size=4001,
        max_fields=50,
        max_head_size=9000,
        max_body_size=1000,
    )
    assert (config.buffer_size, config.use_uvloop) == (8192, False)
    assert (config.workers, config.preload, config.max_requests) == (3, True, 100)
    assert (config.max_requests_jitter, config.harakiri, config.reload_on_rss) == (10, 20.0, 256)
    assert (config.pidfile, config.stats, config.metrics) == (
        "/tmp/g.pid",
        "127.0.0.1:9191",
        "127.0.0.1:9200",
    )


def test_defaults_are_the_schema_defaults() -> None:
    config = _config("gantry.demo:app", "--http", "127.0.0.1:8001")
    expected = ServeConfig(app="gantry.demo:app", listen=config.listen)
    assert config == expected


def test_settings_that_had_no_flag_have_one_now() -> None:
    config = _config(
        "gantry.demo:app", "--http", ":1", "--backlog", "16", "--body-spool-threshold", "64k"
    )
    assert (config.backlog, config.body_spool_threshold) == (16, 65536)


def test_flags_take_units() -> None:
    config = _config(
        "gantry.demo:app", "--http", ":1",
        "--header-timeout", "500ms", "--graceful-timeout", "1m", "--harakiri", "1h30m",
        "--max-body-size", "10m", "--buffer-size", "8k", "--reload-on-rss", "1g",
        "--workers", "1",
    )  # fmt: skip
    assert (config.header_timeout, config.graceful_timeout, config.harakiri) == (0.5, 60, 5400)
    assert config.limits.max_body_size == 10 * 1024 * 1024
    assert (config.buffer_size, config.reload_on_rss) == (8192, 1024)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--header-timeout", "soon"], "command line: --header-timeout: expected a time"),
        (["--max-body-size", "10mb"], "command line: --max-body-size: expected a size"),
        (["--header-timeout", "0"], "command line: --header-timeout: expected a time > 0"),
    ],
)
def test_bad_units_on_the_command_line_name_the_flag(args: list[str], expected: str) -> None:
    from gantry.config import ConfigError

    with pytest.raises(ConfigError, match=expected):
        _config("gantry.demo:app", "--http", ":1", *args)


def test_a_unit_flag_limits_a_real_server(tmp_path: Path) -> None:
    with GantryServer("gantry.demo:app", "--max-body-size", "1k", log_path=tmp_path / "log") as app:
        with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
            body = b"x" * 2048
            head = b"POST /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
