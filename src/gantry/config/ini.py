"""Reading an existing uWSGI ini's [uwsgi] section into Gantry's settings, with warnings."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from pydantic import ValidationError

from gantry.config import ConfigError
from gantry.config.document import read_config_text
from gantry.config.errors import error_lines, suggest
from gantry.config.file import ServeSettings

__all__ = ["load_uwsgi_ini"]

# ---------------------------------------------------------------- uWSGI ini

# Options that make no difference under Gantry: accepted without a word.
_INI_SILENT = frozenset({"die-on-term", "vacuum"})
# Options whose value carries over unchanged to one setting.
_INI_PLAIN = {
    "chdir": "chdir",
    "processes": "workers",
    "workers": "workers",
    "threads": "threads",
    "harakiri": "harakiri",
    "max-requests": "max_requests",
    "pidfile": "pidfile",
    "uid": "user",
    "gid": "group",
    "buffer-size": "buffer_size",
    "reload-on-rss": "reload_on_rss",
    "logto": "error_log",
    "listen": "backlog",
    "post-buffering": "body_spool_threshold",
}
# Options read by the loop below rather than copied.
_INI_READ = frozenset(
    {
        "http-socket", "http", "socket", "uwsgi-socket", "chmod-socket", "stats",
        "module", "wsgi", "wsgi-file", "file", "callable", "master", "lazy-apps",
        "limit-post",
    }
)  # fmt: skip
# uWSGI options with no equivalent, and what to do instead where there is something.
_INI_NO_EQUIVALENT = {
    "env": "set the variable in the environment gantry starts in (systemd's Environment=)",
    "virtualenv": "run gantry with the virtualenv's own python (VENV/bin/gantry)",
    "venv": "run gantry with the virtualenv's own python (VENV/bin/gantry)",
    "home": "run gantry with the virtualenv's own python (VENV/bin/gantry)",
    "pythonpath": "set PYTHONPATH in the environment gantry starts in, or use chdir",
    "uid": "start gantry as that user (systemd's User=)",
    "gid": "start gantry as that group (systemd's Group=)",
}
# Other uWSGI options people write, that Gantry does not have: a warning, never a
# "did you mean" (which is kept for misspellings of the options Gantry reads).
_INI_KNOWN_UWSGI = frozenset(
    {
        "enable-threads", "single-interpreter", "plugins", "plugin", "cheaper",
        "cheaper-algo", "cheaper-initial", "cheaper-step", "spooler", "spooler-processes",
        "mule", "mules", "cron", "touch-reload", "static-map", "offload-threads", "logto2",
        "log-format", "log-date", "disable-logging", "log-maxsize", "daemonize",
        "thunder-lock", "need-app", "strict", "auto-procname", "procname-prefix",
        "memory-report", "socket-timeout", "http-timeout", "harakiri-verbose",
        "py-autoreload", "max-worker-lifetime", "reload-mercy", "worker-reload-mercy",
        "buffer", "protocol", "shared-socket", "ini", "emperor", "stats-http", "honour-stdin",
        "reload-on-as", "reload-on-vsz", "lazy", "master-fifo", "max-requests-delta",
        "evil-reload-on-rss", "socket-protocol", "chmod", "http-keepalive",
    }
)  # fmt: skip
_TRUE = frozenset({"", "1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})


@dataclasses.dataclass
class _IniEntry:
    option: str
    value: str
    line: int


def _ini_entries(text: str, path: str) -> list[_IniEntry]:
    """The ``[uwsgi]`` section's options in file order, repeats kept (uWSGI allows them)."""
    directory = os.path.dirname(os.path.abspath(path)) + os.sep
    name = os.path.splitext(os.path.basename(path))[0]
    # uWSGI's magic variables: %d is the file's directory (with its slash), %n its base name.
    magic = {"d": directory, "n": name, "%": "%"}
    entries: list[_IniEntry] = []
    section: str | None = None
    seen_section = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            seen_section = seen_section or section == "uwsgi"
            continue
        if section != "uwsgi":
            continue
        key, _, value = line.partition("=")
        value = re.sub(r"%([dn%])", lambda m: magic[m[1]], value.strip())
        entries.append(_IniEntry(key.strip().lower().replace("_", "-"), value, number))
    if not seen_section:
        raise ConfigError(f"{path}: expected a [uwsgi] section, found none")
    return entries


def _ini_bool(entry: _IniEntry, path: str) -> bool:
    word = entry.value.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(
        f"{path}, line {entry.line}: uwsgi.{entry.option}: expected true or false, "
        f"got {entry.value!r}"
    )


def _unix_if_path(value: str) -> str:
    # uWSGI reads a socket value without a colon as a unix socket path, relative ones included.
    return value if ":" in value else f"unix:{value}"


def _ini_app(
    module: _IniEntry | None,
    wsgi_file: _IniEntry | None,
    callable_: _IniEntry | None,
    data: dict[str, Any],
    origin: dict[str, list[_IniEntry]],
    path: str,
    warnings: list[str],
) -> None:
    """Turn module / wsgi-file / callable into ``app`` (and ``chdir`` for a wsgi-file)."""
    name = callable_.value if callable_ else "application"  # uWSGI's default callable
    if module and wsgi_file:
        raise ConfigError(
            f"{path}, line {wsgi_file.line}: uwsgi.{wsgi_file.option}: expected either module "
            f"or wsgi-file, got both (module on line {module.line})"
        )
    if module:
        mod, sep, explicit = module.value.partition(":")
        data["app"] = f"{mod}:{explicit if sep else name}"
        origin["app"] = [module]
    elif wsgi_file:
        base = data.get("chdir") or "."
        full = os.path.abspath(os.path.join(base, wsgi_file.value))
        directory, filename = os.path.split(full)
        stem, ext = os.path.splitext(filename)
        if ext != ".py" or not stem or "." in stem:
            raise ConfigError(
                f"{path}, line {wsgi_file.line}: uwsgi.{wsgi_file.option}: expected a .py file "
                f"Gantry can import as a module, got {wsgi_file.value!r}"
            )
        if data.get("chdir") and os.path.abspath(data["chdir"]) != directory:
            warnings.append(
                f"{path}: option 'wsgi-file': Gantry imports {filename} as a module from its "
                f"directory, so chdir is {directory} instead of {data['chdir']}"
            )
        data["app"] = f"{stem}:{name}"
        data["chdir"] = directory
        origin["app"] = origin["chdir"] = [wsgi_file]
    elif callable_:
        warnings.append(f"{path}: option 'callable' has no module or wsgi-file and is ignored")


_INI_OPTIONS = sorted({*_INI_PLAIN, *_INI_READ, *_INI_SILENT})


def _unknown(entry: _IniEntry, path: str) -> None:
    """A misspelling of an option Gantry reads is an error (else it would silently be
    ignored); any other option uWSGI may know is left to a warning."""
    if entry.option in _INI_KNOWN_UWSGI:
        return
    # closer than for TOML keys: uWSGI has hundreds of options, some near Gantry's
    hint = suggest(entry.option, _INI_OPTIONS, cutoff=0.8)
    if hint:
        raise ConfigError(f"{path}, line {entry.line}: uwsgi.{entry.option}: unknown option{hint}")


def load_uwsgi_ini(path: str) -> tuple[ServeSettings, list[str]]:
    """Translate the ``[uwsgi]`` section of a uWSGI ini file; also return one warning per option
    Gantry ignores."""
    data: dict[str, Any] = {}
    origin: dict[str, list[_IniEntry]] = {}  # setting -> the entries it came from, for errors
    warnings: list[str] = []
    unsupported: dict[str, int] = {}
    module = wsgi_file = callable_ = master = lazy = None
    for entry in _ini_entries(read_config_text(path), path):
        option = entry.option
        if option in _INI_PLAIN:
            key = _INI_PLAIN[option]
            data[key], origin[key] = entry.value, [entry]
        elif option in ("http-socket", "http"):
            data.setdefault("http", []).append(entry.value)
            origin.setdefault("http", []).append(entry)
        elif option in ("socket", "uwsgi-socket"):
            if entry.value.startswith("@"):
                raise ConfigError(
                    f"{path}, line {entry.line}: uwsgi.{option}: expected HOST:PORT or a unix "
                    f"socket path, got the abstract socket {entry.value!r}"
                )
            data.setdefault("uwsgi_socket", []).append(_unix_if_path(entry.value))
            origin.setdefault("uwsgi_socket", []).append(entry)
        elif option == "chmod-socket":
            # uWSGI: chmod-socket with no value means 666
            data["uwsgi_socket_mode"] = entry.value or "666"
            origin["uwsgi_socket_mode"] = [entry]
        elif option == "stats":
            data["stats"], origin["stats"] = _unix_if_path(entry.value), [entry]
        elif option in ("module", "wsgi"):
            module = entry
        elif option in ("wsgi-file", "file"):
            wsgi_file = entry
        elif option == "callable":
            callable_ = entry
        elif option == "master":
            master = entry
        elif option == "lazy-apps":
            lazy = entry
        elif option == "limit-post":
            data["limits"], origin["limits"] = {"max_body_size": entry.value}, [entry]
        elif option in _INI_NO_EQUIVALENT:
            warnings.append(
                f"{path}: option '{option}' (line {entry.line}) has no equivalent in Gantry "
                f"and is ignored: {_INI_NO_EQUIVALENT[option]}"
            )
        elif option not in _INI_SILENT:
            _unknown(entry, path)
            unsupported.setdefault(option, entry.line)
    for option, line in unsupported.items():
        warnings.append(
            f"{path}: option '{option}' (line {line}) is not supported by Gantry and is ignored"
        )
    _ini_app(module, wsgi_file, callable_, data, origin, path, warnings)
    if master is not None and _ini_bool(master, path) and "workers" not in data:
        data["workers"], origin["workers"] = 1, [master]
    # uWSGI loads the app once in the master unless lazy-apps: that is Gantry's preload.
    data["preload"] = not (lazy is not None and _ini_bool(lazy, path))
    if lazy is not None:
        origin["preload"] = [lazy]

    def where(loc: tuple[int | str, ...], _path: str) -> str:
        entries = origin.get(str(loc[0]), [])
        index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1
        if not entries:
            return f"{path}: uwsgi"
        entry = entries[index] if -len(entries) <= index < len(entries) else entries[-1]
        return f"{path}, line {entry.line}: uwsgi.{entry.option}"

    try:
        settings = ServeSettings.model_validate(data, strict=False)
    except ValidationError as exc:
        raise ConfigError(error_lines(exc, where, "serve", ServeSettings)) from None
    return settings, warnings
