"""Which modules may be compiled with mypyc, and the guard that keeps a stale build out.

``tools/compile.py`` builds these modules in place (``src/gantry/**/*.so``) when a
C compiler and Python's headers are there; without a build Gantry runs them as
plain Python. Python imports an extension module before a source file of the
same name, so a build older than its source would hide the edit: ``guard()``
(run when ``gantry`` is imported) makes such modules load from source, with a
warning. ``GANTRY_PURE=1`` loads all of them from source.

Compiled code trusts mypy's types and checks them where it reads a narrowed value:
after ``if self.x is None: return``, a later read of ``self.x`` in the same function
is checked to be not None, even if a call in between cleared it (where plain
Python would go on). Code that re-checks an attribute that calls may clear reads
it through a method instead.

No weak references to the compiled protocol classes (those with an asyncio base):
on Python 3.11 mypyc gives them a weak-reference slot but does not clear it when
an instance dies, and a weak reference to one crashes the process later.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: the hot path of a request through the front and through an app worker
MODULES = (
    "gantry.protocol.http1",
    "gantry.protocol.chunked",
    "gantry.protocol.uwsgi",
    "gantry.protocol.fastcgi",
    "gantry.protocol.hpack",
    "gantry.protocol.http2",
    "gantry.front.connection",
    "gantry.front.exchange",
    "gantry.front.answering",
    "gantry.front.http2",
    "gantry.front.compress",
    "gantry.front.handlers",
    "gantry.front.files",
    "gantry.front.responses",
    "gantry.front.proxy",
    "gantry.front.websocket",
    "gantry.front.tls_accept",
    "gantry.front.keepalive",
    "gantry.front.worker",
    "gantry.front.upstream",
    "gantry.front.upstream_poll",
    "gantry.front.upstream_request",
    "gantry.front.balancing",
    "gantry.front.routing",
    "gantry.front.addresses",
    "gantry.front.real_ip",
    "gantry.front.blocklist",
    "gantry.front.limits.table",
    "gantry.front.limits.zones",
    "gantry.front.limits.handler",
    "gantry.front.cache.policy",
    "gantry.front.cache.packs",
    "gantry.front.cache.invalidations",
    "gantry.front.cache.store",
    "gantry.front.cache.handler",
    "gantry.appserver.context",
    "gantry.appserver.http",
    "gantry.appserver.uwsgi",
    "gantry.appserver.wsgi_connection",
    "gantry.wsgi.environ",
    "gantry.wsgi.uwsgi_environ",
    "gantry.wsgi.response",
)

#: hand-written C helpers (``<module>.c`` beside where they are built), built and kept
#: out with the compiled modules; their callers do the same work in Python without them
HELPERS = ("gantry.front.limits._bucket", "gantry.front.cache._index")

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(PACKAGE_DIR)
#: present in a compiled wheel (setup.py writes it): sources and build were made together,
#: and installing sets their times in no useful order, so they are not compared
WHEEL_MARKER = os.path.join(PACKAGE_DIR, "compiled-wheel")


def source_path(module: str) -> str:
    suffix = ".c" if module in HELPERS else ".py"
    return os.path.join(SOURCE_ROOT, *module.split(".")) + suffix


def built_path(module: str) -> str | None:
    """The module's extension file next to its source, if one was built."""
    stem = os.path.join(SOURCE_ROOT, *module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(stem + suffix):
            return stem + suffix
    return None


class _SourceFinder:
    """Finds the listed modules as source files, ahead of their extension files."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname in HELPERS:
            raise ModuleNotFoundError(f"{fullname} is kept out with the compiled modules")
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def guard() -> None:
    """Load the listed modules from source if any build is stale, or with GANTRY_PURE=1.

    All or none: compiled modules call each other's compiled code directly, so one
    module loaded from source beside compiled ones would still run its old code.
    """
    built = {module: built_path(module) for module in (*MODULES, *HELPERS)}
    if not any(built.values()):
        return
    from_wheel = os.path.exists(WHEEL_MARKER)
    stale = [
        module
        for module, path in built.items()
        if path is None
        or (not from_wheel and os.stat(path).st_mtime < os.stat(source_path(module)).st_mtime)
    ]
    if stale:
        warnings.warn(
            f"compiled modules older than their source ({', '.join(stale)}): loading all "
            f"of them from source; rebuild with `make compile` or remove the build with "
            f"`make clean-compiled`",
            stacklevel=2,
        )
    elif os.environ.get("GANTRY_PURE", "") in ("", "0"):
        return
    sys.meta_path.insert(0, _SourceFinder(set(MODULES)))
