"""Configuration files for ``gantry serve``: gantry.toml's ``[serve]`` table, uWSGI ini files."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from gantry.config import (
    DEFAULT_UWSGI_ALLOW,
    ConfigError,
    ListenAddress,
    ServeConfig,
    parse_address,
    parse_networks,
)
from gantry.protocol.http1 import HTTPLimits

__all__ = [
    "LimitsSettings",
    "ServeSettings",
    "load_toml",
    "loads_toml",
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
    if isinstance(value, bool):
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

    max_request_line: int = Field(
        default=_LIMITS.max_request_line,
        ge=1,
        description="Longest request target in bytes (414 above).",
    )
    max_field_size: int = Field(
        default=_LIMITS.max_field_size,
        ge=1,
        description="Largest header field, name plus value, in bytes (431 above).",
    )
    max_fields: int = Field(
        default=_LIMITS.max_fields,
        ge=1,
        description="Most header fields in one request (431 above).",
    )
    max_head_size: int = Field(
        default=_LIMITS.max_head_size,
        ge=1,
        description="Largest request head (request line and fields) in bytes (431 above).",
    )
    max_body_size: int = Field(
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
    keepalive_timeout: float = Field(
        default=_SERVE.keepalive_timeout,
        gt=0,
        description="Seconds an idle keep-alive connection stays open.",
    )
    header_timeout: float = Field(
        default=_SERVE.header_timeout,
        gt=0,
        description="Seconds to receive a request head before 408.",
    )
    body_timeout: float = Field(
        default=_SERVE.body_timeout,
        gt=0,
        description="Seconds allowed between two reads of a body.",
    )
    graceful_timeout: float = Field(
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
    harakiri: float = Field(
        default=_SERVE.harakiri,
        ge=0,
        description="Kill a worker whose request runs longer than this many seconds (0: never).",
    )
    reload_on_rss: int = Field(
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
    buffer_size: int = Field(
        default=_SERVE.buffer_size,
        ge=1,
        le=65535 + 4,
        description="Largest uwsgi vars block in bytes (uWSGI's buffer-size).",
    )
    body_spool_threshold: int = Field(
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


# ---------------------------------------------------------------- error messages

_EXPECTED_BY_FIELD = {"uwsgi_socket_mode": _MODE_EXPECTED}


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _expected(annotation: object, metadata: list[Any]) -> str:
    """What a value of this annotated type looks like, in words ("an integer >= 1")."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        return _expected(inner, [*metadata, *extra])
    if origin in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _expected(members[0], metadata)
    if origin is list:
        item = _expected(typing.get_args(annotation)[0], [])
        return "a list of " + item.removeprefix("a ").removeprefix("an ") + "s"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a table"
    noun = {int: "an integer", float: "a number"}.get(annotation)  # type: ignore[call-overload]
    if noun is None:
        return "a value"
    low = next((m for m in metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m for m in metadata if isinstance(m, annotated_types.Le)), None)
    above = next((m for m in metadata if isinstance(m, annotated_types.Gt)), None)
    if low is not None and high is not None:
        return f"{noun} from {_number(low.ge)} to {_number(high.le)}"
    if low is not None:
        return f"{noun} >= {_number(low.ge)}"
    if above is not None:
        return f"{noun} > {_number(above.gt)}"
    return str(noun)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def error_lines(
    exc: ValidationError,
    where: Callable[[tuple[int | str, ...], str], str],
    root: str = "serve",
    root_model: type[BaseModel] | None = None,
) -> str:
    """One line per pydantic error: ``where(loc, key path)``, then what was expected.

    ``root`` is the key path of the validated table and ``root_model`` its model.
    """
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = root
        model: type[BaseModel] | None = root_model or ServeSettings
        annotation: object = model
        metadata: list[Any] = []
        name = ""
        siblings: list[str] = []
        for part in loc:
            if isinstance(part, int):
                path += f"[{part}]"
                args = [a for a in typing.get_args(annotation) if a is not type(None)]
                annotation, metadata = (args[0] if args else None), []
                continue
            path += f".{part}" if path else str(part)
            name = part
            model = annotation if isinstance(annotation, type) else None
            if model is not None and issubclass(model, BaseModel):
                siblings = list(model.model_fields)
                field = model.model_fields.get(part)
                annotation = field.annotation if field else None
                metadata = list(field.metadata) if field else []
            else:
                annotation, metadata = None, []
        prefix = where(loc, path)
        if error["type"] == "extra_forbidden":
            lines.append(f"{prefix}: unknown key{_suggest(name, siblings)}")
        elif error["type"] == "value_error":
            lines.append(f"{prefix}: {error['ctx']['error']}")
        else:
            expected = _EXPECTED_BY_FIELD.get(name) or _expected(annotation, metadata)
            lines.append(f"{prefix}: expected {expected}, got {_show(error['input'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------- gantry.toml


def read_config_text(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: expected UTF-8 text, got byte {data[exc.start]:#x} at offset {exc.start}"
        ) from None


_TOML_WHERE = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def syntax_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    match = _TOML_WHERE.match(str(exc))
    if match is None:
        return ConfigError(f"{source}: invalid TOML: {exc}")
    line = int(match["line"])
    lines = text.splitlines()
    shown = f"\n    {lines[line - 1]}" if 0 < line <= len(lines) else ""
    return ConfigError(
        f"{source}: line {line}, column {match['col']}: invalid TOML: {match['msg']}{shown}"
    )


def loads_toml(text: str, source: str = "<string>") -> ServeSettings:
    """Validate the ``[serve]`` table of TOML text; errors name ``source`` and the key path."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(source, text, exc) from None
    table = document.get("serve")
    if table is None:
        hint = _suggest("serve", list(document))
        raise ConfigError(f"{source}: serve: expected a [serve] table, found none{hint}")
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: serve: expected a [serve] table, got {_show(table)}")
    try:
        return ServeSettings.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(error_lines(exc, lambda loc, path: f"{source}: {path}")) from None


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


def _flag(loc: tuple[int | str, ...]) -> str:
    name = str(loc[1] if loc[0] == "limits" and len(loc) > 1 else loc[0])
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


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
        raise ConfigError(f"command line: unknown setting {key!r}{_suggest(key, known)}")


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
            error_lines(exc, lambda loc, path: f"command line: {_flag(loc)}")
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


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are all valid in a TOML basic string; TOML also forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def render_effective(config: ServeConfig) -> str:
    """The effective configuration as a gantry.toml ``[serve]`` table that loads back the same."""
    values: dict[str, object] = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config)
    }
    values["http"] = [str(a) for a in config.listen if a.kind == "http"]
    values["uwsgi_socket"] = [str(a) for a in config.listen if a.kind != "http"]
    values["uwsgi_allow_from"] = [str(n) for n in config.uwsgi_allow_from]
    lines = ["[serve]"]
    for name in ServeSettings.model_fields:
        value = values[name]
        if name == "limits" or value is None:
            continue
        if name == "uwsgi_socket_mode":
            lines.append(f"{name} = 0o{typing.cast(int, value):03o}")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    lines += ["", "[serve.limits]"]
    for name, value in dataclasses.asdict(config.limits).items():
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
