"""``gantry up``: one supervisor over the front and the application pools.

The supervisor binds every listening socket itself (the front's, each pool's
uwsgi unix socket and a pool's own sockets) and hands them down as LISTEN_FDS,
so a part that dies and comes back finds its queue still open: the front never
sees a refused pool and clients never see a refused front. Each part is a
``gantry`` process with its own master (``gantry front``'s, ``gantry serve``'s),
which respawns its workers; the supervisor respawns the masters. It runs on the
same process loop as those masters (``process/loop.py``): signal handlers only
queue the signal; the loop re-reads gantry.toml (SIGHUP, ``stack/reload.py``, which
talks to the supervisor through the methods of ``reload.Stack``), forwards SIGUSR1,
stops the parts (SIGTERM, SIGINT), reaps, and answers the stack's stats and metrics
sockets without blocking.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gantry.config import ConfigError, ListenAddress, parse_address
from gantry.config.stack import StackPlan
from gantry.process.answers import AnswerServer
from gantry.process.loop import ProcessLoop
from gantry.process.master import APP_LOAD_FAILED
from gantry.process.parent import stop_with_parent
from gantry.process.privileges import resolve_identity
from gantry.process.runtime import reopen_error_log, signal_process
from gantry.process.sockets import address_key, bind, inherited_by_key
from gantry.process.systemd import SD_LISTEN_FDS_START, notify
from gantry.stack.part import Part, PartKey, PartSockets
from gantry.stack.php import PHP_SIGNALS, php_argv, php_env, write_php_pool
from gantry.stack.readiness import ReadinessSocket
from gantry.stack.reload import Reload, begin_reload
from gantry.stack.stats import StackStats

__all__ = ["Part", "Supervisor", "EXIT_APP_LOAD_FAILED"]

log = logging.getLogger("gantry.stack")

EXIT_APP_LOAD_FAILED = APP_LOAD_FAILED
#: the signals the supervisor takes over
STACK_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
# A part that ran this long before dying starts again at the shortest backoff.
HEALTHY_RUN = 10.0
STATE_FILE = "stack.json"
# A part told to stop gracefully is killed this long after [stack] graceful_timeout.
STOP_GRACE = 5.0


@dataclass
class Supervisor:
    """Runs a validated :class:`StackPlan` until told to stop; ``run`` returns the exit code.

    ``config_file`` is the gantry.toml SIGHUP re-reads (None for the built-in demo)."""

    plan: StackPlan
    own_runtime_dir: bool = False
    parts: list[Part] = field(default_factory=list)
    config_file: str | None = None

    def __post_init__(self) -> None:
        self.loop = ProcessLoop(STACK_SIGNALS)
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.started = time.time()
        #: the stack's stats and metrics servers: (socket, "stats" or "metrics", address)
        self.listeners: list[tuple[socket.socket, str, str]] = []
        #: the servers answering on the current listeners, by the listener's fd
        self.answering: dict[int, AnswerServer] = {}
        self.stack_stats = StackStats(self.loop, self.started, self.serving_stats)
        #: every listening socket the parts get, by address: kept across reloads
        self.bound: dict[object, tuple[ListenAddress, socket.socket]] = {}
        #: sockets systemd passed that no part has taken yet (during prepare)
        self.passed: dict[object, socket.socket] = {}
        self.state_path = os.path.join(self.plan.runtime_dir, STATE_FILE)
        self.state_files: set[str] = set()
        #: old generations told to stop (or, removed pools, about to be)
        self.outgoing: list[Part] = []
        #: the SIGHUP under way: its new generations, until all are ready or one fails
        self.reload: Reload | None = None
        self.reload_again = False
        self.reloads = 0
        self.last_generation: dict[PartKey, int] = {}
        self.readiness: ReadinessSocket | None = None
        #: every socket bound and the state written: the runtime files are this stack's
        self.prepared = False

    # setting up -------------------------------------------------------------

    def prepare(self) -> None:
        """Write the state file and bind every socket, before any part starts."""
        os.makedirs(self.plan.runtime_dir, mode=0o700, exist_ok=True)
        # systemd socket activation: the sockets it bound serve the addresses they are
        # bound to (the front's listen, most often), in every generation.
        self.passed = inherited_by_key()
        sockets = self.bind_plan(self.plan)
        for key, sock in self.passed.items():
            log.warning("systemd passed a socket that no listen address names: %s", key)
            sock.close()
        self.passed.clear()
        for kind, name in self.plan.part_keys():
            part = Part(name, kind, sockets[(kind, name)], self.state_path)
            part.stats_file = self.stats_file(self.plan, part)
            self.parts.append(part)
            self.last_generation[part.key] = 1
        self.listeners = self.bind_listeners(self.plan)
        # Last: a bind that fails (another stack on the same runtime_dir or port) must
        # leave that stack's state file alone.
        self.write_state(self.plan, self.state_path)
        self.prepared = True

    def bind_plan(self, plan: StackPlan) -> dict[PartKey, PartSockets]:
        """A socket for every address the plan's parts listen on: the one already bound
        for that address (the same object, so its queue never closes), else a new one."""
        result: dict[PartKey, PartSockets] = {}
        claimed: dict[object, str] = {}
        fresh: list[object] = []
        try:
            for kind, name in plan.part_keys():
                owner = "front.listen" if kind == "front" else f"app {name!r}"
                sockets = []
                for address, mode, backlog in plan.part_listen(kind, name):
                    key = address_key(address)
                    if key in claimed:
                        raise ConfigError(
                            f"{plan.source}: {address} is listened on by {claimed[key]} "
                            f"and by {owner}"
                        )
                    claimed[key] = owner
                    held = self.bound.get(key)
                    passed = self.passed.pop(key, None)
                    if held is None and passed is not None:
                        passed.setblocking(False)
                        log.info("%s: using the socket systemd passed", address)
                        held = (dataclasses.replace(address, inherited=True), passed)
                        self.bound[key] = held
                    elif held is None:
                        held = (address, bind(address, mode, backlog))
                        self.bound[key] = held
                        fresh.append(key)
                    sockets.append((address, held[1]))
                result[(kind, name)] = sockets
            self.share_with_front(plan)
        except BaseException:
            for key in fresh:
                self._close_bound(key)
            raise
        return result

    def share_with_front(self, plan: StackPlan) -> None:
        """When the front's workers run as another user, they must reach the pools' unix
        sockets in the runtime directory: its group may pass through the directory
        (0710) and write to those sockets (0660); nobody else may."""
        front = plan.settings.front
        if front.user is None and front.group is None:
            return
        identity = resolve_identity(front.user, front.group, f"{plan.source}: front")
        if identity is None or os.geteuid() != 0:
            return
        os.chown(plan.runtime_dir, -1, identity.gid)
        os.chmod(plan.runtime_dir, 0o710)
        for kind, name in plan.part_keys():
            if kind in ("app", "php"):
                path = plan.pool_socket(name)
                if os.path.exists(path):
                    os.chown(path, -1, identity.gid)
                    os.chmod(path, 0o660)

    def bind_listeners(self, plan: StackPlan) -> list[tuple[socket.socket, str, str]]:
        """The stack's stats and metrics servers: those already open for the same address
        are kept, new ones bound (all closed again if one cannot be)."""
        stack = plan.settings.stack
        result: list[tuple[socket.socket, str, str]] = []
        try:
            for wanted, kind in ((stack.stats, "stats"), (stack.metrics, "metrics")):
                if not wanted:
                    continue
                kept = [entry for entry in self.listeners if entry[1:] == (kind, wanted)]
                if kept:
                    result.append(kept[0])
                    continue
                address = parse_address(wanted, kind, f"{plan.source}: stack.{kind}")
                sock = bind(address, 0o600 if address.path else None, 64)
                result.append((sock, kind, wanted))
        except BaseException:
            self.close_listeners([e for e in result if e not in self.listeners])
            raise
        return result

    def write_state(self, plan: StackPlan, path: str) -> None:
        """The state file the parts read their configuration from."""
        self.state_files.add(path)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(plan.to_json(), handle)

    @staticmethod
    def stats_file(plan: StackPlan, part: Part) -> str | None:
        """The runtime-dir stats socket of ``part`` (None when a pool names its own)."""
        return plan.part_stats(part.name) if plan.part_stats_is_ours(part.kind, part.name) else None

    def run(self) -> int:
        """Start every part, then supervise until stopped."""
        self.loop.install_signals()
        self.set_scheduling(self.plan)
        self.loop.write_pidfile(self.plan.settings.stack.pidfile)
        if ReadinessSocket.supported():
            try:
                self.readiness = ReadinessSocket()
            except OSError as exc:
                log.warning("no readiness socket (%s): SIGHUP reloads the parts in place and "
                            "does not re-read the file", exc)  # fmt: skip
            else:
                readiness = self.readiness
                self.loop.watch(
                    readiness.sock, selectors.EVENT_READ, lambda: self._hear_readiness(readiness)
                )
        self._answer_listeners()
        try:
            for part in self.parts:
                self.start(part)
            # systemd hears READY=1 once every part has said it (at once without a
            # readiness socket to hear them on)
            starting = self.readiness is not None
            if not starting:
                self._ready()
            log.info(
                "gantry up %d: %s", os.getpid(), ", ".join(self._describe(p) for p in self.parts)
            )
            while True:
                self.loop.wait()
                if starting and all(part.ready for part in self.parts):
                    starting = False
                    self._ready()
                self._handle_signals()
                self._reap()
                if self.stopping:
                    if self._stop_progress():
                        break
                    continue
                self._restart_due()
                self._kill_late()
                if self.reload is not None:
                    self.reload.progress()
                self.retire_removed_pools()
                if self.reload is None and self.reload_again:
                    self.reload_again = False
                    self._reread_config()
        finally:
            self.cleanup()
            self.loop.close()
        log.info("gantry up %d stopped (exit %d)", os.getpid(), self.exit_code)
        return self.exit_code

    def _ready(self) -> None:
        notify("READY=1", f"STATUS=gantry up: {len(self.parts)} parts")

    def _describe(self, part: Part) -> str:
        where = ", ".join(str(address) for address, _ in part.sockets)
        return f"{part.name} (pid {part.pid}) on {where}"

    # the parts --------------------------------------------------------------

    def live_parts(self) -> list[Part]:
        """Every generation the supervisor may have running: current, new and old."""
        incoming = self.reload.incoming if self.reload is not None else []
        return [*self.parts, *incoming, *self.outgoing]

    def start(self, part: Part) -> None:
        """Fork and exec the part's master on its sockets (php-fpm for a php app)."""
        part.started_with = part.state_path
        argv = [sys.executable, "-m", "gantry", "_part", part.state_path, part.kind, part.name]
        fds = [sock.fileno() for _, sock in part.sockets]
        program = sys.executable
        env_of: Callable[[dict[str, str]], dict[str, str]]
        env_of = lambda env: _part_env(env, len(fds))  # noqa: E731
        if part.kind == "php":
            plan = self._plan_of(part)
            app = next(a for a in plan.settings.app if a.name == part.name)
            try:
                argv = php_argv(plan, app, write_php_pool(plan, app))
            except (OSError, ConfigError) as exc:
                # tried again with backoff, as a part that died at once
                log.error("%s: cannot start php-fpm: %s", part.label, exc)
                argv = ["/bin/false"]
            program = argv[0]
            env_of = lambda env: php_env(plan, app, env)  # noqa: E731
        notify_socket = self.readiness.address if self.readiness is not None else None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the part: hand the sockets down as fds 3, 4, ... and exec
            try:
                # SIGUSR1 ignored until the part's master installs its handler: a
                # logrotate meanwhile must not kill it
                self.loop.in_child(ignored=(signal.SIGUSR1,))
                stop_with_parent(parent)
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in fds]
                for i, fd in enumerate(high):
                    os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
                if part.kind == "php":
                    # php-fpm's children accept() blocking: a non-blocking socket makes
                    # each one exit at once (only php-fpm ever accepts on this one)
                    os.set_blocking(SD_LISTEN_FDS_START, True)
                    # a group of its own: its children outlive a master that is killed
                    # (they know no parent-death signal), and _reap kills the group
                    os.setpgid(0, 0)
                env = env_of(dict(os.environ))
                # systemd hears from the supervisor only; the part's READY=1 comes here
                env.pop("NOTIFY_SOCKET", None)
                if notify_socket:
                    env["NOTIFY_SOCKET"] = notify_socket
                os.execve(program, argv, env)
            except BaseException:
                os._exit(127)
        part.pid = pid
        part.started = time.monotonic()
        part.ready = False
        known = self.last_generation.get(part.key, 0)
        self.last_generation[part.key] = max(known, part.generation)

    def _plan_of(self, part: Part) -> StackPlan:
        """The plan ``part``'s generation belongs to (a reload's new one, or the current)."""
        if self.reload is not None and part in self.reload.incoming:
            return self.reload.plan
        return self.plan

    def stop_part(self, part: Part, signum: int = signal.SIGTERM) -> None:
        """Tell one generation to stop; it is killed if it outlives the graceful timeout."""
        if part.pid is None:
            return
        signal_process(part.pid, part_signal(part, signum))
        self.loop.kill_after(part.pid, self.plan.settings.stack.graceful_timeout + STOP_GRACE)

    def _reap(self) -> None:
        for pid, status in self.loop.reap():
            part = next((p for p in self.live_parts() if p.pid == pid), None)
            if part is None:
                continue
            part.pid = None
            part.last_exit = _describe_status(status)
            code = os.waitstatus_to_exitcode(status)
            if part.kind == "php":
                _kill_orphans(pid)
            if part in self.outgoing:
                log.info("%s generation %d stopped (%s)", part.label, part.generation,
                         part.last_exit)  # fmt: skip
                if not part.after_front:
                    self.outgoing.remove(part)
                    self.forget(part)
            elif self.stopping:
                log.info("%s stopped (%s)", part.name, part.last_exit)
            elif part not in self.parts:  # a new generation, not ready yet
                cannot_load = part.kind == "app" and code == APP_LOAD_FAILED
                part.failed = (
                    "its application cannot be loaded (see above)" if cannot_load
                    else f"it {part.last_exit} before it was ready"
                )  # fmt: skip
            elif part.handing_over:
                log.info("%s generation %d stopped for the next one (%s)", part.label,
                         part.generation, part.last_exit)  # fmt: skip
            elif part.kind == "app" and code == APP_LOAD_FAILED:
                log.error(
                    "app %r: its application cannot be loaded (see above); stopping the stack",
                    part.name,
                )
                self.exit_code = EXIT_APP_LOAD_FAILED
                self._begin_stop("graceful")
            else:
                now = time.monotonic()
                if now - part.started >= HEALTHY_RUN:
                    part.backoff.reset()
                delay = part.backoff.failed(now)
                log.warning("%s %s; starting it again in %.1f s", part.name, part.last_exit, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for part in self.parts:
            if part.pid is None and not part.handing_over and part.backoff.due(now):
                part.restarts += 1
                self.start(part)
                log.info("%s started again (pid %d)", part.name, part.pid)

    def _kill_late(self) -> None:
        for pid in self.loop.kill_overdue():
            part = next((p for p in self.live_parts() if p.pid == pid), None)
            if part is not None:
                log.warning("%s generation %d (pid %d) did not stop in time: killed",
                            part.label, part.generation, pid)  # fmt: skip

    # what a reload asks (reload.Stack) ------------------------------------------

    def current_plan(self) -> StackPlan:
        """The configuration the stack runs now."""
        return self.plan

    def current_parts(self) -> list[Part]:
        """The serving generation of each part."""
        return list(self.parts)

    def send_off(self, part: Part, signum: int | None) -> None:
        """``part`` joins the outgoing generations; told to stop now with ``signum``, or
        (None) once no old front may route to it."""
        self.outgoing.append(part)
        if signum is not None:
            self.stop_part(part, signum)

    def generation_after(self, key: PartKey) -> int:
        """The number a new generation of part ``key`` gets."""
        return self.last_generation.get(key, 0) + 1

    def next_state_path(self, plan: StackPlan) -> str:
        """A state-file path no generation uses."""
        self.reloads += 1
        return os.path.join(plan.runtime_dir, f"stack@{self.reloads + 1}.json")

    def install(self, plan: StackPlan, parts: list[Part], state_path: str,
                listeners: list[tuple[socket.socket, str, str]]) -> None:  # fmt: skip
        """A reload committed: ``plan`` and ``parts`` serve from now on, the stats and
        metrics servers are ``listeners``; what the old plan alone used goes."""
        old_plan, current = self.plan, self.parts
        self.parts = parts
        self.plan = plan
        self.state_path = state_path
        self.close_listeners([e for e in self.listeners if e not in listeners])
        self.listeners = listeners
        self._answer_listeners()
        self.apply_stack_table(old_plan, plan)
        self.reload = None
        self.retire_removed_pools()
        for part in current:
            if part.pid is None and part not in parts and part not in self.outgoing:
                self.forget(part)  # replaced while down: nothing to wait for
        self.forget_unused()

    def reload_ended(
        self, incoming: list[Part], listeners: list[tuple[socket.socket, str, str]]
    ) -> None:
        """A reload was given up: close its new stats and metrics servers and forget the
        generations it made that are not running."""
        self.close_listeners([e for e in listeners if e not in self.listeners])
        self.reload = None
        for part in incoming:
            if part.pid is None:
                self.forget(part)
        self.forget_unused()

    # ---------------------------------------------------------------------------

    def retire_removed_pools(self) -> None:
        """Stop the removed pools once no old front generation may still route to them."""
        if any(p.kind == "front" and p.pid is not None for p in self.outgoing):
            return
        for part in [p for p in self.outgoing if p.after_front]:
            part.after_front = False
            if part.pid is None:
                self.outgoing.remove(part)
                self.forget(part)
            else:
                log.info("%s: removed; generation %d (pid %d) stops now that the old front "
                         "is gone", part.label, part.generation, part.pid)  # fmt: skip
                self.stop_part(part)

    def forget(self, part: Part) -> None:
        """A generation is gone: remove its stats socket, and what no generation uses."""
        if part.stats_file and all(p.stats_file != part.stats_file for p in self.live_parts()):
            _unlink(part.stats_file)
        self.forget_unused()

    def forget_unused(self) -> None:
        """Close the sockets and remove the state files no generation uses any more."""
        live = self.live_parts()
        in_use = {id(sock) for p in live for _, sock in p.sockets}
        for key, (_, sock) in list(self.bound.items()):
            if id(sock) not in in_use:
                self._close_bound(key)
        states = {p.state_path for p in live} | {p.started_with for p in live} | {self.state_path}
        if self.reload is not None:
            states.add(self.reload.state_path)
        for path in self.state_files - states:
            _unlink(path)
            self.state_files.discard(path)

    def _close_bound(self, key: object) -> None:
        address, sock = self.bound.pop(key)
        sock.close()
        if address.path is not None and not address.inherited:  # systemd's file
            _unlink(address.path)

    def close_listeners(self, listeners: list[tuple[socket.socket, str, str]]) -> None:
        """Close stats or metrics servers (and remove their unix socket files)."""
        for sock, _, _ in listeners:
            server = self.answering.pop(sock.fileno(), None)
            if server is not None:
                server.close()
            name = sock.getsockname()
            sock.close()
            if isinstance(name, str) and name:
                _unlink(name)

    # signals ----------------------------------------------------------------

    def _handle_signals(self) -> None:
        for signum in self.loop.take_signals():
            if signum == signal.SIGHUP:
                self._on_sighup()
            elif signum == signal.SIGUSR1:
                # logrotate: the supervisor's log and every part's (each master passes
                # it on to its workers)
                reopen_error_log()
                self.signal_parts(signal.SIGUSR1)
            elif signum == signal.SIGTERM:
                self._begin_stop("graceful")
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self._begin_stop("fast")

    def _on_sighup(self) -> None:
        if self.stopping:
            return
        if self.config_file is None or self.readiness is None:
            why = "no file to re-read" if self.config_file is None else "no readiness socket"
            log.info("SIGHUP: reloading every part with zero downtime (%s)", why)
            notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            self.signal_parts(signal.SIGHUP, self.parts)
            notify("READY=1")
        elif self.reload is not None:
            log.info("SIGHUP: a reload is under way; %s is read again once it is done",
                     self.config_file)  # fmt: skip
            self.reload_again = True
        else:
            self._reread_config()

    def _reread_config(self) -> None:
        assert self.config_file is not None
        log.info("SIGHUP: re-reading %s", self.config_file)
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            self.reload = begin_reload(self, self.config_file)
        except (ConfigError, OSError) as exc:
            log.error("SIGHUP: not applied, the stack keeps running the configuration it has: %s",
                      exc)  # fmt: skip
            notify("READY=1")
            return
        self.reload.progress()

    def signal_parts(self, signum: int, parts: list[Part] | None = None) -> None:
        """Send ``signum`` to the running masters among ``parts`` (default: every one)."""
        for part in self.live_parts() if parts is None else parts:
            if part.pid is not None:
                signal_process(part.pid, part_signal(part, signum))

    # stopping ---------------------------------------------------------------

    def _begin_stop(self, how: str) -> None:
        if self.stopping == "fast" or self.stopping == how:
            return
        self.stopping = how
        notify("STOPPING=1")
        graceful = self.plan.settings.stack.graceful_timeout + STOP_GRACE
        self.stop_deadline = time.monotonic() + (graceful if how == "graceful" else 5.0)
        log.info("%s stop of every part", how)
        self.signal_parts(signal.SIGTERM if how == "graceful" else signal.SIGINT)

    def _stop_progress(self) -> bool:
        running = [part for part in self.live_parts() if part.pid is not None]
        if not running:
            return True
        if time.monotonic() >= self.stop_deadline:
            for part in running:
                assert part.pid is not None
                log.warning("%s did not stop in time: killing it", part.name)
                signal_process(part.pid, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5.0
        return False

    def _hear_readiness(self, readiness: ReadinessSocket) -> None:
        for pid, lines in readiness.read():
            part = next((p for p in self.live_parts() if pid and p.pid == pid), None)
            if part is None:
                continue
            if "READY=1" in lines:
                part.ready = True
            for line in lines:
                # a master whose in-place reload failed says why (and keeps serving)
                if line.startswith("STATUS=reload failed: "):
                    part.reload_error = line.removeprefix("STATUS=reload failed: ")
                    log.error("%s: its reload failed, its old workers keep serving: %s",
                              part.label, part.reload_error)  # fmt: skip
                elif line.startswith("STATUS=reload done"):
                    part.reload_error = ""

    def _answer_listeners(self) -> None:
        """Answer on the current stats and metrics listeners (new ones after a reload)."""
        for sock, kind, _ in self.listeners:
            if sock.fileno() not in self.answering:
                respond = (
                    self.stack_stats.respond_stats
                    if kind == "stats"
                    else self.stack_stats.respond_metrics
                )
                self.answering[sock.fileno()] = AnswerServer(
                    self.loop, sock, respond, reads_request=kind == "metrics"
                )

    def serving_stats(self) -> list[tuple[Part, str]]:
        """The serving generation of each part, with its stats socket's address."""
        return [(part, part.stats_file or self._own_stats(part)) for part in self.parts]

    def _own_stats(self, part: Part) -> str:
        """A pool's own stats address; php-fpm's socket, whose status page is read."""
        if part.kind == "php":
            return self.plan.pool_socket(part.name)
        return self.plan.pool_config(part.name).stats or ""

    def set_scheduling(self, plan: StackPlan) -> None:
        """The CPU policy every part started from now on inherits (fork and exec keep it)."""
        if not hasattr(os, "SCHED_BATCH"):
            return
        batch = plan.settings.stack.scheduling == "batch"
        if not batch and os.sched_getscheduler(0) != os.SCHED_BATCH:
            return  # never set: leave the policy gantry up was started with
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH if batch else os.SCHED_OTHER,
                                  os.sched_param(0))  # fmt: skip
        except OSError as exc:
            log.warning("cannot set the %s scheduling policy: %s; the parts run with the "
                        "one they inherit", plan.settings.stack.scheduling, exc)  # fmt: skip

    def apply_stack_table(self, old: StackPlan, new: StackPlan) -> None:
        """A reload's [stack] changes the supervisor itself applies: the pidfile (stats,
        metrics and scheduling were applied on the way)."""
        if old.settings.stack.pidfile != new.settings.stack.pidfile:
            if old.settings.stack.pidfile:
                _unlink(old.settings.stack.pidfile)
            self.loop.write_pidfile(new.settings.stack.pidfile)

    def cleanup(self) -> None:
        """Close and remove what prepare() made (sockets, state, the runtime directory)
        and the stats sockets the parts' masters bound where gantry up told them to."""
        parts = self.live_parts()
        for key in list(self.bound):
            self._close_bound(key)
        if self.prepared:
            # A pool's own `stats` setting is the user's: only the runtime-dir default goes
            # (and only when this stack ran: the files may be another stack's otherwise).
            for part in parts:
                if part.stats_file:
                    _unlink(part.stats_file)
            for path in self.state_files:
                _unlink(path)
            for (kind, name), last in self.last_generation.items():
                if kind == "php":  # the pool files written for php-fpm
                    for generation in range(1, last + 1):
                        _unlink(self.plan.php_pool_file(name, generation))
        self.close_listeners(self.listeners)
        if self.reload is not None:
            self.close_listeners([e for e in self.reload.listeners if e not in self.listeners])
        if self.readiness is not None:
            self.readiness.close()
        if self.plan.settings.stack.pidfile:
            _unlink(self.plan.settings.stack.pidfile)
        if self.own_runtime_dir:
            shutil.rmtree(self.plan.runtime_dir, ignore_errors=True)


def _part_env(env: dict[str, str], fds: int) -> dict[str, str]:
    """A gantry part's environment (in the forked child): its sockets as systemd passes
    them."""
    env.update(LISTEN_FDS=str(fds), LISTEN_PID=str(os.getpid()))
    env.pop("LISTEN_FDNAMES", None)
    return env


def part_signal(part: Part, signum: int) -> int:
    """The signal ``part``'s master takes for what ``signum`` means to a gantry master."""
    return PHP_SIGNALS.get(signal.Signals(signum), signum) if part.kind == "php" else signum


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _kill_orphans(group: int) -> None:
    """php-fpm's children left behind by their master (``group``, its process group):
    a master that was killed leaves them serving on the shared socket, untracked."""
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # none left: the usual case, a master that stopped its children


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
