"""A ``kind = "php"`` app of ``gantry up``: the real php-fpm, with a pool file written here.

php-fpm runs in the foreground (``-F``) as a part of the stack, exec'd by the
supervisor straight after its fork, so its master's PID is the part's. The unix
socket the front reaches it on is bound by the supervisor and handed down as fd 3
through php-fpm's own ``FPM_SOCKETS`` (what php-fpm itself uses across its SIGUSR2
re-exec): the listen queue outlives a php-fpm that dies, so requests wait for the
restarted one instead of being refused. php-fpm removes its listen address's file
when it exits, so the pool file names another path (``StackPlan.php_key``) as the key
of the inherited socket, never the socket's own file.

php-fpm's signals are not gantry's: SIGUSR2 reloads (gantry's SIGHUP), SIGQUIT stops
gracefully (gantry's SIGTERM), SIGTERM and SIGINT stop at once (gantry's SIGINT).
"""

from __future__ import annotations

import json
import signal
from typing import Any

from gantry.config.stack import AppSettings, PhpValue, StackPlan
from gantry.protocol.fastcgi import (
    PARAMS,
    STDIN,
    STDOUT,
    FastCGIProtocolError,
    RecordDecoder,
    begin_request,
    encode_pairs,
    parse_cgi_head,
    stream_records,
)

__all__ = [
    "PHP_SIGNALS",
    "parse_status",
    "php_argv",
    "php_env",
    "php_pool_text",
    "status_request",
    "write_php_pool",
]

#: the signal the supervisor means -> the one php-fpm's master takes for it
PHP_SIGNALS = {
    signal.SIGHUP: signal.SIGUSR2,
    signal.SIGTERM: signal.SIGQUIT,
    signal.SIGINT: signal.SIGTERM,
}
#: the fd the listening socket is handed down on
SOCKET_FD = 3
#: the status page php-fpm answers over FastCGI (read by the stack's stats)
STATUS_PATH = "/gantry-fpm-status"


def _ini(value: PhpValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def php_pool_text(plan: StackPlan, app: AppSettings) -> str:
    """php-fpm's configuration for ``app``: one static pool on the inherited socket."""
    # children finish their request on a reload or graceful stop, within the
    # app's graceful_timeout, then php-fpm kills them
    control = max(1, int(app.graceful_timeout))
    lines = [
        "; written by gantry up for app " + app.name + "; rewritten on every start",
        "[global]",
        "error_log = /proc/self/fd/2",
        "log_limit = 8192",
        "daemonize = no",
        f"process_control_timeout = {control}s",
        # the master sends READY=1 to the supervisor's readiness socket
        "systemd_interval = 0",
        "",
        f"[{app.name}]",
        f"listen = {plan.php_key(app.name)}",
        "pm = static",
        f"pm.max_children = {app.workers}",
        f"pm.status_path = {STATUS_PATH}",
        f"chdir = {app.root}",
        "catch_workers_output = yes",
        "decorate_workers_output = no",
        # the scripts see the request's params, not the supervisor's environment
        "clear_env = yes",
    ]
    identity = app.php_identity()
    if identity is not None:
        lines += [f"user = {identity[0]}", f"group = {identity[1]}"]
    lines += [f"php_admin_value[{k}] = {_ini(v)}" for k, v in app.php_admin_value.items()]
    lines += [f"php_value[{k}] = {_ini(v)}" for k, v in app.php_value.items()]
    return "\n".join(lines) + "\n"


def write_php_pool(plan: StackPlan, app: AppSettings) -> str:
    """Write the pool file of ``app``'s current generation; its path."""
    path = plan.php_pool_file(app.name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(php_pool_text(plan, app))
    return path


def php_argv(plan: StackPlan, app: AppSettings, pool_file: str) -> list[str]:
    """The php-fpm command line: foreground, its pool file, the runtime dir as prefix."""
    argv = [plan.php_fpm(app.name), "-F", "-y", pool_file, "-p", plan.runtime_dir]
    identity = app.php_identity()
    if identity is not None and identity[0] == "root":
        argv.append("-R")  # user = "root" asked for it
    return argv


def php_env(plan: StackPlan, app: AppSettings, base: dict[str, str]) -> dict[str, str]:
    """The environment of php-fpm's master: the socket on SOCKET_FD as its own."""
    env = {key: value for key, value in base.items() if not key.startswith("LISTEN_")}
    env["FPM_SOCKETS"] = f"{plan.php_key(app.name)}={SOCKET_FD}"
    return env


def status_request() -> bytes:
    """A FastCGI request for php-fpm's status page (pm.status_path), as JSON."""
    params = [
        (b"SCRIPT_NAME", STATUS_PATH.encode()),
        (b"SCRIPT_FILENAME", STATUS_PATH.encode()),
        (b"REQUEST_URI", STATUS_PATH.encode() + b"?json"),
        (b"QUERY_STRING", b"json"),
        (b"REQUEST_METHOD", b"GET"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    ]
    return b"".join(
        [
            begin_request(1, False),
            stream_records(PARAMS, 1, encode_pairs(params)),
            stream_records(PARAMS, 1, b""),
            stream_records(STDIN, 1, b""),
        ]
    )


def parse_status(data: bytes) -> dict[str, Any]:
    """php-fpm's status document out of its FastCGI answer; ValueError if it is none."""
    try:
        records = RecordDecoder().feed(data)
        stdout = b"".join(r.content for r in records if r.type == STDOUT)
        head = parse_cgi_head(stdout)
    except FastCGIProtocolError as exc:
        raise ValueError(exc.reason) from None
    if head is None or head.status != 200:
        raise ValueError("no status page")
    document = json.loads(head.rest)
    if not isinstance(document, dict):
        raise ValueError("not a status document")
    return document
