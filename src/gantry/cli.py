"""The ``gantry`` command: parses flags, builds the config, starts a role."""

from __future__ import annotations

import os
import sys
import time
import typing
from collections.abc import Callable
from typing import Any

import annotated_types
import click
from click.core import ParameterSource
from pydantic.fields import FieldInfo

from gantry import __version__
from gantry.config import ConfigError, ServeConfig
from gantry.config.file import (
    LimitsSettings,
    ServeSettings,
    flag_name,
    load_toml,
    render_effective,
    to_serve_config,
)
from gantry.config.ini import load_uwsgi_ini
from gantry.config.units import Unit

#: the file `gantry up` reads when given none
DEFAULT_STACK_FILE = "./gantry.toml"


@click.group()
@click.version_option(__version__, prog_name="gantry")
def main() -> None:
    """Gantry: the front server and the application server of a Python web stack."""


# ---------------------------------------------------------------- gantry serve's flags
#
# Every setting of [serve] (and [serve.limits]) is a flag, built from the schema: its
# name (config.file.flag_name), its type and bounds, its default and its help (the
# field's description). What the schema cannot say about a command line is here.

#: placeholders shown in --help
_METAVARS = {
    "http": "HOST:PORT",
    "uwsgi_socket": "HOST:PORT|PATH",
    "uwsgi_socket_mode": "MODE",
    "uwsgi_allow_from": "CIDR[,CIDR]",
    "mount_prefix": "PATH",
    "access_log": "PATH|-",
    "error_log": "PATH|-",
    "pidfile": "PATH",
    "stats": "HOST:PORT|PATH",
    "metrics": "HOST:PORT",
}
#: flags that click checks itself, before the settings are built
_CLICK_TYPES: dict[str, click.ParamType[Any]] = {
    "chdir": click.Path(exists=True, file_okay=False),
}


def _click_type(field: FieldInfo) -> tuple[click.ParamType[Any], str | None]:
    """The click type of a setting, and its metavar when the type alone is not clear."""
    unit = next((m for m in field.metadata if isinstance(m, Unit)), None)
    if unit is not None:
        # "10m", "30s": the schema converts, and its error names the flag
        return click.STRING, "SIZE" if unit.kind == "size" else "TIME"
    low = _bound(field, annotated_types.Ge, "ge")
    high = _bound(field, annotated_types.Le, "le")
    above = _bound(field, annotated_types.Gt, "gt")
    if field.annotation is int:
        return click.IntRange(_int(low), _int(high)), None
    if field.annotation is float:
        if above is not None:
            return click.FloatRange(above, high, min_open=True), None
        return click.FloatRange(low, high), None
    return click.STRING, None


def _bound(field: FieldInfo, kind: type, attribute: str) -> float | None:
    found = next((m for m in field.metadata if isinstance(m, kind)), None)
    return None if found is None else float(getattr(found, attribute))


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _serve_option(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    """The click option of one setting."""
    flag = flag_name(name)
    help_text = field.description or ""
    if field.annotation is bool:
        if field.default:
            # a switch that is on unless the flag turns it off (--no-uvloop)
            help_text = f"Turn off {name} ({help_text[:1].lower()}{help_text[1:]})"
            return click.option(flag, name, flag_value=False, default=True, help=help_text)
        return click.option(flag, name, is_flag=True, default=False, help=help_text)
    if typing.get_origin(field.annotation) is list:
        return click.option(flag, name, multiple=True, metavar=_METAVARS.get(name), help=help_text)
    param_type, metavar = _click_type(field)
    default = None if field.default_factory is not None else field.default
    return click.option(
        flag,
        name,
        type=_CLICK_TYPES.get(name, param_type),
        default=default,
        show_default=default is not None and default != "",
        metavar=_METAVARS.get(name, metavar),
        help=help_text,
    )


def _serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """Decorate ``command`` with one option per setting, in the schema's order."""
    fields = [
        (name, field)
        for name, field in ServeSettings.model_fields.items()
        if name not in ("app", "limits")
    ]
    fields += list(LimitsSettings.model_fields.items())
    for name, field in reversed(fields):
        command = _serve_option(name, field)(command)
    return command


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
@_serve_options
def serve(config_file: str | None, ini: str | None, app: str | None, **settings: object) -> None:
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


def _command_line_overrides(ctx: click.Context) -> dict[str, object]:
    """The settings the user typed (not click's defaults), by setting name."""
    overrides: dict[str, object] = {}
    for name, value in ctx.params.items():
        if name in ("config_file", "ini"):
            continue
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        if name == "uwsgi_allow_from":
            value = [part.strip() for item in value for part in item.split(",") if part.strip()]
        elif isinstance(value, tuple):
            value = list(value)
        overrides[name] = value
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
    _ini_names_the_app(config, ini, "; or give APP on the command line")
    config.check()
    return config


def _ini_names_the_app(config: ServeConfig, ini: str | None, hint: str = "") -> None:
    """An ini file that names no application: say so in the ini's terms, not as ``app``."""
    if ini and not config.app:
        raise ConfigError(
            f"{ini}: uwsgi.module: expected module = MODULE:CALLABLE or wsgi-file = FILE.py, "
            f"found neither{hint}"
        )


@main.command()
@click.option("-c", "--config", "config_file", metavar="FILE", help="A gantry.toml.")
@click.option("--ini", metavar="FILE", help="The [uwsgi] section of a uWSGI ini file.")
@click.option(
    "--no-import",
    is_flag=True,
    help="Do not import the applications (importing runs their modules' top-level code).",
)
def check(config_file: str | None, ini: str | None, no_import: bool) -> None:
    """Validate a configuration file and print the effective configuration.

    A gantry.toml with [front], [[app]] or [stack] is checked as `gantry up` reads
    it; one with [serve] as `gantry serve -c` reads it; a file may hold both. Each
    application is imported in a child process, as start-up would. Exit status: 0
    when valid, 2 for a configuration error, 3 when an application cannot be imported.
    """
    from gantry.config.preflight import blocklist_warnings, static_warnings
    from gantry.config.stack import PROVISIONAL_RUNTIME_DIR, load_stack, render_stack

    # (where it is named, MODULE:CALLABLE, chdir) of every application to import
    apps: list[tuple[str, str, str | None]] = []
    warnings: list[str] = []
    try:
        if not config_file and not ini:
            raise ConfigError("give the file to check: -c gantry.toml or --ini uwsgi.ini")
        tables = _top_level_tables(config_file) if config_file else {"serve"}
        output = ""
        if tables & {"front", "app", "stack"}:
            assert config_file is not None
            plan = load_stack(config_file, PROVISIONAL_RUNTIME_DIR)
            output += render_stack(plan)
            warnings += static_warnings(plan.settings.front, config_file)
            warnings += blocklist_warnings(plan.settings.front, config_file)
            apps += [
                (f"{config_file}: app[{i}].module", app.module, app.chdir)
                for i, app in enumerate(plan.settings.app)
                if app.module is not None
            ]
        if "serve" in tables or not output:
            config = to_serve_config(_load_settings(config_file, ini), {})
            _ini_names_the_app(config, ini)
            config.check()
            output += ("\n" if output else "") + render_effective(config)
            where = f"{config_file}: serve.app" if config_file else f"{ini}: uwsgi.module"
            apps.append((where, config.app, config.chdir))
    except ConfigError as exc:
        click.echo(f"gantry check: {exc}", err=True)
        sys.exit(2)
    click.echo(output, nl=False)
    for warning in warnings:
        click.echo(f"gantry check: warning: {warning}", err=True)
    if not no_import and not _apps_import(apps):
        sys.exit(3)


def _apps_import(apps: list[tuple[str, str, str | None]]) -> bool:
    """Import each app in a child process; say which ones failed, with their tracebacks."""
    from gantry.config.preflight import import_app

    ok = True
    for where, spec, chdir in apps:
        result = import_app(spec, chdir)
        if not result.ok:
            ok = False
            click.echo(f"gantry check: {where}: cannot import {spec!r}:", err=True)
            click.echo(result.output, err=True)
    return ok


def _top_level_tables(path: str) -> set[str]:
    from gantry.config.document import read_document

    return set(read_document(path))


@main.command()
@click.argument("app", required=False, metavar="[MODULE:APP]")
@click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="gantry.toml with [front], [[app]] and [stack] tables (default: ./gantry.toml "
    "when there is one, else MODULE:APP behind the front, else the built-in demo).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="With no file: where the front listens (default 0.0.0.0:8080).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With MODULE:APP: the app's worker processes.",
)
def up(app: str | None, config_file: str | None, listen: str | None, workers: int) -> None:
    """Run the whole stack: the front server and every application pool, wired over uwsgi.

    `gantry up` reads ./gantry.toml when there is one (and says so), else serves the
    built-in demo; `gantry up MODULE:APP` serves that app behind the front, no file needed.
    SIGHUP re-reads the file and applies it with zero downtime (a bad file keeps the
    running configuration); SIGTERM stops gracefully; SIGINT fast. Exit status: 0
    when stopped, 2 for a configuration error, 3 when an application cannot be loaded.
    """
    from gantry.stack.run import run_up

    try:
        if config_file and (listen or app):
            raise ConfigError(
                "--listen and MODULE:APP are for running without a file; "
                "set [front] listen and [[app]] in the file"
            )
        if config_file is None and app is None and os.path.isfile(DEFAULT_STACK_FILE):
            config_file = DEFAULT_STACK_FILE
            if listen:
                raise ConfigError(
                    f"--listen is for running without a file, and {DEFAULT_STACK_FILE} is "
                    "here: set [front] listen in it, or name an app (gantry up MODULE:APP)"
                )
            click.echo(f"gantry up: using {DEFAULT_STACK_FILE}", err=True)
        code = run_up(config_file, listen, app, workers)
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
        code = run_front(
            config, config_file=config_file, stats=config.stats, metrics=config.metrics
        )
    except ConfigError as exc:  # the file, or a socket that cannot be bound
        click.echo(f"gantry front: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


# ---------------------------------------------------------------- gantry ctl
#
# Each subcommand sends one request to the front's control socket and prints its
# answer: a new one is a function calling _ctl_ask and a registration on the front
# (front/control.py).


class _CtlTarget:
    """Where `gantry ctl` sends its request, from its own options."""

    def __init__(self, socket_path: str | None, config_file: str | None, timeout: float) -> None:
        self.socket_path = socket_path
        self.config_file = config_file
        self.timeout = timeout


def _ctl_ask(target: _CtlTarget, command: str, **arguments: Any) -> dict[str, Any]:
    """The answer to one command; exit 2 with the reason when there is none, or when it
    is an error."""
    from gantry.control.client import ControlUnavailable, ask, socket_in_config
    from gantry.control.protocol import encode_request

    try:
        if target.socket_path and target.config_file:
            raise ConfigError("give the socket (-s) or the config file (-c), not both")
        if target.config_file:
            path = socket_in_config(target.config_file)
        elif target.socket_path:
            path = target.socket_path
        else:
            raise ConfigError(
                "give the control socket: -s /run/gantry/front.ctl, or -c gantry.toml "
                "(its [front] control or [stack] control)"
            )
        answer = ask(path, encode_request(command, **arguments), target.timeout)
    except (ConfigError, ControlUnavailable) as exc:
        click.echo(f"gantry ctl: {exc}", err=True)
        sys.exit(2)
    if not answer["ok"]:
        click.echo(f"gantry ctl: {answer.get('error', 'the command failed')}", err=True)
        sys.exit(2)
    return answer


@main.group()
@click.option("-s", "--socket", "socket_path", metavar="PATH", help="The front's control socket.")
@click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="A gantry.toml: the socket is its [front] control (or [stack] control).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=130.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
@click.pass_context
def ctl(
    ctx: click.Context, socket_path: str | None, config_file: str | None, timeout: float
) -> None:
    """Control a running front through its control socket ([front] control).

    Exit status: 0 done, 1 nothing matched (purge), 2 no answer (no socket, nobody
    on it, no control in the file) or an error answer.
    """
    ctx.obj = _CtlTarget(socket_path, config_file, timeout)


@ctl.command("purge")
@click.argument("url", required=False)
@click.option("--prefix", metavar="PREFIX", help="Every entry under this URL (or key) prefix.")
@click.option("--tag", metavar="TAG", help="Every entry tagged so (Surrogate-Key, Cache-Tag).")
@click.option("--soft", is_flag=True, help="Mark them stale (use_stale may serve them).")
@click.option("--zone", metavar="NAME", help="Only this cache zone (default: every zone).")
@click.pass_obj
def ctl_purge(
    target: _CtlTarget,
    url: str | None,
    prefix: str | None,
    tag: str | None,
    soft: bool,
    zone: str | None,
) -> None:
    """Purge cached entries: URL (http://host/path, or a key as the zone builds it; one
    ending in '*' is a prefix), --prefix PREFIX or --tag TAG. Every front worker
    sees it at once."""
    if sum(value is not None for value in (url, prefix, tag)) != 1:
        raise click.UsageError("give one of URL, --prefix PREFIX or --tag TAG")
    answer = _ctl_ask(
        target, "purge", url=url, prefix=prefix, tag=tag, soft=soft or None, zone=zone
    )
    zones = answer.get("zones") or {}
    count = int(answer.get("purged", 0))
    what = url or (f"prefix {prefix}" if prefix else f"tag {tag}")
    where = ", ".join(f"{name} {n}" for name, n in zones.items())
    if not count:
        click.echo(f"nothing matched {what} (zones: {', '.join(zones) or 'none'})")
        sys.exit(1)
    verb = "marked stale" if soft else "purged"
    click.echo(f"{verb} {count} {'entry' if count == 1 else 'entries'} ({where})")


@ctl.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_obj
def ctl_status(target: _CtlTarget, as_json: bool) -> None:
    """The front's master, generation, workers and cache zones."""
    import json

    answer = _ctl_ask(target, "status")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    workers = answer.get("workers", [])
    click.echo(
        f"front master {answer.get('pid')}, generation {answer.get('generation')}, "
        f"{len(workers)} workers"
    )
    for worker in workers:
        state = (
            "stopping" if worker.get("stopping") else "ready" if worker.get("ready") else "starting"
        )
        click.echo(
            f"  worker {worker.get('worker')}: pid {worker.get('pid')}, generation "
            f"{worker.get('generation')}, {state}, {worker.get('requests')} requests"
        )
    for name, zone in (answer.get("zones") or {}).items():
        click.echo(
            f"zone {name}: {zone.get('entries')} entries, {zone.get('bytes')} bytes "
            f"({zone.get('path')})"
        )
    if answer.get("reload_error"):
        click.echo(f"last reload failed: {answer['reload_error']}")


def _ban_target(text: str) -> str:
    """An address or CIDR as the front keeps it; exit 2 with the reason when it is not."""
    from gantry.front.blocklist import normalise_target

    try:
        return normalise_target(text)
    except ValueError as exc:
        click.echo(f"gantry ctl: {exc}", err=True)
        sys.exit(2)


@ctl.command("block")
@click.argument("target", metavar="ADDR|CIDR")
@click.option("--for", "duration", metavar="DURATION", help="How long (30s, 10m, 1h); no end.")
@click.option("--reason", metavar="TEXT", default="", help="Why (kept and listed).")
@click.pass_obj
def ctl_block(target_: _CtlTarget, target: str, duration: str | None, reason: str) -> None:
    """Refuse an address or network (IPv4 or IPv6) in every worker within a second; the
    ban is kept across restarts."""
    from gantry.config.units import parse_duration

    address = _ban_target(target)
    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            click.echo(f"gantry ctl: --for: {exc}", err=True)
            sys.exit(2)
        if seconds <= 0:
            click.echo(
                f"gantry ctl: --for: expected a positive duration, got {duration!r}", err=True
            )
            sys.exit(2)
    answer = _ctl_ask(target_, "block", addr=address, seconds=seconds, reason=reason or None)
    until = answer.get("until")
    when = "no end" if until is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
    click.echo(f"blocked {answer.get('target')} (until {when})")
    if str(answer.get("shared", "")).startswith("failed"):
        click.echo(f"gantry ctl: not shared through Redis ({answer['shared']})", err=True)


@ctl.command("unblock")
@click.argument("target", metavar="ADDR|CIDR")
@click.pass_obj
def ctl_unblock(target_: _CtlTarget, target: str) -> None:
    """Lift the ban of an address or network. Exit 1 when there was none."""
    answer = _ctl_ask(target_, "unblock", addr=_ban_target(target))
    if not answer.get("removed"):
        click.echo(f"{answer.get('target')} was not blocked")
        sys.exit(1)
    click.echo(f"unblocked {answer.get('target')}")
    if str(answer.get("shared", "")).startswith("failed"):
        click.echo(f"gantry ctl: not lifted in Redis ({answer['shared']})", err=True)


@ctl.command("blocked")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_obj
def ctl_blocked(target_: _CtlTarget, as_json: bool) -> None:
    """The bans running now: expiry, reason, source (ctl, autoban rule N, file) and
    refused requests; then the refused requests of blocklist-file entries."""
    import json

    answer = _ctl_ask(target_, "blocked")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    bans = answer.get("bans") or []
    click.echo(f"{len(bans)} {'ban' if len(bans) == 1 else 'bans'} ({answer.get('path')})")
    for ban in bans:
        until = ban.get("until")
        when = "no end" if until is None else f"{max(0, until - time.time()):.0f}s left"
        reason = f", {ban['reason']}" if ban.get("reason") else ""
        hits = "-" if ban.get("hits") is None else ban["hits"]  # Redis's: counted elsewhere
        click.echo(f"  {ban.get('target')}: {when}, {ban.get('source')}, {hits} hits{reason}")
    for entry, count in (answer.get("file_hits") or {}).items():
        click.echo(f"  {entry} (blocklist file): {count} hits")
    if str(answer.get("redis", "")).startswith("failed"):
        click.echo(f"gantry ctl: Redis's bans not listed ({answer['redis']})", err=True)
