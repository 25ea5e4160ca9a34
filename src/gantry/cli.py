"""The ``gantry`` command: parses flags, builds the config, starts a role."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from gantry import __version__
from gantry.config import ConfigError, ServeConfig
from gantry.config.file import (
    ServeSettings,
    load_toml,
    render_effective,
    to_serve_config,
)
from gantry.config.ini import load_uwsgi_ini
from gantry.protocol.http1 import HTTPLimits

_DEFAULTS = HTTPLimits()


def _octal(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 8) if not value.startswith("0o") else int(value[2:], 8)
    except ValueError:
        raise click.BadParameter(
            f"expected an octal file mode such as 660, got {value!r}"
        ) from None


@click.group()
@click.version_option(__version__, prog_name="gantry")
def main() -> None:
    """Gantry: the front server and the application server of a Python web stack."""


@main.command()
@click.argument("app", required=False, metavar="[APP]")
@click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="Read settings from the [serve] table of this gantry.toml.",
)
@click.option("--ini", metavar="FILE", help="Read settings from a uWSGI ini's [uwsgi] section.")
@click.option("--http", "http", multiple=True, metavar="HOST:PORT", help="HTTP/1.1 socket.")
@click.option(
    "--uwsgi-socket",
    "uwsgi",
    multiple=True,
    metavar="HOST:PORT|PATH",
    help="uwsgi-protocol socket.",
)
@click.option(
    "--uwsgi-socket-mode",
    callback=_octal,
    default=None,
    metavar="MODE",
    help="File mode of unix uwsgi sockets (octal, e.g. 660).",
)
@click.option(
    "--uwsgi-allow-from",
    multiple=True,
    metavar="CIDR[,CIDR]",
    help="Peers allowed on TCP uwsgi sockets (default: loopback only).",
)
@click.option("--chdir", type=click.Path(exists=True, file_okay=False), help="Change here first.")
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="0: run the app on the event-loop thread; N: on a pool of N threads.",
)
@click.option(
    "--mount-prefix",
    default="",
    metavar="PATH",
    help="URL prefix moved from PATH_INFO to SCRIPT_NAME.",
)
@click.option("--access-log", metavar="PATH|-", help="Combined-format access log (- = stdout).")
@click.option("--error-log", metavar="PATH|-", help="Error log (default stderr).")
@click.option("--keepalive-timeout", type=float, default=5.0, show_default=True)
@click.option(
    "--header-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to receive a request head before 408.",
)
@click.option(
    "--body-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds allowed between two reads of a request body.",
)
@click.option("--graceful-timeout", type=float, default=30.0, show_default=True)
@click.option(
    "--max-body-size",
    type=click.IntRange(0),
    default=_DEFAULTS.max_body_size,
    show_default=True,
    help="Largest request body in bytes (413 above).",
)
@click.option(
    "--limit-request-line",
    type=click.IntRange(1),
    default=_DEFAULTS.max_request_line,
    show_default=True,
    help="Longest request target (414 above).",
)
@click.option(
    "--limit-request-field-size",
    type=click.IntRange(1),
    default=_DEFAULTS.max_field_size,
    show_default=True,
    help="Largest header field, name and value (431 above).",
)
@click.option(
    "--limit-request-fields",
    type=click.IntRange(1),
    default=_DEFAULTS.max_fields,
    show_default=True,
    help="Most header fields (431 above).",
)
@click.option(
    "--limit-request-head",
    type=click.IntRange(1),
    default=_DEFAULTS.max_head_size,
    show_default=True,
    help="Largest request head in bytes (431 above).",
)
@click.option(
    "--buffer-size",
    type=click.IntRange(1, 65535 + 4),
    default=4096,
    show_default=True,
    help="Largest uwsgi vars block (uWSGI's buffer-size).",
)
@click.option("--no-uvloop", is_flag=True, help="Use asyncio's own loop.")
@click.option(
    "--workers",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="0: one process; N: a master and N worker processes.",
)
@click.option(
    "--preload",
    is_flag=True,
    help="Import the app in the master before forking (default: each worker does).",
)
@click.option(
    "--max-requests",
    type=click.IntRange(0),
    default=0,
    help="Recycle a worker after this many requests (0: never).",
)
@click.option(
    "--max-requests-jitter",
    type=click.IntRange(0),
    default=0,
    help="Add up to this many to --max-requests, per worker.",
)
@click.option(
    "--harakiri",
    type=click.FloatRange(0),
    default=0.0,
    help="Kill a worker whose request runs longer than this many seconds.",
)
@click.option(
    "--reload-on-rss",
    type=click.IntRange(0),
    default=0,
    metavar="MB",
    help="Recycle a worker whose RSS grows past this many MiB.",
)
@click.option("--pidfile", metavar="PATH", help="Write the master's PID here.")
@click.option("--user", metavar="USER", help="Run the workers as this user (start as root).")
@click.option("--group", metavar="GROUP", help="Run the workers as this group.")
@click.option("--stats", metavar="HOST:PORT|PATH", help="uWSGI-compatible stats server.")
@click.option("--metrics", metavar="HOST:PORT", help="Prometheus metrics over HTTP.")
def serve(
    config_file: str | None,
    ini: str | None,
    app: str | None,
    http: tuple[str, ...],
    uwsgi: tuple[str, ...],
    uwsgi_socket_mode: int | None,
    uwsgi_allow_from: tuple[str, ...],
    chdir: str | None,
    threads: int,
    mount_prefix: str,
    access_log: str | None,
    error_log: str | None,
    keepalive_timeout: float,
    header_timeout: float,
    body_timeout: float,
    graceful_timeout: float,
    max_body_size: int,
    limit_request_line: int,
    limit_request_field_size: int,
    limit_request_fields: int,
    limit_request_head: int,
    buffer_size: int,
    no_uvloop: bool,
    workers: int,
    preload: bool,
    max_requests: int,
    max_requests_jitter: int,
    harakiri: float,
    reload_on_rss: int,
    pidfile: str | None,
    user: str | None,
    group: str | None,
    stats: str | None,
    metrics: str | None,
) -> None:
    """Serve the WSGI application APP (MODULE:CALLABLE): uWSGI's role.

    Settings come from -c gantry.toml (its [serve] table) or --ini uwsgi.ini,
    then from the flags given here, which win.
    """
    from gantry.appserver.serve import serve as run_serve
    from gantry.appserver.worker import AppLoadError

    ctx = click.get_current_context()
    try:
        config = _build_serve_config(ctx, config_file, ini)
        sys.exit(run_serve(config))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except AppLoadError as exc:
        click.echo(f"gantry: {exc}", err=True)
        sys.exit(3)


# click parameter name -> setting name, where they differ
_SETTING_OF_PARAM = {
    "uwsgi": "uwsgi_socket",
    "limit_request_line": "max_request_line",
    "limit_request_field_size": "max_field_size",
    "limit_request_fields": "max_fields",
    "limit_request_head": "max_head_size",
}


def _command_line_overrides(ctx: click.Context) -> dict[str, object]:
    """The settings the user typed (not click's defaults), by setting name."""
    overrides: dict[str, object] = {}
    for name, value in ctx.params.items():
        if name in ("config_file", "ini"):
            continue
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        if name == "no_uvloop":
            overrides["use_uvloop"] = not value
            continue
        if name == "uwsgi_allow_from":
            value = [part.strip() for item in value for part in item.split(",") if part.strip()]
        elif isinstance(value, tuple):
            value = list(value)
        overrides[_SETTING_OF_PARAM.get(name, name)] = value
    return overrides


def _load_settings(config_file: str | None, ini: str | None) -> ServeSettings:
    if config_file and ini:
        raise ConfigError("give either -c/--config or --ini, not both")
    if config_file:
        return load_toml(config_file)
    if ini:
        settings, warnings = load_uwsgi_ini(ini)
        for warning in warnings:
            click.echo(f"gantry: warning: {warning}", err=True)
        return settings
    return ServeSettings()


def _build_serve_config(
    ctx: click.Context, config_file: str | None, ini: str | None
) -> ServeConfig:
    settings = _load_settings(config_file, ini)
    config = to_serve_config(settings, _command_line_overrides(ctx))
    config.check()
    return config


@main.command()
@click.option("-c", "--config", "config_file", metavar="FILE", help="A gantry.toml.")
@click.option("--ini", metavar="FILE", help="The [uwsgi] section of a uWSGI ini file.")
def check(config_file: str | None, ini: str | None) -> None:
    """Validate a configuration file and print the effective configuration.

    A gantry.toml with [front], [[app]] or [stack] is checked as `gantry up` reads
    it; one with [serve] as `gantry serve -c` reads it; a file may hold both.
    """
    from gantry.config.stack import PROVISIONAL_RUNTIME_DIR, load_stack, render_stack

    try:
        if not config_file and not ini:
            raise ConfigError("give the file to check: -c gantry.toml or --ini uwsgi.ini")
        tables = _top_level_tables(config_file) if config_file else {"serve"}
        output = ""
        if tables & {"front", "app", "stack"}:
            assert config_file is not None
            output += render_stack(load_stack(config_file, PROVISIONAL_RUNTIME_DIR))
        if "serve" in tables or not output:
            config = to_serve_config(_load_settings(config_file, ini), {})
            config.check()
            output += ("\n" if output else "") + render_effective(config)
    except ConfigError as exc:
        click.echo(f"gantry check: {exc}", err=True)
        sys.exit(2)
    click.echo(output, nl=False)


def _top_level_tables(path: str) -> set[str]:
    import tomllib

    from gantry.config.file import read_config_text, syntax_error

    text = read_config_text(path)
    try:
        return set(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(path, text, exc) from None


@main.command()
@click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="gantry.toml with [front], [[app]] and [stack] tables (default: the built-in demo).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="With no -c: where the demo's front listens (default 0.0.0.0:8080).",
)
def up(config_file: str | None, listen: str | None) -> None:
    """Run the whole stack: the front server and every application pool, wired over uwsgi.

    SIGHUP re-reads the file and applies it with zero downtime (a bad file keeps the
    running configuration); SIGTERM stops gracefully; SIGINT fast. Exit status: 0
    when stopped, 2 for a configuration error, 3 when an application cannot be loaded.
    """
    from gantry.stack.run import run_up

    try:
        if config_file and listen:
            raise ConfigError("--listen is for the built-in demo; set [front] listen in the file")
        code = run_up(config_file, listen)
    except ConfigError as exc:
        click.echo(f"gantry up: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.command("_part", hidden=True)
@click.argument("state", type=click.Path(exists=True, dir_okay=False))
@click.argument("kind", type=click.Choice(["front", "app"]))
@click.argument("name")
def part(state: str, kind: str, name: str) -> None:
    """One part of `gantry up`, started by its supervisor (not for direct use)."""
    from gantry.stack.run import run_part

    sys.exit(run_part(state, kind, name))


@main.command()
@click.argument("address", metavar="HOST:PORT|PATH")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
def top(address: str, once: bool, interval: float) -> None:
    """Live view of a running server's workers, from its --stats socket (like uwsgitop)."""
    from gantry.stats.top import run_top

    sys.exit(run_top(address, once=once, interval=interval))


@main.command()
@click.option(
    "-c",
    "--config",
    "config_file",
    required=True,
    metavar="FILE",
    help="gantry.toml with a [front] table.",
)
def front(config_file: str) -> None:
    """Run the front server (nginx's role): virtual hosts, static files, reverse proxy."""
    from gantry.config.front import load_front_config
    from gantry.front.run import run_front

    try:
        config = load_front_config(config_file)
    except ConfigError as exc:
        click.echo(f"gantry front: {exc}", err=True)
        sys.exit(2)
    sys.exit(run_front(config, config_file=config_file))
