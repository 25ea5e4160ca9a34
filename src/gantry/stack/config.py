"""The whole stack in one gantry.toml: ``[front]``, ``[[app]]`` pools and ``[stack]``, one schema.

``gantry up`` validates the whole file before anything starts, then wires each
application pool to the front over a uwsgi unix socket in the runtime directory.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gantry.config import ConfigError, ServeConfig, parse_address
from gantry.config_file import (
    ServeSettings,
    app_check,
    error_lines,
    optional_address_check,
    read_config_text,
    syntax_error,
    to_serve_config,
)
from gantry.front.config import FrontSettings, front_config_from_dict
from gantry.front.model import FrontConfig

__all__ = ["AppSettings", "StackPlan", "StackSettings", "StackTable", "demo_plan", "load_stack"]

#: where the sockets are said to be before the runtime directory exists (validation, check)
PROVISIONAL_RUNTIME_DIR = "/tmp/gantry-up-RUNTIME"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _name_check(text: str) -> str:
    if not _NAME.match(text):
        raise ValueError(
            "expected a name of letters, digits, '.', '_' or '-' (it names the pool's "
            f"socket file and its upstream), got {text!r}"
        )
    return text


class AppSettings(ServeSettings):
    """``[[app]]``: one application pool: a master and its workers serving one WSGI app.

    Every ``[serve]`` key applies (threads, harakiri, max_requests, limits, ...);
    ``gantry up`` adds the uwsgi socket the front reaches the pool on, and an upstream
    of the pool's name that a location's ``proxy`` names.
    """

    name: Annotated[str, AfterValidator(_name_check)] = Field(
        description="The pool's name; a location's `proxy` names it."
    )
    module: Annotated[str, AfterValidator(app_check)] = Field(
        description="The WSGI application as MODULE:CALLABLE, e.g. 'mysite.wsgi:application'."
    )
    workers: int = Field(
        default=1, ge=1, description="Worker processes of the pool, under its own master."
    )

    @model_validator(mode="before")
    @classmethod
    def _module_not_app(cls, data: Any) -> Any:
        if isinstance(data, dict) and "app" in data:
            raise ValueError("an [[app]] names its application with 'module', not 'app'")
        return data


class StackTable(BaseModel):
    """``[stack]``: the supervisor of ``gantry up``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    runtime_dir: str | None = Field(
        default=None,
        description="Directory for the pools' uwsgi sockets and the stack's state; "
        "default: a new private temporary directory, removed on exit.",
    )
    stats: Annotated[str | None, AfterValidator(optional_address_check("stats"))] = Field(
        default=None,
        description="Stats server for the whole stack (front and every pool), in uWSGI's "
        "format: 'HOST:PORT' or a unix socket path; `gantry top` reads it.",
    )
    metrics: Annotated[str | None, AfterValidator(optional_address_check("metrics"))] = Field(
        default=None, description="Prometheus metrics of the whole stack over HTTP: 'HOST:PORT'."
    )
    graceful_timeout: float = Field(
        default=30.0, gt=0, description="Seconds the parts get to stop on SIGTERM."
    )
    pidfile: str | None = Field(default=None, description="Write the supervisor's PID here.")


class StackSettings(BaseModel):
    """A whole gantry.toml as ``gantry up`` reads it."""

    model_config = ConfigDict(extra="forbid")

    front: FrontSettings = Field(
        default_factory=lambda: FrontSettings.model_validate({}),
        description="The front server (nginx's role).",
    )
    app: list[AppSettings] = Field(
        default_factory=list, description="Application pools (uWSGI's role), one table each."
    )
    stack: StackTable = Field(
        default_factory=lambda: StackTable(), description="The supervisor of `gantry up`."
    )
    serve: dict[str, Any] | None = Field(
        default=None, description="Read by `gantry serve -c`; `gantry up` ignores it."
    )


@dataclass
class StackPlan:
    """A validated stack and where its parts meet: built once, before anything starts."""

    source: str
    settings: StackSettings
    runtime_dir: str

    def pool_socket(self, name: str) -> str:
        """The uwsgi unix socket the front reaches pool ``name`` on."""
        return str(Path(self.runtime_dir) / f"{name}.sock")

    def part_stats(self, part: str) -> str:
        """The stats socket of one part (``front`` or a pool), read by the stack's stats."""
        return str(Path(self.runtime_dir) / f"{part}.stats")

    def front_table(self) -> dict[str, Any]:
        """The [front] table with an upstream for each pool."""
        table = self.settings.front.model_dump(mode="json")
        for app in self.settings.app:
            table["upstream"][app.name] = {
                "protocol": "uwsgi",
                "servers": [{"address": f"unix:{self.pool_socket(app.name)}"}],
                "max_tries": 1,
                "read_timeout": max(60.0, app.harakiri + 5.0),
                # kept connections: no connect/accept/close per request; dropped by the
                # front well before the pool would close them idle
                "gantry_keepalive": True,
                "keepalive": 1024,
                "keepalive_timeout": app.keepalive_timeout / 2,
            }
        if not table["server"] and self.settings.app:
            # No server block: everything goes to the first pool.
            first = self.settings.app[0].name
            table["server"] = [{"location": [{"path": "/", "proxy": first}]}]
        return table

    def front_config(self) -> FrontConfig:
        """The front's configuration, pools included."""
        return front_config_from_dict(self.front_table(), self.source)

    def pool_config(self, name: str) -> ServeConfig:
        """``gantry serve`` settings of pool ``name``, its stack socket added."""
        app = next(a for a in self.settings.app if a.name == name)
        data = app.model_dump(exclude={"name", "module"})
        data["app"] = app.module
        data["uwsgi_socket"] = [self.pool_socket(name), *app.uwsgi_socket]
        data["stats"] = app.stats or self.part_stats(name)
        settings = ServeSettings.model_validate(data, strict=False)
        return to_serve_config(settings, {})

    def to_json(self) -> dict[str, Any]:
        """What a part needs to rebuild this plan in its own process."""
        return {
            "source": self.source,
            "runtime_dir": self.runtime_dir,
            "settings": self.settings.model_dump(
                mode="json", exclude={"app": {"__all__": {"app"}}}
            ),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackPlan:
        """The plan ``to_json`` wrote."""
        settings = StackSettings.model_validate(data["settings"], strict=False)
        return cls(data["source"], settings, data["runtime_dir"])

    def check(self) -> None:
        """Refuse what cannot work together, naming file and key."""
        seen: dict[str, int] = {}
        for i, app in enumerate(self.settings.app):
            where = f"{self.source}: app[{i}].name"
            if app.name in seen:
                first = seen[app.name]
                raise ConfigError(f"{where}: {app.name!r} is already the name of app[{first}]")
            if app.name in self.settings.front.upstream:
                raise ConfigError(
                    f"{where}: {app.name!r} is also the name of [front.upstream.{app.name}]; "
                    "a location's proxy must name one or the other"
                )
            seen[app.name] = i
            if app.chdir is not None and not Path(app.chdir).is_dir():
                raise ConfigError(f"{self.source}: app[{i}].chdir: no directory {app.chdir!r}")
        for key in ("stats", "metrics"):
            spec = getattr(self.settings.stack, key)
            if spec:
                parse_address(spec, key, f"{self.source}: stack.{key}")
        self.front_config()  # location proxies, access rules, upstream names
        for i, app in enumerate(self.settings.app):
            try:
                self.pool_config(app.name).check()
            except ConfigError as exc:
                raise ConfigError(f"{self.source}: app[{i}]: {exc}") from None


def loads_stack(text: str, source: str, runtime_dir: str) -> StackPlan:
    """Validate TOML text as a whole stack; errors name ``source`` and the key path."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(source, text, exc) from None
    return plan_from_dict(document, source, runtime_dir)


def plan_from_dict(document: dict[str, Any], source: str, runtime_dir: str) -> StackPlan:
    """Validate a parsed gantry.toml as a whole stack."""
    try:
        settings = StackSettings.model_validate(document)
    except ValidationError as exc:
        where = lambda loc, path: f"{source}: {path}"  # noqa: E731
        raise ConfigError(error_lines(exc, where, root="", root_model=StackSettings)) from None
    plan = StackPlan(source, settings, runtime_dir)
    plan.check()
    return plan


def load_stack(path: str, runtime_dir: str) -> StackPlan:
    """Read and validate a gantry.toml for ``gantry up``."""
    return loads_stack(read_config_text(path), path, runtime_dir)


def demo_plan(runtime_dir: str, listen: str = "0.0.0.0:8080") -> StackPlan:
    """The stack ``gantry up`` runs with no file: the demo Flask app and its static folder."""
    from gantry.demo import STATIC_DIR

    document = {
        "front": {
            "listen": [listen],
            "workers": 1,
            "server": [
                {
                    "default": True,
                    "location": [
                        {"path": "/static/", "alias": f"{STATIC_DIR}/"},
                        {"path": "/", "proxy": "demo"},
                    ],
                }
            ],
        },
        "app": [{"name": "demo", "module": "gantry.demo:app", "workers": 1}],
    }
    return plan_from_dict(document, "(built-in demo)", runtime_dir)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def render_stack(plan: StackPlan) -> str:
    """The effective stack as TOML: the front with the pools' upstreams, each pool's settings."""
    import tomli_w

    apps = []
    for app in plan.settings.app:
        table = app.model_dump(mode="json")
        table["uwsgi_socket"] = [plan.pool_socket(app.name), *app.uwsgi_socket]
        table.pop("app", None)
        apps.append(table)
    document = {
        "stack": plan.settings.stack.model_dump(mode="json"),
        "front": plan.front_table(),
        "app": apps,
    }
    return tomli_w.dumps(_without_none(document))
