"""The master process: forks workers on sockets it bound, watches, respawns, reloads and stops them.

It runs on the process loop (``process/loop.py``): signal handlers only queue the
signal and wake the loop; the work (reaping, respawning, reloading, harakiri) happens
in the loop, and the stats and metrics sockets are served there without blocking it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from gantry.process.loop import Backoff, ProcessLoop, describe_exit
from gantry.process.parent import stop_with_parent
from gantry.process.privileges import Identity, drop_privileges
from gantry.process.reexec import Reexec, probe_failure, read_probe, start_probe
from gantry.process.runtime import reopen_error_log, signal_process
from gantry.process.shared import STATUS_CODES, SlotView, WorkerTable
from gantry.process.systemd import notify

__all__ = ["Master", "MasterSettings", "WorkerExit", "APP_LOAD_FAILED"]

log = logging.getLogger("gantry.master")

#: exit status of a worker whose app cannot be imported: the master gives up
APP_LOAD_FAILED = 3

# Start-up failures are retried after 0.1 s, 0.2 s, ... up to this many seconds.
MAX_BACKOFF = 5.0
#: the signals a master takes over
MASTER_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
)
#: what a worker ignores: reloads and scaling are the master's; SIGUSR1 until the
#: worker installs its own handler (reopen its logs), so one sent meanwhile is harmless
WORKER_IGNORES = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)
# A worker that stops answering a stop signal is killed after this long (fast stop).
FAST_STOP_SECONDS = 2.0


class WorkerExit(Exception):
    """Raised in the master when it must stop with an exit code (e.g. the app cannot load)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class MasterSettings:
    """What the master needs to know; the role supplies how a worker runs."""

    workers: int
    graceful_timeout: float = 30.0
    harakiri: float | None = None
    pidfile: str | None = None
    #: seconds a new worker has to report ready during a reload before it is given up
    ready_timeout: float = 60.0
    name: str = "gantry"
    #: who the workers run as (None: the master's own identity)
    identity: Identity | None = None


@dataclass
class WorkerProcess:
    """The master's record of one child."""

    pid: int
    slot: SlotView
    generation: int
    started: float
    stopping: bool = False
    ready_seen: bool = False


@dataclass
class Master:
    """Forks ``settings.workers`` children that each call ``run_worker(slot, generation)``."""

    settings: MasterSettings
    run_worker: Callable[[SlotView, int], int]
    table: WorkerTable

    def __post_init__(self) -> None:
        self.target = self.settings.workers
        self.generation = 1
        self.workers: dict[int, WorkerProcess] = {}
        #: signals, the served sockets (stats, metrics), reaping, kill deadlines
        self.loop = ProcessLoop(MASTER_SIGNALS)
        self.stopping: str | None = None  # "graceful" or "fast"
        self.stop_deadline = 0.0
        self.backoff = Backoff(MAX_BACKOFF)
        self.reloading: float | None = None  # when the pending reload began
        self.exit_code = 0
        self.started = time.time()
        self._notified_ready = False
        #: a worker of this master was ready once: an app that cannot load is no longer
        #: a start-up failure that stops the master
        self.served = False
        #: why the last reload was abandoned ('' once one succeeds), for the stats
        self.reload_error = ""
        #: called in the master on SIGUSR1 besides reopening the error log
        self.on_reopen_logs: Callable[[], None] | None = None
        #: called in the master on SIGHUP before the new workers are forked (the front
        #: reads its certificates again there, so the new workers inherit them)
        self.on_reload: Callable[[], None] | None = None
        #: set when the app is loaded in the master (preload): a reload re-executes it
        self.reexec: Reexec | None = None
        #: the probe of a re-exec reload under way: (pid, its stderr's descriptor)
        self.probe: tuple[int, int] | None = None
        #: workers an earlier image of this master left running (after a re-exec): they
        #: stop once this image's workers are ready
        self.adopted: set[int] = set()
        self.adopted_told = False

    def adopt(self, pids: list[int], generation: int) -> None:
        """After a re-exec: serve as ``generation``; ``pids`` (the old image's workers,
        children of this same process) stop once the new workers are ready."""
        self.adopted = set(pids)
        self.generation = generation

    # the loop -----------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        self.loop.install_signals()
        self.loop.write_pidfile(self.settings.pidfile)
        log.info("master %d starting %d workers", os.getpid(), self.target)
        try:
            self._manage()
            while True:
                self.loop.wait()
                self._handle_signals()
                self._reap()
                if self.stopping:
                    if self._stop_progress():
                        break
                    continue
                self._manage()
                self._check_reload()
                self._check_harakiri()
                self._check_ready()
                self._retire_adopted()
        except WorkerExit as exc:
            log.error("%s", exc)
            self.exit_code = exc.code
            self._kill_all(signal.SIGKILL)
            self.loop.reap_blocking(set(self.workers), timeout=5.0)
        finally:
            self.loop.remove_pidfile(self.settings.pidfile)
            self.loop.close()
        log.info("master %d stopped (exit %d)", os.getpid(), self.exit_code)
        return self.exit_code

    # signals ----------------------------------------------------------------------

    def _handle_signals(self) -> None:
        for signum in self.loop.take_signals():
            if signum == signal.SIGHUP:
                self._start_reload()
            elif signum == signal.SIGTERM:
                self._begin_stop("graceful")
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self._begin_stop("fast")
            elif signum == signal.SIGTTIN:
                self.target += 1
                log.info("SIGTTIN: %d workers", self.target)
            elif signum == signal.SIGTTOU:
                if self.target > 1:
                    self.target -= 1
                log.info("SIGTTOU: %d workers", self.target)
            elif signum == signal.SIGUSR1:
                self.reopen_logs()

    def status(self) -> dict[str, str]:
        """What the stats document adds about the master: the last reload's failure."""
        return {"reload_error": self.reload_error}

    def describe_workers(self) -> list[dict[str, object]]:
        """Every worker as the control socket's status shows it, by worker number."""
        return [
            {
                "worker": w.slot.index + 1,
                "pid": w.pid,
                "generation": w.generation,
                "ready": w.ready_seen or w.slot.ready == 1,
                "stopping": w.stopping,
                "requests": w.slot.requests,
                "respawns": w.slot.respawn_count,
            }
            for w in sorted(self.workers.values(), key=lambda w: (w.slot.index, w.pid))
        ]

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): reopen the master's log files, and have every worker
        reopen its own; nothing else changes."""
        reopen_error_log()
        if self.on_reopen_logs is not None:
            self.on_reopen_logs()
        self._signal_workers(signal.SIGUSR1)
        log.info("SIGUSR1: the master reopened its log; workers told to reopen theirs")

    def restore_child_signals(self) -> None:
        """In a freshly forked worker: drop the master's handlers and descriptors."""
        self.loop.in_child(WORKER_IGNORES)

    # spawning and reaping ------------------------------------------------------------

    def _free_slot(self) -> SlotView:
        used = {w.slot.index for w in self.workers.values()}
        for index in range(self.table.size):
            if index not in used:
                return self.table.slot(index)
        raise WorkerExit(1, "no free worker slot (too many workers for the stats table)")

    def _spawn(self, generation: int) -> None:
        slot = self._free_slot()
        respawns = slot.respawn_count
        slot.reset()
        slot.respawn_count = respawns
        slot.status = STATUS_CODES["starting"]
        slot.generation = generation
        slot.last_spawn = int(time.time())
        self_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self.restore_child_signals()
                stop_with_parent(self_pid)
                drop_privileges(self.settings.identity)
                slot.pid = os.getpid()
                code = self.run_worker(slot, generation)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        slot.pid = pid
        self.workers[pid] = WorkerProcess(pid, slot, generation, time.monotonic())
        log.info("spawned worker %d (pid %d, generation %d)", slot.index + 1, pid, generation)

    def _reap(self) -> None:
        for pid, status in self.loop.reap():
            if self.probe is not None and pid == self.probe[0]:
                self._probe_done(status)
                continue
            if pid in self.adopted:
                self.adopted.discard(pid)
                log.info("old worker (pid %d) exited (%s)", pid, describe_exit(status))
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            was_ready = worker.ready_seen or worker.slot.ready == 1
            # a worker that cannot load the app leaves the error in its slot's line
            why = worker.slot.request_line if code == APP_LOAD_FAILED else ""
            worker.slot.status = 0
            worker.slot.pid = 0
            worker.slot.request_start_us = 0
            if worker.stopping or self.stopping:
                log.info("worker %d (pid %d) exited (%s)", worker.slot.index + 1, pid, code)
                continue
            if code == APP_LOAD_FAILED and not was_ready:
                why = why or "the application cannot be loaded"
                if self.reloading is not None and worker.generation == self.generation:
                    self._abandon_reload(f"the new workers cannot load the application: {why}")
                    continue
                if not self.served:
                    raise WorkerExit(APP_LOAD_FAILED, f"{why}: stopping")
                # serving already: retried with backoff below, the others keep serving
            if was_ready:
                log.warning(
                    "worker %d (pid %d) died (%s): respawning",
                    worker.slot.index + 1,
                    pid,
                    describe_exit(status),
                )
                self.backoff.reset()
            else:
                delay = self.backoff.failed(time.monotonic())
                log.error(
                    "worker %d (pid %d) died during start-up (%s): retrying in %.1f s",
                    worker.slot.index + 1,
                    pid,
                    describe_exit(status),
                    delay,
                )
            worker.slot.respawn_count += 1

    def _manage(self) -> None:
        """Keep ``target`` workers of the current generation running."""
        current = [
            w for w in self.workers.values() if not w.stopping and w.generation == self.generation
        ]
        if len(current) < self.target:
            if not self.backoff.due(time.monotonic()):
                return
            for _ in range(self.target - len(current)):
                self._spawn(self.generation)
        elif len(current) > self.target and self.reloading is None:
            for worker in sorted(current, key=lambda w: w.started)[: len(current) - self.target]:
                self._stop_worker(worker, signal.SIGTERM)

    def _stop_worker(self, worker: WorkerProcess, signum: int) -> None:
        worker.stopping = True
        worker.slot.status = STATUS_CODES["stopping"]
        timeout = self.settings.graceful_timeout if signum == signal.SIGTERM else FAST_STOP_SECONDS
        self.loop.kill_after(worker.pid, timeout)
        signal_process(worker.pid, signum)

    def _check_ready(self) -> None:
        for worker in list(self.workers.values()):
            if not worker.ready_seen and worker.slot.ready == 1:
                worker.ready_seen = True
                self.served = True
                self.backoff.reset()
        for pid in self.loop.kill_overdue():
            log.warning("worker pid %d did not stop in time: killing", pid)
        if (
            not self._notified_ready
            and self.workers
            and all(w.ready_seen for w in self.workers.values())
        ):
            self._notified_ready = True
            notify("READY=1", f"STATUS=serving with {len(self.workers)} workers")

    # reload -------------------------------------------------------------------------------

    def _start_reload(self) -> None:
        """SIGHUP: new workers first; the old ones stop once the new are ready. With the
        app loaded in the master, the master re-executes itself (once the new code is
        known to import) so the code is imported afresh."""
        if self.reloading is not None or self.probe is not None or self.adopted:
            log.info("SIGHUP: a reload is already under way")
            return
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        if self.reexec is not None:
            self._start_probe(self.reexec)
            return
        if self.on_reload is not None:
            self.on_reload()
        self.generation += 1
        self.reloading = time.monotonic()
        log.info("SIGHUP: reloading (generation %d)", self.generation)
        for _ in range(self.target):
            self._spawn(self.generation)

    def _check_reload(self) -> None:
        if self.reloading is None:
            return
        new = [w for w in self.workers.values() if w.generation == self.generation]
        if len(new) >= self.target and all(w.slot.ready == 1 for w in new):
            for worker in list(self.workers.values()):
                if worker.generation < self.generation and not worker.stopping:
                    self._stop_worker(worker, signal.SIGTERM)
            self.reloading = None
            self.reload_error = ""
            notify("READY=1", f"STATUS=reload done: generation {self.generation} serving")
            log.info("reload done: generation %d serving", self.generation)
        elif time.monotonic() - self.reloading > self.settings.ready_timeout:
            timeout = self.settings.ready_timeout
            self._abandon_reload(f"the new workers were not ready in {timeout:.0f} s")

    def _start_probe(self, reexec: Reexec) -> None:
        try:
            self.probe = start_probe(reexec.probe)
        except OSError as exc:
            self._reload_failed(f"cannot check the new code: {exc}")
            return
        log.info("SIGHUP: checking that the new code imports, then re-executing the master")

    def _probe_done(self, status: int) -> None:
        assert self.probe is not None
        _, output = self.probe
        self.probe = None
        try:
            text = read_probe(output)
        except OSError:
            text = ""
        if os.waitstatus_to_exitcode(status) != 0 or self.reexec is None:
            if text:
                log.error("the new code cannot be imported:\n%s", text.rstrip())
            self._reload_failed(probe_failure(text) or describe_exit(status))
            return
        if self.stopping:
            return
        log.info("SIGHUP: re-executing the master (generation %d)", self.generation + 1)
        try:
            self.reexec.exec(list(self.workers), self.generation + 1)
        except OSError as exc:
            self._reload_failed(f"cannot re-execute the master: {exc}")

    def _retire_adopted(self) -> None:
        """After a re-exec: once this image's workers are all ready, the old ones stop."""
        if not self.adopted or self.adopted_told:
            return
        current = [w for w in self.workers.values() if not w.stopping]
        if len(current) >= self.target and all(w.ready_seen for w in current):
            self.adopted_told = True
            for pid in self.adopted:
                signal_process(pid, signal.SIGTERM)
                self.loop.kill_after(pid, self.settings.graceful_timeout)
            notify("READY=1", f"STATUS=reload done: generation {self.generation} serving")
            log.info("reload done: generation %d serving", self.generation)

    def _reload_failed(self, reason: str) -> None:
        log.error("reload abandoned, generation %d keeps serving: %s", self.generation, reason)
        self.reload_error = reason
        notify("READY=1", f"STATUS=reload failed: {reason}")

    def _abandon_reload(self, reason: str) -> None:
        """The new generation failed: kill it; the old one keeps serving."""
        log.error("reload abandoned, generation %d keeps serving: %s", self.generation - 1, reason)
        for worker in list(self.workers.values()):
            if worker.generation == self.generation and not worker.stopping:
                self._stop_worker(worker, signal.SIGKILL)
        self.generation -= 1
        self.reloading = None
        self.reload_error = reason
        notify("READY=1", f"STATUS=reload failed: {reason}")

    # harakiri -----------------------------------------------------------------------

    def _check_harakiri(self) -> None:
        limit = self.settings.harakiri
        if not limit:
            return
        now_us = time.time() * 1e6
        for worker in list(self.workers.values()):
            start = worker.slot.request_start_us
            if start and not worker.stopping and now_us - start > limit * 1e6:
                log.error(
                    "HARAKIRI: worker %d (pid %d) killed after %.1f s on %r",
                    worker.slot.index + 1,
                    worker.pid,
                    (now_us - start) / 1e6,
                    worker.slot.request_line or "?",
                )
                worker.slot.request_start_us = 0
                signal_process(worker.pid, signal.SIGKILL)

    # stopping ---------------------------------------------------------------------------

    def _begin_stop(self, how: str) -> None:
        if self.stopping == "fast" or self.stopping == how:
            return
        self.stopping = how
        notify("STOPPING=1")
        log.info("%s stop", how)
        signum = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        timeout = self.settings.graceful_timeout if how == "graceful" else FAST_STOP_SECONDS
        self.stop_deadline = time.monotonic() + timeout
        self._signal_workers(signum)

    def _stop_progress(self) -> bool:
        if not self.workers and not self.adopted:
            return True
        if time.monotonic() > self.stop_deadline:
            log.warning(
                "%d workers still running after the stop timeout: killing", len(self.workers)
            )
            self._kill_all(signal.SIGKILL)
            self.loop.reap_blocking({*self.workers, *self.adopted}, timeout=5.0)
            self.workers.clear()
            self.adopted.clear()
            return True
        return False

    def _signal_workers(self, signum: int) -> None:
        for pid in [*self.workers, *self.adopted]:
            signal_process(pid, signum)

    def _kill_all(self, signum: int) -> None:
        self._signal_workers(signum)
