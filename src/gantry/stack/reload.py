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

A reload talks to the supervisor through the methods of :class:`Stack` only, never
its fields (and never imports it).
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Protocol

from gantry.config.stack import StackPlan, load_stack
from gantry.process.systemd import notify
from gantry.stack.part import Part, PartKey, PartSockets

__all__ = ["Listener", "Reload", "Stack", "begin_reload"]

#: a stats or metrics server of the stack: (socket, "stats" or "metrics", address)
Listener = tuple[socket.socket, str, str]


class Stack(Protocol):
    """What a reload asks of the supervisor."""

    def current_plan(self) -> StackPlan:
        """The configuration the stack runs now."""
        ...

    def current_parts(self) -> list[Part]:
        """The serving generation of each part."""
        ...

    def start(self, part: Part) -> None:
        """Start ``part``'s master."""
        ...

    def stop_part(self, part: Part, signum: int = signal.SIGTERM) -> None:
        """Tell ``part`` to stop (killed if it outlives the graceful timeout)."""
        ...

    def signal_parts(self, signum: int, parts: list[Part] | None = None) -> None:
        """Send ``signum`` to the running masters among ``parts``."""
        ...

    def send_off(self, part: Part, signum: int | None) -> None:
        """``part`` is an outgoing generation now; told to stop with ``signum`` (None:
        later, once no old front may route to it)."""
        ...

    def generation_after(self, key: PartKey) -> int:
        """The number a new generation of part ``key`` gets."""
        ...

    def bind_plan(self, plan: StackPlan) -> dict[PartKey, PartSockets]:
        """Every listening socket of ``plan``'s parts (those bound already are kept)."""
        ...

    def bind_listeners(self, plan: StackPlan) -> list[Listener]:
        """``plan``'s stats and metrics servers (those bound already are kept)."""
        ...

    def write_state(self, plan: StackPlan, path: str) -> None:
        """Write the state file the parts of ``plan`` read."""
        ...

    def next_state_path(self, plan: StackPlan) -> str:
        """A state-file path no generation uses."""
        ...

    def stats_file(self, plan: StackPlan, part: Part) -> str | None:
        """The runtime-dir stats socket of ``part`` under ``plan``."""
        ...

    def set_scheduling(self, plan: StackPlan) -> None:
        """Apply ``plan``'s CPU policy to the parts started from now on."""
        ...

    def forget_unused(self) -> None:
        """Close the sockets and remove the files no generation uses."""
        ...

    def install(self, plan: StackPlan, parts: list[Part], state_path: str,
                listeners: list[Listener]) -> None:  # fmt: skip
        """The reload is committed: ``plan`` and ``parts`` serve from now on."""
        ...

    def reload_ended(self, incoming: list[Part], listeners: list[Listener]) -> None:
        """The reload was given up: forget what it made that no generation uses."""
        ...


log = logging.getLogger("gantry.stack")

# A new generation has [stack] graceful_timeout plus this long to say READY=1.
READY_GRACE = 10.0


@dataclass
class Reload:
    """One SIGHUP's new configuration on its way in."""

    supervisor: Stack
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
        pools = [p for p in self.incoming if p.kind != "front"]
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
        return next((p for p in self.supervisor.current_parts() if p.key == key), None)

    def commit(self) -> None:
        """Every new generation is ready: it serves, the old ones stop gracefully."""
        supervisor = self.supervisor
        current = {part.key: part for part in supervisor.current_parts()}
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
            supervisor.send_off(old, None)
            log.info("%s: removed; generation %d (pid %s) stops once the old front is gone",
                     old.label, old.generation, old.pid)  # fmt: skip
        supervisor.install(self.plan, parts, self.state_path, self.listeners)
        log.info("SIGHUP: %s applied", self.plan.source)
        notify("READY=1", f"STATUS=gantry up: {len(parts)} parts")

    def _retire(self, old: Part, new: Part) -> None:
        if old.pid is None:
            log.info("%s: replaced by generation %d (pid %d)", new.label, new.generation, new.pid)
            return
        log.info("%s: replaced by generation %d (pid %d); generation %d (pid %d) stops "
                 "gracefully", new.label, new.generation, new.pid, old.generation,
                 old.pid)  # fmt: skip
        self.supervisor.send_off(old, signal.SIGTERM)

    def abandon(self, reason: str) -> None:
        """A new generation failed: kill the new ones, keep (or bring back) the old ones."""
        supervisor = self.supervisor
        log.error("SIGHUP: %s not applied, the stack keeps running the configuration it has: %s",
                  self.plan.source, reason)  # fmt: skip
        for part in self.incoming:
            if part.pid is not None:
                supervisor.send_off(part, signal.SIGKILL)
        for part in supervisor.current_parts():
            if part.handing_over:
                part.handing_over = False
                part.backoff.reset()
                log.info("%s: generation %d starts again", part.label, part.generation)
        supervisor.set_scheduling(supervisor.current_plan())
        supervisor.reload_ended(self.incoming, self.listeners)
        notify("READY=1")


def begin_reload(supervisor: Stack, path: str) -> Reload:
    """Read ``path`` as at start, bind what is new and write the new state file; raises
    ConfigError or OSError (and changes nothing) when the file cannot be applied."""
    old = supervisor.current_plan()
    plan = load_stack(path, old.runtime_dir)
    if plan.settings.stack.runtime_dir != old.settings.stack.runtime_dir:
        log.warning("%s: stack.runtime_dir: a new runtime directory takes a restart; the "
                    "stack keeps %s", path, old.runtime_dir)  # fmt: skip
    current = {part.key: part for part in supervisor.current_parts()}
    changed: list[PartKey] = []
    unchanged: list[PartKey] = []
    for key in plan.part_keys():
        part = current.get(key)
        if part is not None and old.part_json(*key) == plan.part_json(*key):
            unchanged.append(key)
            plan.generations[key[1]] = part.generation
        else:
            changed.append(key)
            plan.generations[key[1]] = supervisor.generation_after(key)
    removed = [key for key in current if key not in set(plan.part_keys())]
    sockets = supervisor.bind_plan(plan)
    try:
        listeners = supervisor.bind_listeners(plan)
        state_path = supervisor.next_state_path(plan)
        supervisor.write_state(plan, state_path)
    except BaseException:
        supervisor.forget_unused()
        raise
    reload = Reload(supervisor, plan, state_path, [], unchanged, removed, listeners=listeners)
    # pools first: the new front may route to a pool that is new too
    for kind, name in sorted(changed, key=lambda key: key[0] == "front"):
        part = Part(
            name, kind, sockets[(kind, name)], state_path, generation=plan.generations[name]
        )
        part.stats_file = supervisor.stats_file(plan, part)
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
