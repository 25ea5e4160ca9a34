"""``gantry up`` and its parts: the entry points the command line calls."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile

from gantry.config import ConfigError
from gantry.config.stack import (
    PROVISIONAL_RUNTIME_DIR,
    StackPlan,
    app_plan,
    demo_plan,
    load_stack,
)
from gantry.process.privileges import ALLOW_ROOT, refuse_root
from gantry.process.runtime import setup_error_log

__all__ = ["run_part", "run_up"]

log = logging.getLogger("gantry.stack")


def run_up(
    config_file: str | None, listen: str | None, app: str | None = None, workers: int = 1
) -> int:
    """Validate the whole stack (ConfigError before anything starts), bind, supervise.

    With no file: ``app`` (MODULE:CALLABLE, imported from the working directory) behind
    the front, or else the built-in demo."""
    from gantry.stack.supervisor import Supervisor

    setup_error_log()
    if config_file:
        plan = load_stack(config_file, PROVISIONAL_RUNTIME_DIR)
    elif app:
        where = listen or "0.0.0.0:8080"
        plan = app_plan(PROVISIONAL_RUNTIME_DIR, app, where, workers=workers, chdir=os.getcwd())
    else:
        plan = demo_plan(PROVISIONAL_RUNTIME_DIR, listen or "0.0.0.0:8080")
    if not config_file and not app:
        # the built-in demo is a local try-out, as `make run` starts it: root may run it
        if os.geteuid() == 0 and ALLOW_ROOT not in os.environ:
            os.environ[ALLOW_ROOT] = "demo"
            log.warning("the built-in demo runs its workers as root; a real stack names a user")
    refuse_root(plan.settings.front.user, f"{plan.source}: front")
    for i, pool in enumerate(plan.settings.app):
        if not pool.is_php:  # php-fpm's children run as nobody unless told (stack/php.py)
            refuse_root(pool.user, f"{plan.source}: app[{i}]")
    configured = plan.settings.stack.runtime_dir
    own = configured is None
    plan.runtime_dir = configured or tempfile.mkdtemp(prefix="gantry-up-")
    supervisor = Supervisor(plan, own_runtime_dir=own, config_file=config_file)
    try:
        supervisor.prepare()
    except (ConfigError, OSError):
        supervisor.cleanup()
        raise
    return supervisor.run()


def run_part(state: str, kind: str, name: str) -> int:
    """Run the front or pool ``name`` of the stack described by the state file."""
    with open(state, encoding="utf-8") as handle:
        plan = StackPlan.from_json(json.load(handle))
    if kind == "front":
        from gantry.front.run import run_front

        return run_front(
            plan.front_config(),
            master=True,
            stats=plan.part_stats("front"),
            # the supervisor gives every part [stack] graceful_timeout to stop
            graceful_timeout=plan.settings.stack.graceful_timeout,
        )
    from gantry.appserver.serve import AppLoadError, serve

    try:
        return serve(plan.pool_config(name))
    except AppLoadError as exc:
        print(f"gantry up: app {name!r}: {exc}", file=sys.stderr)
        return 3
