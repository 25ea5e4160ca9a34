"""The whole stack in one gantry.toml: ``[front]``, ``[[app]]`` pools and ``[stack]``, one schema.

``gantry up`` validates the whole file before anything starts, then wires each
application pool to the front over a uwsgi unix socket in the runtime directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gantry.config import ConfigError, ListenAddress, ServeConfig, parse_address
from gantry.config.document import dumps_document, loads_document, read_config_text
from gantry.config.errors import error_lines
from gantry.config.file import (
    ServeSettings,
    app_check,
    optional_address_check,
    to_serve_config,
)
from gantry.config.front import (
    ControlPath,
    FrontSettings,
    ServerSettings,
    front_config_from_dict,
    split_listen,
)
from gantry.config.front_model import FrontConfig
from gantry.config.units import Duration

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
        description="The WSGI application as MODULE:CALLABLE, e.g. 'mysite.wsgi:application'; "
        "`app`, as [serve] names it, is read as `module`."
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Worker processes of the pool, under its own master; 0 (one process in "
        "[serve]) means 1 here, as a pool always has a master and a worker.",
    )

    @model_validator(mode="before")
    @classmethod
    def _as_serve_writes_it(cls, data: Any) -> Any:
        # a [serve] table pasted under [[app]] (what `gantry check --ini` prints) says
        # `app` for the application and `workers = 0` for a single process
        if not isinstance(data, dict):
            return data
        if "app" in data:
            if "module" in data:
                raise ValueError("give the application as 'module' or as 'app', not both")
            data = {("module" if key == "app" else key): value for key, value in data.items()}
        if type(data.get("workers")) is int and data["workers"] == 0:
            data = {**data, "workers": 1}
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
    graceful_timeout: Duration = Field(
        default=30.0, gt=0, description="Seconds the parts get to stop on SIGTERM."
    )
    pidfile: str | None = Field(default=None, description="Write the supervisor's PID here.")
    control: ControlPath | None = Field(
        default=None,
        description="Control socket of the stack's front, for `gantry ctl` (as [front] "
        "control, which may be given instead); the supervisor holds it across reloads.",
    )
    scheduling: Literal["batch", "normal"] = Field(
        default="batch",
        description="CPU scheduling policy of every part (Linux). 'batch' (SCHED_BATCH): a part "
        "woken by another does not preempt it, so the front hands a whole batch of requests "
        "to a pool before the pool runs, and back (+7% to +28% req/s with front and pool on "
        "one core); 'normal': the default policy.",
    )


class StackSettings(BaseModel):
    """A whole gantry.toml as ``gantry up`` reads it."""

    model_config = ConfigDict(extra="forbid", strict=True)

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
    #: the generation each part runs in (1 unless a reload replaced it): two generations
    #: of a part run side by side for a moment, each with its own stats socket
    generations: dict[str, int] = field(default_factory=dict)

    def pool_socket(self, name: str) -> str:
        """The uwsgi unix socket the front reaches pool ``name`` on."""
        return str(Path(self.runtime_dir) / f"{name}.sock")

    def part_stats(self, part: str) -> str:
        """The stats socket of one part (``front`` or a pool), read by the stack's stats."""
        generation = self.generations.get(part, 1)
        # '@' is never in a pool's name: no generation's file is another part's
        suffix = "" if generation == 1 else f"@{generation}"
        return str(Path(self.runtime_dir) / f"{part}{suffix}.stats")

    def part_keys(self) -> list[tuple[str, str]]:
        """Every part as (kind, name): the front first, then the pools in file order."""
        return [("front", "front"), *(("app", app.name) for app in self.settings.app)]

    def part_stats_is_ours(self, kind: str, name: str) -> bool:
        """Whether the part's stats socket is the runtime-dir default (else the user's)."""
        return kind == "front" or not self._app(name).stats

    def part_json(self, kind: str, name: str) -> dict[str, Any]:
        """What one part runs on, to compare two plans: equal means the part is the same
        in effect (its stats socket, which follows its generation, is left out)."""
        # the parts inherit the supervisor's scheduling policy when they start
        common = {"scheduling": self.settings.stack.scheduling}
        if kind == "front":
            return {**common, "front": self.front_table()}
        app = self._app(name).model_dump(mode="json", exclude={"app"})
        return {**common, "app": app, "socket": self.pool_socket(name)}

    def part_listen(self, kind: str, name: str) -> list[tuple[ListenAddress, int | None, int]]:
        """Every socket the part listens on, as (address, unix file mode, backlog); the
        supervisor binds them all and hands them down, so they outlive the part."""
        if kind == "front":
            where = f"{self.source}: front.listen"
            sockets: list[tuple[ListenAddress, int | None, int]]
            # "0.0.0.0:443 ssl": the socket is the address; the front reads the flags
            sockets = [(parse_address(split_listen(spec)[0], "http", where), None, 2048)
                       for spec in self.settings.front.listen]  # fmt: skip
            control = self.control_path()
            if control is not None:
                # bound by the supervisor like the front's listen sockets: it outlives
                # each generation of the front, and a new one answers on the same file
                sockets.append((ListenAddress("control", path=control), 0o600, 64))
            return sockets
        config = self.pool_config(name)
        own = self.pool_socket(name)
        return [
            (address, 0o600 if address.path == own else config.uwsgi_socket_mode, config.backlog)
            for address in config.listen
        ]

    def control_path(self) -> str | None:
        """The front's control socket ([stack] control, else [front] control)."""
        return self.settings.stack.control or self.settings.front.control

    def _app(self, name: str) -> AppSettings:
        return next(a for a in self.settings.app if a.name == name)

    def front_table(self) -> dict[str, Any]:
        """The [front] table with an upstream for each pool."""
        table = self.settings.front.model_dump(mode="json", by_alias=True)
        if self.settings.stack.control is not None:
            table["control"] = self.settings.stack.control
        if table["access_log"] is None:
            table["access_log"] = "stderr"  # the stack's log shows what it serves
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
        app = self._app(name)
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
                mode="json", by_alias=True, exclude={"app": {"__all__": {"app"}}}
            ),
            "generations": self.generations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackPlan:
        """The plan ``to_json`` wrote."""
        settings = StackSettings.model_validate(data["settings"], strict=False)
        return cls(data["source"], settings, data["runtime_dir"], data.get("generations", {}))

    def check(self) -> None:
        """Refuse what cannot work together, naming file and key."""
        seen: dict[str, int] = {}
        for i, app in enumerate(self.settings.app):
            where = f"{self.source}: app[{i}].name"
            if app.name == "front":
                raise ConfigError(f"{where}: 'front' names the front server's part; choose another")
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
        control = self.settings.stack.control
        if control is not None and self.settings.front.control not in (None, control):
            raise ConfigError(
                f"{self.source}: stack.control: [front] control names another socket "
                f"({self.settings.front.control!r}); give one of the two"
            )
        for key in ("stats", "metrics"):
            spec = getattr(self.settings.stack, key)
            if spec:
                parse_address(spec, key, f"{self.source}: stack.{key}")
            if getattr(self.settings.front, key):
                raise ConfigError(
                    f"{self.source}: front.{key}: under gantry up the front's {key} are "
                    f"served by [stack] {key}"
                )
        self.front_config()  # location proxies, access rules, upstream names
        for i, app in enumerate(self.settings.app):
            try:
                self.pool_config(app.name).check()
            except ConfigError as exc:
                raise ConfigError(f"{self.source}: app[{i}]: {exc}") from None


def loads_stack(text: str, source: str, runtime_dir: str) -> StackPlan:
    """Validate TOML text as a whole stack; errors name ``source`` and the key path."""
    return plan_from_dict(loads_document(text, source), source, runtime_dir)


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

    return app_plan(runtime_dir, "gantry.demo:app", listen, name="demo", static=str(STATIC_DIR))


def app_plan(
    runtime_dir: str,
    module: str,
    listen: str = "0.0.0.0:8080",
    *,
    workers: int = 1,
    name: str = "app",
    chdir: str | None = None,
    static: str | None = None,
) -> StackPlan:
    """``gantry up MODULE:APP``: one app behind the front, no file (``static`` is served
    at /static/ when given). ``chdir`` is where the app is imported from."""
    locations: list[dict[str, Any]] = [{"path": "/", "proxy": name}]
    if static is not None:
        locations.insert(0, {"path": "/static/", "alias": f"{static}/"})
    app: dict[str, Any] = {"name": name, "module": module, "workers": workers}
    if chdir is not None:
        app["chdir"] = chdir
    document = {
        "front": {
            "listen": [listen],
            "workers": 1,
            "server": [{"default": True, "location": locations}],
        },
        "app": [app],
    }
    source = "(built-in demo)" if module == "gantry.demo:app" else f"(gantry up {module})"
    return plan_from_dict(document, source, runtime_dir)


def render_stack(plan: StackPlan) -> str:
    """The effective stack as TOML the user could have written: every default filled in,
    loading back to the same output; what ``gantry up`` derives is shown in comments."""
    configured = plan.settings.stack.runtime_dir
    if plan.runtime_dir != PROVISIONAL_RUNTIME_DIR:
        runtime_dir = plan.runtime_dir
    else:
        runtime_dir = configured or "<runtime_dir>"
    # the plan as gantry up will run it: for the comments only, never for the tables
    running = StackPlan(plan.source, plan.settings, runtime_dir)
    derived_front = running.front_table()

    stack = plan.settings.stack.model_dump(mode="json")
    stack_notes = _unset(stack)
    if configured is None:
        where = " (<runtime_dir> below)" if runtime_dir == "<runtime_dir>" else ""
        stack_notes.append(
            f"runtime_dir: gantry up makes a new private temporary directory{where} "
            "and removes it on exit"
        )
    header = _comment(
        [
            "The effective stack: every key with its value. Comments name the keys left",
            "unset and show what gantry up derives from the file (not settings to copy).",
        ],
        after="\n",
    )
    sections = [header + _toml({"stack": stack}) + _comment(stack_notes, before="\n")]

    front = plan.settings.front.model_dump(mode="json", by_alias=True)
    if not front["server"] and derived_front["server"]:
        # No server block: gantry up sends everything to the first pool. Written out
        # with its defaults, it loads back to the same stack.
        server = ServerSettings.model_validate(derived_front["server"][0])
        front["server"] = [server.model_dump(mode="json", by_alias=True)]
    front_notes = [
        f"the front's stats socket (read by the stack's stats): {running.part_stats('front')}",
        *_unset(front),
    ]
    sections.append(_comment(front_notes, after="\n") + _toml({"front": front}))

    for app in plan.settings.app:
        table = app.model_dump(mode="json")
        table.pop("app", None)  # [serve]'s app is the pool's module
        if app.uwsgi_socket_mode is not None:
            # in octal, as [serve] prints it: 0o660 reads as a mode, 432 does not
            table["uwsgi_socket_mode"] = f"0o{app.uwsgi_socket_mode:03o}"
        upstream = derived_front["upstream"][app.name]
        socket = running.pool_socket(app.name)
        notes = [
            f"app {app.name!r} is reached at upstream {app.name!r} = "
            f"{upstream['servers'][0]['address']}, kept connections:",
            *(
                "  " + line
                for line in _toml({"front": {"upstream": {app.name: upstream}}}).splitlines()
            ),
            f"the pool listens there first: uwsgi_socket = [{json.dumps(socket)}, ...]",
        ]
        if app.stats is None:
            notes.append(
                f"its stats socket (read by the stack's stats): {running.part_stats(app.name)}"
            )
        notes += _unset(table)
        sections.append(_comment(notes, after="\n") + _toml({"app": [table]}))
    return "\n\n".join(sections) + "\n"


def _toml(document: dict[str, Any]) -> str:
    return dumps_document(document).rstrip("\n")


def _unset(table: dict[str, Any]) -> list[str]:
    """A line naming the keys of ``table`` left unset (TOML has no null), if any."""
    names = [key for key, value in table.items() if value is None]
    return [f"not set: {', '.join(names)}"] if names else []


def _comment(lines: list[str], before: str = "", after: str = "") -> str:
    if not lines:
        return ""
    return before + "\n".join(f"# {line}".rstrip() for line in lines) + after
