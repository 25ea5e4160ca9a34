"""Listening sockets, bound by the master before any worker starts."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import stat
from collections.abc import Iterable

from gantry.config import ConfigError, ListenAddress
from gantry.process.systemd import inherited_sockets

log = logging.getLogger("gantry.error")

__all__ = ["address_key", "bind", "bind_or_inherit", "inherited_by_key", "warn_unclaimed"]


def bind(address: ListenAddress, mode: int | None, backlog: int) -> socket.socket:
    """Create, bind and listen on one socket (before any worker starts)."""
    if address.path is not None:
        path = address.path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                if _listened_on(path):
                    raise ConfigError(
                        f"{address.kind} socket {path}: another process is listening on it"
                    )
                os.unlink(path)  # a stale socket from a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            folder = os.path.dirname(os.path.abspath(path))
            if isinstance(exc, FileNotFoundError) and not os.path.isdir(folder):
                raise ConfigError(
                    f"{address.kind} socket {path}: the folder {folder} does not exist"
                ) from None
            raise ConfigError(
                f"{address.kind} socket {path}: cannot bind: {exc.strerror}"
            ) from None
        if mode is not None:
            os.chmod(path, mode)
    else:
        assert address.host is not None and address.port is not None
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"{address.kind} socket {address}: cannot bind: {exc.strerror}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _listened_on(path: str) -> bool:
    """Whether a live process accepts on the unix socket at ``path`` (else it is stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # e.g. a full queue (EAGAIN) or a timeout: someone is there
        return True


def bind_or_inherit(
    addresses: Iterable[ListenAddress],
    mode: int | None,
    backlog: int,
    passed: dict[object, socket.socket] | None = None,
) -> list[tuple[ListenAddress, socket.socket]]:
    """A socket for each address: the one passed down (LISTEN_FDS) when there is one, else
    a new one. Inherited sockets come back with ``address.inherited`` set. With
    ``passed`` (``inherited_by_key()``'s), the ones taken are removed from it and the
    caller deals with the rest; else a socket no address names is logged."""
    leftovers_are_ours = passed is None
    if passed is None:
        passed = inherited_by_key()
    result = []
    for address in addresses:
        sock = passed.pop(address_key(address), None)
        if sock is None:
            sock = bind(address, mode, backlog)
        else:
            sock.setblocking(False)
            address = dataclasses.replace(address, inherited=True)
            log.info("using the inherited socket for %s", address)
        result.append((address, sock))
    if leftovers_are_ours:
        warn_unclaimed(passed)
    return result


def warn_unclaimed(passed: dict[object, socket.socket]) -> None:
    """Log each passed socket no address named."""
    for sock in passed.values():
        log.warning("a socket was passed that no listen address names: %s", sock)


def inherited_by_key() -> dict[object, socket.socket]:
    """The listening sockets systemd passed (LISTEN_FDS), keyed as ``address_key`` keys the
    address each is bound to."""
    return {_sock_key(sock): sock for sock in inherited_sockets()}


def address_key(address: ListenAddress) -> object:
    """What identifies a listen address: its absolute path, or its host and port."""
    if address.path is not None:
        return os.path.abspath(address.path)
    return (address.host, address.port)


def _sock_key(sock: socket.socket) -> object:
    name = sock.getsockname()
    if isinstance(name, str):
        return os.path.abspath(name)
    return (name[0], name[1])
