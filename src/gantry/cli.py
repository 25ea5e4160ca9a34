"""The ``gantry`` command: parses flags, builds the config, starts a role."""

from __future__ import annotations

import sys

import click

from gantry import __version__
from gantry.config import ConfigError, ServeConfig, parse_address, parse_networks
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
@click.argument("app")
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
@click.option("--stats", metavar="HOST:PORT|PATH", help="uWSGI-compatible stats server.")
@click.option("--metrics", metavar="HOST:PORT", help="Prometheus metrics over HTTP.")
def serve(
    app: str,
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
    stats: str | None,
    metrics: str | None,
) -> None:
    """Serve the WSGI application APP (MODULE:CALLABLE): uWSGI's role."""
    from gantry.appserver.worker import AppLoadError
    from gantry.appserver.worker import serve as run_serve

    try:
        listen = [parse_address(a, "http", "--http") for a in http]
        listen += [parse_address(a, "uwsgi", "--uwsgi-socket") for a in uwsgi]
        config = ServeConfig(
            app=app,
            listen=listen,
            chdir=chdir,
            threads=threads,
            mount_prefix=mount_prefix,
            uwsgi_socket_mode=uwsgi_socket_mode,
            buffer_size=buffer_size,
            limits=HTTPLimits(
                max_request_line=limit_request_line,
                max_field_size=limit_request_field_size,
                max_fields=limit_request_fields,
                max_head_size=limit_request_head,
                max_body_size=max_body_size,
            ),
            keepalive_timeout=keepalive_timeout,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            graceful_timeout=graceful_timeout,
            access_log=access_log,
            error_log=error_log,
            use_uvloop=not no_uvloop,
            workers=workers,
            preload=preload,
            max_requests=max_requests,
            max_requests_jitter=max_requests_jitter,
            harakiri=harakiri,
            reload_on_rss=reload_on_rss,
            pidfile=pidfile,
            stats=stats,
            metrics=metrics,
        )
        if uwsgi_allow_from:
            config.uwsgi_allow_from = parse_networks(list(uwsgi_allow_from), "--uwsgi-allow-from")
        sys.exit(run_serve(config))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except AppLoadError as exc:
        click.echo(f"gantry: {exc}", err=True)
        sys.exit(3)


@main.command()
@click.argument("address", metavar="HOST:PORT|PATH")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
def top(address: str, once: bool, interval: float) -> None:
    """Live view of a running server's workers, from its --stats socket (like uwsgitop)."""
    from gantry.stats.top import run_top

    sys.exit(run_top(address, once=once, interval=interval))
