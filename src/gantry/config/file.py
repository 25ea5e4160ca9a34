"""Configuration files for ``gantry serve``: gantry.toml's ``[serve]`` table, uWSGI ini files."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from gantry.config import (
    DEFAULT_UWSGI_ALLOW,
    ConfigError,
    ListenAddress,
    ServeConfig,
    parse_address,
    parse_networks,
)
from gantry.config.document import (
    dumps_document,
    loads_document,
    read_config_text,
    syntax_error,
)
from gantry.config.errors import error_lines, show, suggest
from gantry.config.units import Duration, Mebibytes, Size
from gantry.protocol.http1 import HTTPLimits

__all__ = [
    "LimitsSettings",
    "read_config_text",
    "syntax_error",
    "ServeSettings",
    "load_toml",
    "loads_toml",
    "flag_name",
    "render_effective",
    "to_serve_config",
]

# Defaults come from the runtime objects so the file schema cannot drift from them.
_SERVE = ServeConfig()
_LIMITS = HTTPLimits()


def _message_of(exc: ConfigError) -> str:
    # The helpers in gantry.config prefix the setting name; the caller here adds its own key path.
    return str(exc).partition(": ")[2]


def _address_check(kind: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            parse_address(text, kind, "")
        except ConfigError as exc:
            raise ValueError(_message_of(exc)) from None
        return text

    return check


def _network_check(text: str) -> str:
    try:
        parse_networks([text], "")
    except ConfigError as exc:
        raise ValueError(_message_of(exc)) from None
    return text


def app_check(text: str) -> str:
    module, sep, name = text.partition(":")
    if text and not (sep and module and name):
        raise ValueError(
            f"expected MODULE:CALLABLE such as 'mysite.wsgi:application', got {text!r}"
        )
    return text


def _prefix_check(text: str) -> str:
    if text and not text.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {text!r}")
    return text


def optional_address_check(kind: str) -> Callable[[str | None], str | None]:
    check = _address_check(kind)
    return lambda text: None if text is None else check(text)


_MODE_EXPECTED = 'a file mode from 0o000 to 0o777 (write 0o660 or "660")'


def _file_mode(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected {_MODE_EXPECTED}, got {value!r}")
    if isinstance(value, str):
        digits = value.strip().lower().removeprefix("0o")
        if not digits or any(c not in "01234567" for c in digits):
            raise ValueError(f"expected {_MODE_EXPECTED}, got {value!r}")
        value = int(digits, 8)
    if isinstance(value, int) and not 0 <= value <= 0o777:
        raise ValueError(f"expected {_MODE_EXPECTED}, got {value!r}")
    return value


HTTPAddress = Annotated[str, AfterValidator(_address_check("http"))]
UwsgiAddress = Annotated[str, AfterValidator(_address_check("uwsgi"))]
Network = Annotated[str, AfterValidator(_network_check)]


class LimitsSettings(BaseModel):
    """``[serve.limits]``: request size limits, checked while reading."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_request_line: Size = Field(
        default=_LIMITS.max_request_line,
        ge=1,
        description="Longest request target in bytes (414 above).",
    )
    max_field_size: Size = Field(
        default=_LIMITS.max_field_size,
        ge=1,
        description="Largest header field, name plus value, in bytes (431 above).",
    )
    max_fields: int = Field(
        default=_LIMITS.max_fields,
        ge=1,
        description="Most header fields in one request (431 above).",
    )
    max_head_size: Size = Field(
        default=_LIMITS.max_head_size,
        ge=1,
        description="Largest request head (request line and fields) in bytes (431 above).",
    )
    max_body_size: Size = Field(
        default=_LIMITS.max_body_size,
        ge=0,
        description="Largest request body in bytes (413 above).",
    )


class ServeSettings(BaseModel):
    """``[serve]``: every setting of ``gantry serve``, as written in a configuration file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    app: Annotated[str, AfterValidator(app_check)] = Field(
        default=_SERVE.app,
        description="The WSGI application as MODULE:CALLABLE, e.g. 'mysite.wsgi:application'.",
    )
    http: list[HTTPAddress] = Field(
        default_factory=list,
        description="HTTP/1.1 sockets: 'HOST:PORT', '[V6]:PORT', ':PORT' or 'unix:PATH'.",
    )
    uwsgi_socket: list[UwsgiAddress] = Field(
        default_factory=list,
        description="uwsgi-protocol sockets: 'HOST:PORT' or a unix socket path.",
    )
    uwsgi_socket_mode: Annotated[int | None, BeforeValidator(_file_mode)] = Field(
        default=_SERVE.uwsgi_socket_mode,
        description='File mode of unix uwsgi sockets: 0o660 or the octal string "660".',
    )
    uwsgi_allow_from: list[Network] = Field(
        default_factory=lambda: list(DEFAULT_UWSGI_ALLOW),
        description="Peers (addresses or CIDR blocks) allowed on TCP uwsgi sockets.",
    )
    chdir: str | None = Field(
        default=_SERVE.chdir, description="Directory to change to before importing the app."
    )
    threads: int = Field(
        default=_SERVE.threads,
        ge=0,
        description="0: run the app on the event-loop thread; N: on a pool of N threads.",
    )
    mount_prefix: Annotated[str, AfterValidator(_prefix_check)] = Field(
        default=_SERVE.mount_prefix, description="URL prefix moved from PATH_INFO to SCRIPT_NAME."
    )
    access_log: str | None = Field(
        default=_SERVE.access_log,
        description="Combined-format access log: a file path or '-' for stdout; unset: none.",
    )
    error_log: str | None = Field(
        default=_SERVE.error_log, description="Error log: a file path or '-'; unset: stderr."
    )
    keepalive_timeout: Duration = Field(
        default=_SERVE.keepalive_timeout,
        gt=0,
        description="Seconds an idle keep-alive connection stays open.",
    )
    header_timeout: Duration = Field(
        default=_SERVE.header_timeout,
        gt=0,
        description="Seconds to receive a request head before 408.",
    )
    body_timeout: Duration = Field(
        default=_SERVE.body_timeout,
        gt=0,
        description="Seconds allowed between two reads of a body.",
    )
    send_timeout: Duration = Field(
        default=_SERVE.send_timeout,
        gt=0,
        description="Seconds a client may go without reading any of its answer before the "
        "connection is closed (nginx's send_timeout).",
    )
    graceful_timeout: Duration = Field(
        default=_SERVE.graceful_timeout,
        gt=0,
        description="Seconds in-flight requests get to finish on a graceful stop or reload.",
    )
    workers: int = Field(
        default=_SERVE.workers,
        ge=0,
        description="0: one process, no master; N: a master and N worker processes.",
    )
    preload: bool = Field(
        default=_SERVE.preload,
        description="Import the app in the master before forking (default: each worker does).",
    )
    max_requests: int = Field(
        default=_SERVE.max_requests,
        ge=0,
        description="Recycle a worker after this many requests (0: never).",
    )
    max_requests_jitter: int = Field(
        default=_SERVE.max_requests_jitter,
        ge=0,
        description="Add up to this many to max_requests, per worker, so they do not all recycle "
        "at once.",
    )
    harakiri: Duration = Field(
        default=_SERVE.harakiri,
        ge=0,
        description="Kill a worker whose request runs longer than this many seconds (0: never).",
    )
    reload_on_rss: Mebibytes = Field(
        default=_SERVE.reload_on_rss,
        ge=0,
        description="Recycle a worker whose RSS grows past this many MiB (0: never).",
    )
    pidfile: str | None = Field(default=_SERVE.pidfile, description="Write the master's PID here.")
    user: str | None = Field(
        default=_SERVE.user,
        description="User (name or uid) the workers run as; the master binds as root first.",
    )
    group: str | None = Field(
        default=_SERVE.group,
        description="Group (name or gid) the workers run as; unset: the user's own group.",
    )
    stats: Annotated[str | None, AfterValidator(optional_address_check("stats"))] = Field(
        default=_SERVE.stats,
        description="uWSGI-compatible stats server: 'HOST:PORT' or a unix socket path.",
    )
    metrics: Annotated[str | None, AfterValidator(optional_address_check("metrics"))] = Field(
        default=_SERVE.metrics, description="Prometheus metrics over HTTP: 'HOST:PORT'."
    )
    buffer_size: Size = Field(
        default=_SERVE.buffer_size,
        ge=1,
        le=65535 + 4,
        description="Largest uwsgi vars block in bytes (uWSGI's buffer-size).",
    )
    body_spool_threshold: Size = Field(
        default=_SERVE.body_spool_threshold,
        ge=0,
        description="Request bodies larger than this many bytes are spooled to a temporary file.",
    )
    use_uvloop: bool = Field(
        default=_SERVE.use_uvloop, description="Run the event loop on uvloop when it is installed."
    )
    backlog: int = Field(
        default=_SERVE.backlog, ge=1, description="Listen queue length of every socket."
    )
    limits: LimitsSettings = Field(
        default_factory=lambda: LimitsSettings(),
        description="Request size limits ([serve.limits]).",
    )


# ---------------------------------------------------------------- gantry.toml


def loads_toml(text: str, source: str = "<string>") -> ServeSettings:
    """Validate the ``[serve]`` table of TOML text; errors name ``source`` and the key path."""
    document = loads_document(text, source)
    table = document.get("serve")
    if table is None:
        hint = suggest("serve", list(document))
        raise ConfigError(f"{source}: serve: expected a [serve] table, found none{hint}")
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: serve: expected a [serve] table, got {show(table)}")
    try:
        return ServeSettings.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(
            error_lines(exc, lambda loc, path: f"{source}: {path}", "serve", ServeSettings)
        ) from None


def load_toml(path: str) -> ServeSettings:
    """Read a gantry.toml and validate its ``[serve]`` table."""
    return loads_toml(read_config_text(path), path)


# ---------------------------------------------------------------- to ServeConfig and back

#: command-line flags whose name is not ``--`` plus the setting's name
_FLAG_NAMES = {
    "max_request_line": "--limit-request-line",
    "max_field_size": "--limit-request-field-size",
    "max_fields": "--limit-request-fields",
    "max_head_size": "--limit-request-head",
    "max_body_size": "--max-body-size",
    "use_uvloop": "--no-uvloop",
}


def flag_name(setting: str) -> str:
    """The ``gantry serve`` flag of a setting (a [serve] or [serve.limits] key)."""
    return _FLAG_NAMES.get(setting, "--" + setting.replace("_", "-"))


def _flag(loc: tuple[int | str, ...]) -> str:
    return flag_name(str(loc[1] if loc[0] == "limits" and len(loc) > 1 else loc[0]))


def _apply_override(data: dict[str, Any], key: str, value: object) -> None:
    limit_names = [f.name for f in dataclasses.fields(HTTPLimits)]
    if key == "listen":
        addresses = typing.cast(list[ListenAddress], value)
        data["http"] = [str(a) for a in addresses if a.kind == "http"]
        data["uwsgi_socket"] = [str(a) for a in addresses if a.kind != "http"]
    elif key == "limits":
        data["limits"] = (
            dataclasses.asdict(typing.cast(HTTPLimits, value))
            if dataclasses.is_dataclass(value)
            else dict(typing.cast(Mapping[str, Any], value))
        )
    elif key in limit_names:
        data["limits"][key] = value
    elif key == "uwsgi_allow_from":
        data[key] = [str(n) for n in typing.cast(list[object], value)]
    elif key in ServeSettings.model_fields:
        data[key] = list(value) if isinstance(value, tuple) else value
    else:
        known = [*ServeSettings.model_fields, "listen", *limit_names]
        raise ConfigError(f"command line: unknown setting {key!r}{suggest(key, known)}")


def to_serve_config(settings: ServeSettings, overrides: Mapping[str, object]) -> ServeConfig:
    """Apply command-line values (by ServeConfig field name; None = not given) over the file's,
    then build the ServeConfig."""
    data = settings.model_dump()
    for key, value in overrides.items():
        if value is not None:
            _apply_override(data, key, value)
    try:
        merged = ServeSettings.model_validate(data, strict=False)
    except ValidationError as exc:
        raise ConfigError(
            error_lines(
                exc, lambda loc, path: f"command line: {_flag(loc)}", "serve", ServeSettings
            )
        ) from None
    listen = [parse_address(a, "http", "serve.http") for a in merged.http]
    listen += [parse_address(a, "uwsgi", "serve.uwsgi_socket") for a in merged.uwsgi_socket]
    rest = merged.model_dump(exclude={"http", "uwsgi_socket", "uwsgi_allow_from", "limits"})
    return ServeConfig(
        listen=listen,
        uwsgi_allow_from=parse_networks(merged.uwsgi_allow_from, "serve.uwsgi_allow_from"),
        limits=HTTPLimits(**merged.limits.model_dump()),
        **rest,
    )


def render_effective(config: ServeConfig) -> str:
    """The effective configuration as a gantry.toml ``[serve]`` table that loads back the same."""
    values: dict[str, object] = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config)
    }
    values["http"] = [str(a) for a in config.listen if a.kind == "http"]
    values["uwsgi_socket"] = [str(a) for a in config.listen if a.kind != "http"]
    values["uwsgi_allow_from"] = [str(n) for n in config.uwsgi_allow_from]
    if config.uwsgi_socket_mode is not None:
        # a file mode reads best in octal, which TOML writers do not produce for integers
        values["uwsgi_socket_mode"] = f"0o{config.uwsgi_socket_mode:03o}"
    table = {name: values[name] for name in ServeSettings.model_fields if name != "limits"}
    table["limits"] = dataclasses.asdict(config.limits)
    return dumps_document({"serve": table})
