"""The whole stack in one gantry.toml: ``[front]``, ``[[app]]`` pools and ``[stack]``, one schema.

``gantry up`` validates the whole file before anything starts, then wires each
application pool to the front over a uwsgi unix socket in the runtime directory.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
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


#: where php-fpm is looked for when ``php_fpm`` is not given: these names on PATH (and in
#: the sbin folders, which a user's PATH often lacks), then Debian's own path
PHP_FPM_NAMES = ("php-fpm", "php-fpm8.4", "php-fpm8.3", "php-fpm8.2", "php-fpm8.1")
PHP_FPM_FALLBACK = "/usr/sbin/php-fpm8.2"
#: the [serve] keys a kind = "php" app takes (php-fpm runs it, not a gantry pool)
PHP_KEYS = frozenset(
    {"name", "kind", "root", "workers", "path", "php_fpm", "php_admin_value", "php_value",
     "user", "group", "graceful_timeout"}
)  # fmt: skip
#: the keys that only a kind = "php" app takes
PHP_ONLY = frozenset({"root", "path", "php_fpm", "php_admin_value", "php_value"})
# php.ini names and values go into php-fpm's pool file one a line: nothing that would
# end the line or the [name] of php_admin_value[name]
_PHP_INI_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

PhpValue = str | int | float | bool


def _php_ini_check(table: dict[str, PhpValue]) -> dict[str, PhpValue]:
    for key, value in table.items():
        if not _PHP_INI_NAME.match(key):
            raise ValueError(f"expected php.ini directive names (letters, digits, '_', '.', '-'), "
                             f"got {key!r}")  # fmt: skip
        if isinstance(value, str) and ("\n" in value or "\r" in value or "\0" in value):
            raise ValueError(f"{key}: a value on one line, got {value!r}")
    return table


def _mount_check(text: str) -> str:
    if not text.startswith("/") or not text.endswith("/") or "//" in text:
        raise ValueError(f"expected a URL path starting and ending with '/', got {text!r}")
    return text


def find_php_fpm(configured: str | None) -> str | None:
    """The php-fpm program: ``configured`` if executable, else the first of
    PHP_FPM_NAMES on PATH (and /usr/local/sbin, /usr/sbin), else PHP_FPM_FALLBACK."""
    if configured is not None:
        return configured if os.access(configured, os.X_OK) and os.path.isfile(configured) else None
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin"])
    for name in PHP_FPM_NAMES:
        found = shutil.which(name, path=path)
        if found is not None:
            return found
    return PHP_FPM_FALLBACK if os.access(PHP_FPM_FALLBACK, os.X_OK) else None


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
    kind: Literal["wsgi", "php"] = Field(
        default="wsgi",
        description="'wsgi': a gantry pool serving `module`; 'php': the real php-fpm, with "
        "a pool file gantry up writes (pm = static, `workers` children), serving the PHP "
        "files under `root` over FastCGI. A php app takes name, kind, root, path, workers, "
        "php_fpm, php_admin_value, php_value, user, group and graceful_timeout.",
    )
    module: Annotated[str, AfterValidator(app_check)] | None = Field(
        default=None,
        description="The WSGI application as MODULE:CALLABLE, e.g. 'mysite.wsgi:application'; "
        "`app`, as [serve] names it, is read as `module`. Required unless kind = 'php'.",
    )
    root: str | None = Field(
        default=None,
        description="kind = 'php': the document root, as nginx's root: the file of a URL is "
        "root + its path. Its .php files run in php-fpm, other files are served as static.",
    )
    path: Annotated[str, AfterValidator(_mount_check)] = Field(
        default="/",
        description="kind = 'php': the URL path the app answers under. gantry up adds to "
        "every server (and to the one it makes when there is none) a location at this path "
        "(static files, else the front controller path + 'index.php' with the query) and a "
        "regex location passing the existing .php files under it to php-fpm.",
    )
    php_fpm: str | None = Field(
        default=None,
        description="kind = 'php': the php-fpm program; default: php-fpm (or php-fpm8.x) on "
        "PATH, /usr/local/sbin or /usr/sbin, else /usr/sbin/php-fpm8.2.",
    )
    php_admin_value: Annotated[dict[str, PhpValue], AfterValidator(_php_ini_check)] = Field(
        default_factory=dict,
        description="kind = 'php': php.ini settings the scripts cannot change, as php-fpm's "
        "php_admin_value[NAME] (true/false are written on/off).",
    )
    php_value: Annotated[dict[str, PhpValue], AfterValidator(_php_ini_check)] = Field(
        default_factory=dict,
        description="kind = 'php': php.ini settings the scripts may change (ini_set), as "
        "php-fpm's php_value[NAME].",
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

    @model_validator(mode="after")
    def _kind_keys(self) -> AppSettings:
        given = self.model_fields_set
        if self.kind == "php":
            foreign = sorted(given - PHP_KEYS)
            if foreign:
                raise ValueError(
                    f"{', '.join(foreign)}: not a key of a kind = 'php' app (php-fpm runs it; "
                    f"it takes {', '.join(sorted(PHP_KEYS))})"
                )
            if self.root is None:
                raise ValueError("root: a kind = 'php' app needs its document root")
        else:
            php = sorted(given & PHP_ONLY)
            if php:
                raise ValueError(f"{', '.join(php)}: only a kind = 'php' app takes it")
            if self.module is None:
                raise ValueError("module: the WSGI application, as MODULE:CALLABLE, is required")
        return self

    @property
    def is_php(self) -> bool:
        """A php-fpm pool (kind = "php"), not a gantry one."""
        return self.kind == "php"

    def php_identity(self) -> tuple[str, str] | None:
        """(user, group) php-fpm's children run as: only when the stack runs as root
        (php-fpm refuses root children), ``user`` or nobody, ``group`` or that user's."""
        if os.geteuid() != 0:
            return None
        user = self.user or "nobody"
        group = self.group
        if group is None:
            try:
                group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
            except KeyError:
                group = user
        return user, group


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

    def php_key(self, name: str) -> str:
        """The listen address php-fpm's pool file names for php app ``name``: php-fpm
        takes the supervisor's socket for it (FPM_SOCKETS) and removes this file when it
        exits, so it is not the socket's own file, which must outlive php-fpm."""
        return str(Path(self.runtime_dir) / f"{name}.php-fpm-listen")

    def php_pool_file(self, name: str, generation: int | None = None) -> str:
        """The php-fpm configuration gantry up writes for php app ``name``, one a
        generation (a reload's new php-fpm reads its own); default: the plan's."""
        if generation is None:
            generation = self.generations.get(name, 1)
        return str(Path(self.runtime_dir) / f"{name}@{generation}.php-fpm.conf")

    def pools(self) -> list[AppSettings]:
        """The gantry pools (kind = "wsgi")."""
        return [app for app in self.settings.app if not app.is_php]

    def part_keys(self) -> list[tuple[str, str]]:
        """Every part as (kind, name): the front first, then the pools in file order
        (kind "app" for a gantry pool, "php" for a php-fpm)."""
        return [
            ("front", "front"),
            *(("php" if app.is_php else "app", app.name) for app in self.settings.app),
        ]

    def part_stats_is_ours(self, kind: str, name: str) -> bool:
        """Whether the part's stats socket is the runtime-dir default (else the user's)."""
        return kind == "front" or (kind == "app" and not self._app(name).stats)

    def part_json(self, kind: str, name: str) -> dict[str, Any]:
        """What one part runs on, to compare two plans: equal means the part is the same
        in effect (its stats socket, which follows its generation, is left out)."""
        # the parts inherit the supervisor's scheduling policy when they start
        common = {"scheduling": self.settings.stack.scheduling}
        if kind == "front":
            return {**common, "front": self.front_table()}
        app = self._app(name).model_dump(mode="json", exclude={"app"})
        if kind == "php":
            return {**common, "php": app, "socket": self.pool_socket(name),
                    "program": find_php_fpm(app["php_fpm"])}  # fmt: skip
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
        if kind == "php":
            # reached by the front only (0600: the front's workers run as the stack's user)
            return [(ListenAddress("fastcgi", path=self.pool_socket(name)), 0o600, 511)]
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
            if app.is_php:
                table["upstream"][app.name] = {
                    "protocol": "fastcgi",
                    "servers": [{"address": f"unix:{self.pool_socket(app.name)}"}],
                    "max_tries": 1,
                    "read_timeout": 60.0,
                }
                continue
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
        php_apps = [app for app in self.settings.app if app.is_php]
        if not table["server"] and self.settings.app:
            # No server block: each php app at its path, everything else to the first pool.
            locations = []
            pools = self.pools()
            if pools and all(app.path != "/" for app in php_apps):
                locations.append({"path": "/", "proxy": pools[0].name})
            table["server"] = [{"location": locations}]
        for server in table["server"]:
            for app in php_apps:
                # a server that routes to the app itself keeps its own locations
                if all(loc.get("proxy") != app.name for loc in server.get("location", [])):
                    server.setdefault("location", []).extend(php_locations(app))
        return table

    def php_fpm(self, name: str) -> str:
        """The php-fpm program of php app ``name`` (check() made sure there is one)."""
        app = self._app(name)
        found = find_php_fpm(app.php_fpm)
        if found is None:
            raise ConfigError(f"{self.source}: app {name!r}: php_fpm: no php-fpm program found")
        return found

    def front_config(self) -> FrontConfig:
        """The front's configuration, pools included."""
        return front_config_from_dict(self.front_table(), self.source)

    def pool_config(self, name: str) -> ServeConfig:
        """``gantry serve`` settings of pool ``name``, its stack socket added."""
        app = self._app(name)
        data = app.model_dump(exclude={"name", "module", "kind", *PHP_ONLY})
        data["app"] = app.module
        data["uwsgi_socket"] = [self.pool_socket(name), *app.uwsgi_socket]
        data["stats"] = app.stats or self.part_stats(name)
        settings = ServeSettings.model_validate(data, strict=False)
        return to_serve_config(settings, {})

    def to_json(self) -> dict[str, Any]:
        """What a part needs to rebuild this plan in its own process."""
        settings = self.settings.model_dump(mode="json", by_alias=True, exclude={"app"})
        # the keys each app was given only: an app is checked against its kind's keys
        settings["app"] = [
            app.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"app"})
            for app in self.settings.app
        ]
        return {
            "source": self.source,
            "runtime_dir": self.runtime_dir,
            "settings": settings,
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
            if app.is_php:
                self._check_php(i, app)
                continue
            try:
                self.pool_config(app.name).check()
            except ConfigError as exc:
                raise ConfigError(f"{self.source}: app[{i}]: {exc}") from None

    def _check_php(self, index: int, app: AppSettings) -> None:
        where = f"{self.source}: app[{index}]"
        if find_php_fpm(app.php_fpm) is None:
            if app.php_fpm is not None:
                raise ConfigError(f"{where}.php_fpm: {app.php_fpm!r} is not an executable file")
            raise ConfigError(
                f"{where}.php_fpm: no php-fpm found (looked for {', '.join(PHP_FPM_NAMES)} on "
                f"PATH, /usr/local/sbin and /usr/sbin, and {PHP_FPM_FALLBACK}); install php-fpm "
                "(Debian: php8.2-fpm) or give its path"
            )
        if app.root is None or not Path(app.root).is_dir():
            raise ConfigError(f"{where}.root: no directory {app.root!r}")


def php_locations(app: AppSettings) -> list[dict[str, Any]]:
    """The front's locations of php app ``app`` at its path: the path itself and what is
    no file under root go to its front controller (index.php), other files are static;
    the existing .php files under its path go to php-fpm (try_files $uri =404: php-fpm
    is never asked for a file that is not there)."""
    mount = app.path
    pattern = r"\.php$" if mount == "/" else "^" + re.escape(mount) + r".*\.php$"
    controller = f"{mount}index.php$is_args$args"
    return [
        # the path itself is the front controller's, as nginx's `index index.php` makes it
        {"modifier": "=", "path": mount, "root": app.root, "try_files": [controller]},
        {"path": mount, "root": app.root, "try_files": ["$uri", controller]},
        {"modifier": "~", "path": pattern, "root": app.root, "try_files": ["$uri", "=404"],
         "proxy": app.name},
    ]  # fmt: skip


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
        if app.is_php:
            sections.append(_render_php(running, app, derived_front))
            continue
        table = app.model_dump(mode="json", exclude=set(PHP_ONLY))
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


def _render_php(running: StackPlan, app: AppSettings, front: dict[str, Any]) -> str:
    """A kind = "php" app: its own keys, and what gantry up derives in comments."""
    table = {key: value for key, value in app.model_dump(mode="json").items() if key in PHP_KEYS}
    upstream = front["upstream"][app.name]
    notes = [
        f"php app {app.name!r}: php-fpm ({find_php_fpm(app.php_fpm) or 'not found'}) with the "
        f"pool file {running.php_pool_file(app.name)}, reached at upstream {app.name!r}:",
        *("  " + line
          for line in _toml({"front": {"upstream": {app.name: upstream}}}).splitlines()),
        "and these locations in each server that has none with proxy = "
        f"{json.dumps(app.name)}:",
        *("  " + line for line in _toml({"location": php_locations(app)}).splitlines()),
    ]  # fmt: skip
    return _comment(notes + _unset(table), after="\n") + _toml({"app": [table]})


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
