"""SIGHUP of ``gantry up``: apply a changed gantry.toml with no refused connection.

The file is read and validated as at start, and every new socket bound, before
anything changes: a bad file only costs an error-log line (nginx's rule). A part
whose configuration is the same in effect is reloaded in place (SIGHUP to its
master: new workers, code re-imported). A changed or added part gets a new
generation beside the old one, on the same listening sockets, so both accept from
one queue: the pools first, then the front that routes to them. Once every new
generation has said READY=1, the old ones are told to stop gracefully; a removed
pool stops once no old front may route to it any more. If a new generation dies
or is not ready in time, the new ones are killed and the old ones keep serving.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gantry.config.stack import StackPlan, load_stack
from gantry.process.systemd import notify

if TYPE_CHECKING:
    from gantry.stack.supervisor import Part, PartKey, Supervisor

__all__ = ["Reload", "begin_reload"]

log = logging.getLogger("gantry.stack")

# A new generation has [stack] graceful_timeout plus this long to say READY=1.
READY_GRACE = 10.0


@dataclass
class Reload:
    """One SIGHUP's new configuration on its way in."""

    supervisor: Supervisor
    plan: StackPlan
    state_path: str
    #: new generations of the changed and added parts: the pools, then the front
    incoming: list[Part]
    unchanged: list[PartKey]
    removed: list[PartKey]
    #: pools whose old generation must stop before the new one starts: both would
    #: serve the pool's own stats or metrics address
    in_turn: set[PartKey] = field(default_factory=set)
    #: the stack's stats and metrics servers under the new file
    listeners: list[tuple[socket.socket, str, str]] = field(default_factory=list)

    @property
    def ready_timeout(self) -> float:
        """Seconds a new generation has to say READY=1."""
        return self.plan.settings.stack.graceful_timeout + READY_GRACE

    def progress(self) -> None:
        """Start what is due, then commit once every new generation is ready, or give
        up on the first that failed or is late."""
        now = time.monotonic()
        for part in self.incoming:
            if part.failed:
                self.abandon(f"{part.label} generation {part.generation}: {part.failed}")
                return
            if part.pid is not None and not part.ready and now - part.started > self.ready_timeout:
                self.abandon(
                    f"{part.label} generation {part.generation} (pid {part.pid}) was not ready "
                    f"within {self.ready_timeout:.0f} s"
                )
                return
        pools = [p for p in self.incoming if p.kind == "app"]
        for part in pools:
            if part.key not in self.in_turn:
                self._start_once(part)
        if all(p.ready for p in pools if p.key not in self.in_turn):
            for part in pools:
                if part.key in self.in_turn:
                    self._start_after_the_old_one(part)
        if all(p.ready for p in pools):
            for part in self.incoming:
                if part.kind == "front":
                    self._start_once(part)
        if all(p.ready for p in self.incoming):
            self.commit()

    def _start_once(self, part: Part) -> None:
        if part.pid is None and not part.started:
            self.supervisor.start(part)

    def _start_after_the_old_one(self, part: Part) -> None:
        old = self._current(part.key)
        if old is not None and not old.handing_over:
            old.handing_over = True
            log.info("%s: generation %d stops before generation %d starts (both would serve "
                     "its own stats or metrics address); requests wait in its listen queue",
                     part.label, old.generation, part.generation)  # fmt: skip
            self.supervisor.stop_part(old)
        if old is None or old.pid is None:
            self._start_once(part)

    def _current(self, key: PartKey) -> Part | None:
        return next((p for p in self.supervisor.parts if p.key == key), None)

    def commit(self) -> None:
        """Every new generation is ready: it serves, the old ones stop gracefully."""
        supervisor = self.supervisor
        old_plan = supervisor.plan
        current = {part.key: part for part in supervisor.parts}
        incoming = {part.key: part for part in self.incoming}
        parts = []
        for key in self.plan.part_keys():
            if key in incoming:
                part = incoming[key]
                old = current.get(key)
                if old is None:
                    where = ", ".join(str(address) for address, _ in part.sockets)
                    log.info("%s: added (pid %d) on %s", part.label, part.pid, where)
                else:
                    self._retire(old, part)
            else:
                part = current[key]
                part.state_path = self.state_path
                log.info("%s: unchanged, reloaded in place (pid %s)", part.label, part.pid)
                supervisor.signal_parts(signal.SIGHUP, [part])
            parts.append(part)
        for key in self.removed:
            old = current[key]
            old.after_front = True
            supervisor.outgoing.append(old)
            log.info("%s: removed; generation %d (pid %s) stops once the old front is gone",
                     old.label, old.generation, old.pid)  # fmt: skip
        supervisor.parts = parts
        supervisor.plan = self.plan
        supervisor.state_path = self.state_path
        supervisor.close_listeners([e for e in supervisor.listeners if e not in self.listeners])
        supervisor.listeners = self.listeners
        supervisor.apply_stack_table(old_plan, self.plan)
        supervisor.reload = None
        supervisor.retire_removed_pools()
        for part in current.values():
            if part.pid is None and part not in parts and part not in supervisor.outgoing:
                supervisor.forget(part)  # replaced while down: nothing to wait for
        supervisor.forget_unused()
        log.info("SIGHUP: %s applied", self.plan.source)
        notify("READY=1", f"STATUS=gantry up: {len(parts)} parts")

    def _retire(self, old: Part, new: Part) -> None:
        if old.pid is None:
            log.info("%s: replaced by generation %d (pid %d)", new.label, new.generation, new.pid)
            return
        log.info("%s: replaced by generation %d (pid %d); generation %d (pid %d) stops "
                 "gracefully", new.label, new.generation, new.pid, old.generation,
                 old.pid)  # fmt: skip
        self.supervisor.outgoing.append(old)
        self.supervisor.stop_part(old)

    def abandon(self, reason: str) -> None:
        """A new generation failed: kill the new ones, keep (or bring back) the old ones."""
        supervisor = self.supervisor
        log.error("SIGHUP: %s not applied, the stack keeps running the configuration it has: %s",
                  self.plan.source, reason)  # fmt: skip
        for part in self.incoming:
            if part.pid is not None:
                supervisor.outgoing.append(part)
                supervisor.stop_part(part, signal.SIGKILL)
        for part in supervisor.parts:
            if part.handing_over:
                part.handing_over = False
                part.next_start = time.monotonic()
                log.info("%s: generation %d starts again", part.label, part.generation)
        supervisor.close_listeners([e for e in self.listeners if e not in supervisor.listeners])
        supervisor.set_scheduling(supervisor.plan)
        supervisor.reload = None
        for part in self.incoming:
            if part.pid is None:
                supervisor.forget(part)
        supervisor.forget_unused()
        notify("READY=1")


def begin_reload(supervisor: Supervisor, path: str) -> Reload:
    """Read ``path`` as at start, bind what is new and write the new state file; raises
    ConfigError or OSError (and changes nothing) when the file cannot be applied."""
    from gantry.stack.supervisor import Part

    old = supervisor.plan
    plan = load_stack(path, old.runtime_dir)
    if plan.settings.stack.runtime_dir != old.settings.stack.runtime_dir:
        log.warning("%s: stack.runtime_dir: a new runtime directory takes a restart; the "
                    "stack keeps %s", path, old.runtime_dir)  # fmt: skip
    current = {part.key: part for part in supervisor.parts}
    changed: list[PartKey] = []
    unchanged: list[PartKey] = []
    for key in plan.part_keys():
        part = current.get(key)
        if part is not None and old.part_json(*key) == plan.part_json(*key):
            unchanged.append(key)
            plan.generations[key[1]] = part.generation
        else:
            changed.append(key)
            plan.generations[key[1]] = supervisor.last_generation.get(key, 0) + 1
    removed = [key for key in current if key not in set(plan.part_keys())]
    sockets = supervisor.bind_plan(plan)
    try:
        listeners = supervisor.bind_listeners(plan)
        state_path = os.path.join(plan.runtime_dir, f"stack@{supervisor.reloads + 2}.json")
        supervisor.write_state(plan, state_path)
    except BaseException:
        supervisor.forget_unused()
        raise
    supervisor.reloads += 1
    reload = Reload(supervisor, plan, state_path, [], unchanged, removed, listeners=listeners)
    # pools first: the new front may route to a pool that is new too
    for kind, name in sorted(changed, key=lambda key: key[0] == "front"):
        part = Part(name, kind, sockets[(kind, name)], state_path, plan.generations[name])
        part.stats_file = supervisor.stats_file(plan, part)
        supervisor.last_generation[part.key] = part.generation
        reload.incoming.append(part)
        if kind == "app" and (kind, name) in current and _own_addresses(old, plan, name):
            reload.in_turn.add((kind, name))
    if plan.settings.stack.scheduling != old.settings.stack.scheduling:
        supervisor.set_scheduling(plan)
    return reload


def _own_addresses(old: StackPlan, new: StackPlan, name: str) -> bool:
    """Whether both generations of pool ``name`` would serve one stats or metrics address
    of its own (the supervisor cannot hand those down: the pool's master binds them)."""
    before = next(a for a in old.settings.app if a.name == name)
    after = next(a for a in new.settings.app if a.name == name)
    return bool({before.stats, before.metrics} & {after.stats, after.metrics} - {None})
