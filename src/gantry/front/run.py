"""``gantry front``: N front workers under the same master as ``gantry serve``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gantry.config import ConfigError, ListenAddress, parse_address
from gantry.config.certificates import CertificateError
from gantry.config.front_model import FrontConfig, Listener
from gantry.front.connection import FrontConnection
from gantry.front.http2 import Http2Connection
from gantry.front.limits.state import FrontLimits
from gantry.front.tls_accept import TLSListener
from gantry.front.worker import FrontWorker
from gantry.process.master import Master, MasterSettings, WorkerExit
from gantry.process.privileges import Identity, drop_privileges, resolve_identity
from gantry.process.reexec import (
    LoneReload,
    Reexec,
    adopted_workers,
    hold_signals,
    owned_sockets,
    release_held_signals,
)
from gantry.process.runtime import (
    freeze_startup_heap,
    new_event_loop,
    reopen_error_log,
    set_open_files,
    setup_error_log,
)
from gantry.process.shared import STATUS_CODES, SlotView, WorkerTable
from gantry.process.sockets import bind_or_inherit, inherited_by_key, warn_unclaimed
from gantry.process.systemd import notify
from gantry.stats.serve import serve_metrics, serve_stats

if TYPE_CHECKING:
    from gantry.control.server import ControlServer
    from gantry.front.cache.counters import CacheCounters
    from gantry.front.limits.autoban import BanTable
    from gantry.front.tls import FrontTLS

__all__ = ["run_front"]

log = logging.getLogger("gantry.front")

# A fresh interpreter reads the file as `gantry front -c` does (a reload checks it first).
CONFIG_PROBE = """
import sys
from gantry.config import ConfigError
from gantry.config.front import load_front_config
try:
    load_front_config(sys.argv[1])
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""

#: a front worker's young-collection threshold (see freeze_startup_heap): with 50
#: requests in flight its net count of new objects stays far below it
YOUNG_THRESHOLD = 7000

#: the listen queue of the front's sockets; given again to the loop's create_server, which
#: otherwise calls listen() once more with its own default of 100: a burst of clients past
#: that (thousands of keep-alive clients connecting at once) lost their SYNs and waited
#: 1, 3, 7 s to retry
LISTEN_BACKLOG = 2048


def _serve_worker(
    config: FrontConfig,
    sockets: list[tuple[ListenAddress, socket.socket]],
    slot: SlotView | None,
    lone_reload: LoneReload | None = None,
    defences: FrontLimits | None = None,
    cache_counters: CacheCounters | None = None,
    tls: FrontTLS | None = None,
) -> int:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    worker = FrontWorker(config, loop, defences)
    worker.slot = slot
    if worker.cache is not None and cache_counters is not None and slot is not None:
        worker.cache.share_counters(cache_counters, slot.index)
    stop = asyncio.Event()

    async def main() -> None:
        worker.start_clock()
        worker.start_health_checks()
        worker.start_shared()
        if worker.cache is not None:
            worker.cache.start()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _reopen_logs, config, worker)
        # each socket in the order of [front] listen, with its flags
        listeners = config.listeners
        servers: list[asyncio.Server | TLSListener | _SharedListeners] = []
        # other workers on the same sockets: a full one leaves new clients to them
        shared = _SharedListeners(loop) if slot is not None and config.workers > 1 else None
        for index, (address, sock) in enumerate(sockets):
            listener = listeners[index] if index < len(listeners) else Listener(str(address))
            context = tls.listeners.get(index) if tls is not None else None
            if context is None:
                factory = _connections(worker, index, listener)
                if shared is not None:
                    await shared.serve(factory, sock)
                else:
                    servers.append(
                        await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
                    )
                log.info(
                    "front listening on http://%s%s", address, " (h2c)" if listener.h2c else ""
                )
                continue
            # our own TLS termination over the loop's plain TCP transport: it sees the
            # first byte before the handshake (plain HTTP gets nginx's 400), and the
            # handshake has client_header_timeout, as a head would (see front.tls_accept)
            tls_listener = TLSListener(
                loop, sock, context, _connections(worker, index, listener),
                config.client_header_timeout,
            )  # fmt: skip
            await tls_listener.start()
            servers.append(tls_listener)
            log.info("front listening on https://%s%s", address, " (h2)" if listener.http2 else "")
        if shared is not None and shared.listeners:
            servers.append(shared)
            worker.accept_switch = shared
        if slot is not None:
            slot.pid = os.getpid()
            slot.status = STATUS_CODES["idle"]
            slot.ready = 1
        else:  # alone: this process tells systemd what a master would
            if lone_reload is not None:
                lone_reload.request_stop = stop.set
                loop.add_signal_handler(signal.SIGHUP, lone_reload.on_sighup)
            release_held_signals()  # a SIGHUP sent while starting: taken now
            notify("READY=1", "STATUS=gantry front serving")
        freeze_startup_heap(YOUNG_THRESHOLD)
        await stop.wait()
        worker.stopping = True
        if lone_reload is not None:
            lone_reload.keep_sockets([sock for _, sock in sockets])
        if slot is None and not (lone_reload is not None and lone_reload.requested):
            notify("STOPPING=1")
        for server in servers:
            server.close()
        # A client accepted in the turn that delivered the stop has its connection_made
        # still queued behind this task: one turn lets it join worker.connections, or
        # the wait below could see none, end, and close it unanswered.
        await asyncio.sleep(0)
        deadline = loop.time() + config.graceful_timeout
        # a TLS connection becomes one of worker.connections once its handshake is done:
        # those accepted just before the close get a second to finish it
        handshakes = loop.time() + min(1.0, config.graceful_timeout) if tls else 0.0
        while loop.time() < deadline and (worker.connections or loop.time() < handshakes):
            # Busy keep-alive connections end with their response (Connection: close);
            # idle ones are closed once no request can be on its way in.
            now = time.monotonic()
            for conn in list(worker.connections):
                conn.close_if_idle(now, 1.0)
            await asyncio.sleep(0.05)
        for conn in list(worker.connections):
            conn.close()
        worker.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


class _SharedListeners:
    """A worker's plain listeners when other workers share their sockets: each is served
    from a duplicate of the inherited socket, so that a pause (closing the loop's
    server, which closes the socket it was given) leaves the listen queue open to the
    other workers and to a later resume. A worker at its worker_connections ceiling
    pauses them (FrontWorker.ceiling_reached); TLS listeners are not paused."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.listeners: list[tuple[Callable[[], asyncio.Protocol], socket.socket]] = []
        self.servers: list[asyncio.Server] = []
        self.accepting = True
        self.closed = False
        self.resuming = False

    async def serve(self, factory: Callable[[], asyncio.Protocol], sock: socket.socket) -> None:
        """Start accepting on ``sock`` (the worker's inherited copy, kept open)."""
        self.listeners.append((factory, sock))
        server = await self.loop.create_server(factory, sock=sock.dup(), backlog=LISTEN_BACKLOG)
        self.servers.append(server)

    def pause(self) -> None:
        """Stop accepting."""
        self.accepting = False
        for server in self.servers:
            server.close()
        self.servers = []

    def resume(self) -> None:
        """Accept again (the servers are made anew in a task)."""
        self.accepting = True
        if not self.closed and not self.servers and not self.resuming:
            self.resuming = True
            self.loop.create_task(self._resume())

    async def _resume(self) -> None:
        servers = []
        try:
            for factory, sock in self.listeners:
                servers.append(
                    await self.loop.create_server(factory, sock=sock.dup(), backlog=LISTEN_BACKLOG)
                )
        except OSError:
            log.exception("cannot accept again on a listener")
        finally:
            self.resuming = False
        self.servers = servers
        if self.closed or not self.accepting:  # paused or stopped meanwhile
            self.pause()

    def clients_waiting(self) -> bool:
        """Whether a TCP listener's accept queue holds clients (its TCP_INFO's unacked
        field, for a listening socket; True for a unix socket: it cannot be known)."""
        for _, sock in self.listeners:
            if sock.family == socket.AF_UNIX:
                return True
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
            except OSError:
                return True
            if len(info) >= 28 and struct.unpack_from("I", info, 24)[0]:
                return True
        return False

    def close(self) -> None:
        """Stop accepting for good (the worker stops)."""
        self.closed = True
        self.pause()


def _connections(
    worker: FrontWorker, index: int, listener: Listener
) -> Callable[[], asyncio.Protocol]:
    """The protocol factory of listener ``index`` (a partial: called per connection, a
    lambda would add an interpreted frame to each)."""
    if listener.h2c:
        return functools.partial(Http2Connection, worker, index)
    if listener.ssl:
        if listener.http2:
            return functools.partial(_AlpnChoice, worker, index)
        return functools.partial(FrontConnection, worker, index, True)
    if listener.proxy_protocol:
        return functools.partial(FrontConnection, worker, index, False, True)
    return functools.partial(FrontConnection, worker, index)


class _AlpnChoice(asyncio.Protocol):
    """A TLS connection of an h2 listener until its handshake is done: then HTTP/2 if the
    client chose it by ALPN, else HTTP/1.1, takes the transport over."""

    def __init__(self, worker: FrontWorker, index: int) -> None:
        self.worker = worker
        self.index = index

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol
        if chosen == "h2":
            protocol = Http2Connection(self.worker, self.index, True)
        else:
            protocol = FrontConnection(self.worker, self.index, True)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _load_tls(
    config: FrontConfig, sockets: list[tuple[ListenAddress, socket.socket]]
) -> FrontTLS | None:
    """The TLS contexts of the ssl listeners, made before any fork (see front.tls)."""
    if not any(listener.ssl for listener in config.listeners):
        return None
    from gantry.front.tls import FrontTLS

    try:
        return FrontTLS(config)
    except CertificateError as exc:  # changed on disk since the config was read
        for _, sock in sockets:
            sock.close()
        raise ConfigError(f"front.server: {exc.key}: {exc}") from None


def _reload_tls(config: FrontConfig, current: list[FrontTLS | None]) -> None:
    """SIGHUP: read the certificates again for the new workers; a pair that does not load
    leaves the old contexts serving, with an error-log line naming it."""
    from gantry.front.tls import FrontTLS

    try:
        current[0] = FrontTLS(config)
    except CertificateError as exc:
        log.error("SIGHUP: certificates not reloaded, the old ones keep serving: %s: %s",
                  exc.key, exc)  # fmt: skip
    else:
        log.info("SIGHUP: certificates read again")


def _reopen_logs(config: FrontConfig, worker: FrontWorker) -> None:
    """SIGUSR1 (logrotate moved the files): reopen the access log and the error log;
    requests in flight carry on."""
    reopen_error_log()
    if worker.access_log is not None:
        worker.access_log.reopen()
    log.info("log files reopened")


def _prepare_cache_zones(config: FrontConfig, identity: Identity | None) -> None:
    """Each cache zone's folder, made here before any worker starts (as nginx's master
    makes proxy_cache_path's) and given to the workers' user: a folder that cannot be
    made, or written by the workers, is a config error now, not workers dying at start-up
    one after another."""
    for name, zone in config.caches.items():
        where = f"front.cache.{name}.path"
        try:
            os.makedirs(zone.path, exist_ok=True)
            if identity is not None and os.geteuid() == 0:
                st = os.stat(zone.path)
                uid = identity.uid if identity.uid is not None else st.st_uid
                if (st.st_uid, st.st_gid) != (uid, identity.gid):
                    os.chown(zone.path, uid, identity.gid)
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot make the cache folder {zone.path!r} "
                f"({exc.strerror or exc}); expected a folder the front's workers can write"
            ) from None
        if identity is None and not os.access(zone.path, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{where}: the cache folder {zone.path!r} is not writable by this user; "
                "expected a folder the front's workers can write"
            )


def _warn_missing_directories(config: FrontConfig) -> None:
    """A location whose root or alias is not a directory answers 404 to everything: say so
    at start (gantry check says it too), as a warning, since it may be mounted later."""
    for server in config.servers:
        for location in server.locations:
            for key, directory in (("root", location.root), ("alias", location.alias)):
                if directory and not os.path.isdir(directory):
                    log.warning(
                        "location %s: %s %r is not a directory: its requests will get 404",
                        location.path, key, directory,
                    )  # fmt: skip


#: files a worker keeps open besides its clients' and upstreams' sockets (listeners, the
#: event loop's, logs, cache and shared-memory files)
SPARE_FILES = 100


def _set_open_files(config: FrontConfig) -> None:
    """worker_rlimit_nofile: the open-file limit the workers inherit. A limit that cannot
    hold worker_connections is said at start: past it a worker refuses new connections
    without a word (the event loop closes what it cannot accept)."""
    connections = config.worker_connections
    if config.worker_rlimit_nofile:
        files = set_open_files(config.worker_rlimit_nofile)
        if files.shortfall:
            log.warning("worker_rlimit_nofile %d: %s; it is %d",
                        config.worker_rlimit_nofile, files.shortfall, files.limit)  # fmt: skip
    else:
        # the soft limit is often 1024 while the hard one allows far more (systemd's)
        files = set_open_files(2 * connections + SPARE_FILES, only_raise=True)
    if files.limit < connections + SPARE_FILES:
        log.warning(
            "worker_connections %d: the open-file limit is %d%s, so a worker holds about %d "
            "connections and refuses new ones past that",
            connections, files.limit, f" ({files.shortfall})" if files.shortfall else "",
            max(files.limit - SPARE_FILES, 1),
        )  # fmt: skip


def run_front(
    config: FrontConfig,
    *,
    master: bool = False,
    stats: str | None = None,
    metrics: str | None = None,
    config_file: str | None = None,
    graceful_timeout: float | None = None,
) -> int:
    """Bind (or inherit) the listen sockets, then run one worker inline or a master with
    N workers (always a master when ``master``, ``stats`` or ``metrics`` asks for one).
    One worker alone reloads on SIGHUP by re-executing itself once ``config_file`` is
    checked (it reads the file again, as nginx does).

    ``graceful_timeout`` replaces [front] graceful_timeout: `gantry up` gives its
    [stack] graceful_timeout, the time its supervisor lets every part take to stop.
    """
    if graceful_timeout is not None:
        config = dataclasses.replace(config, graceful_timeout=graceful_timeout)
    setup_error_log()
    _warn_missing_directories(config)
    _set_open_files(config)
    identity = resolve_identity(config.user, config.group, "front")
    addresses = [parse_address(spec, "http", "front.listen") for spec in config.listen]
    passed = inherited_by_key()
    hold_signals()  # until the handlers are in: a SIGHUP once the port accepts is a reload
    sockets = bind_or_inherit(addresses, None, LISTEN_BACKLOG, passed)
    control = None
    if config.control:
        from gantry.control.server import bind_control

        try:
            control = bind_control(config.control, passed)
        except BaseException:
            for _, sock in sockets:
                sock.close()
            raise
    warn_unclaimed(passed)
    # after the sockets: a control socket's missing folder is said first, and no zone's
    # folder is made for a front that cannot start
    _prepare_cache_zones(config, identity)
    # what a worker runs was imported with gantry.front.worker, above (its imports are
    # module-level): a worker's user may not read Python's library (a pyenv under /root).
    # Redis's client alone is left out of it (12 MB a process): imported here when used.
    if config.shared is not None:
        import gantry.front.limits.shared_redis  # noqa: F401
    tls = _load_tls(config, sockets)
    master = (
        master or bool(stats or metrics or control) or os.environ.get("GANTRY_FRONT_MASTER") == "1"
    )
    if config.workers <= 1 and not master:
        adopted_workers()  # after a re-exec: nothing to adopt alone; clears the variables
        owned = owned_sockets()
        lone_reload = None
        if config_file:
            reexec = Reexec(
                probe=[sys.executable, "-c", CONFIG_PROBE, config_file],
                start_dir=os.getcwd(),
                sockets=[
                    (sock.fileno(), not address.inherited if owned is None else index in owned)
                    for index, (address, sock) in enumerate(sockets)
                ],
            )
            lone_reload = LoneReload(reexec, lambda: None)  # the worker sets request_stop
        drop_privileges(identity)  # alone: the sockets are bound (a re-exec keeps them)
        code = _serve_worker(config, sockets, None, lone_reload, tls=tls)
        if lone_reload is not None:
            lone_reload.exec_if_requested()
        return code
    table = WorkerTable(max(64, config.workers * 2 + 16))
    # Limit zones and bans are made here, before any fork, so that every worker (and
    # every worker of a reload) shares the same maps.
    defences = FrontLimits(config) if FrontLimits.wanted(config) else None
    cache_counters = None
    if config.caches:  # made before the fork: every worker counts into its slot of it
        from gantry.front.cache.counters import CacheCounters

        cache_counters = CacheCounters(list(config.caches.values()), table.size)
    current = [tls]  # the contexts the next workers inherit (SIGHUP builds new ones)
    supervisor = Master(
        MasterSettings(
            workers=config.workers,
            graceful_timeout=config.graceful_timeout,
            name="gantry front",
            identity=identity,
        ),
        lambda slot, generation: _serve_worker(
            config, sockets, slot, None, defences, cache_counters, current[0]
        ),
        table,
    )
    if tls is not None:
        supervisor.on_reload = lambda: _reload_tls(config, current)
    listen_names = [str(address) for address, _ in sockets]
    status: Callable[[], dict[str, Any]] = supervisor.status
    if defences is not None:
        limits = defences

        def status() -> dict[str, Any]:
            # the master reads the zones' counters from shared memory: no worker is asked
            return {**supervisor.status(), "limits": limits.stats()}

    caches = cache_counters.report if cache_counters is not None else None
    if stats:
        serve_stats(supervisor.loop, table, stats, supervisor.started, listen_names, status, caches)
    if metrics:
        serve_metrics(
            supervisor.loop, table, metrics, supervisor.started, listen_names,
            defences.metrics if defences is not None else None, caches,
        )  # fmt: skip
    answering = None
    if control is not None:
        answering = _serve_control(
            config, supervisor, identity, *control, bans=defences.bans if defences else None
        )
    try:
        return supervisor.run()
    except WorkerExit as exc:
        log.error("%s", exc)
        return exc.code
    finally:
        if answering is not None:
            answering.close()


def _serve_control(
    config: FrontConfig,
    supervisor: Master,
    identity: Identity | None,
    listener: socket.socket,
    owned: bool,
    bans: BanTable | None = None,
) -> ControlServer:
    """Answer `gantry ctl` on the master's loop; commands that walk the cache run in a
    child that is the workers' user (the files it writes must be theirs)."""
    from gantry.control.server import ControlServer
    from gantry.front.control import front_commands

    assert config.control is not None
    server = ControlServer(
        supervisor.loop,
        listener,
        front_commands(config, supervisor, bans),
        prepare_child=lambda: drop_privileges(identity),
        path=config.control if owned else None,
    )
    log.info("control socket on %s", config.control)
    return server
